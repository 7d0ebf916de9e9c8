"""Recurrent layers: ONNX RNN, GRU and LSTM, every direction, layout, activation and sequence length."""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from converters.onnx_to_torch._registry import Unsupported, op

# ONNX activation names -> default (alpha, beta) where they take them.
ACTIVATIONS = {"Sigmoid": (0.0, 0.0), "Tanh": (0.0, 0.0), "Relu": (0.0, 0.0), "Affine": (1.0, 0.0),
               "LeakyRelu": (0.01, 0.0), "ThresholdedRelu": (1.0, 0.0), "ScaledTanh": (1.0, 1.0),
               "HardSigmoid": (0.2, 0.5), "Elu": (1.0, 0.0), "Softsign": (0.0, 0.0), "Softplus": (0.0, 0.0)}
_DEFAULTS = {"GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"], "RNN": ["Tanh"]}


def activation(x: Tensor, name: str, alpha: float, beta: float) -> Tensor:
    if name == "Sigmoid":
        return torch.sigmoid(x)
    if name == "Tanh":
        return torch.tanh(x)
    if name == "Relu":
        return torch.relu(x)
    if name == "Affine":
        return alpha * x + beta
    if name == "LeakyRelu":
        return F.leaky_relu(x, alpha)
    if name == "ThresholdedRelu":
        return torch.where(x > alpha, x, torch.zeros_like(x))
    if name == "ScaledTanh":
        return alpha * torch.tanh(beta * x)
    if name == "HardSigmoid":
        return torch.clamp(alpha * x + beta, 0.0, 1.0)
    if name == "Elu":
        return F.elu(x, alpha)
    if name == "Softsign":
        return F.softsign(x)
    return F.softplus(x)


def _time_order(steps: int, batch: int, lens: Optional[Tensor], reverse: bool, device: torch.device) -> Tensor:
    """[steps, batch] time indices: each sequence reversed within its own length for reverse runs."""
    t = torch.arange(steps, device=device).unsqueeze(1)
    n = lens.long() if lens is not None else torch.full([batch], steps, dtype=torch.long, device=device)
    if reverse:
        return torch.where(t < n, n - 1 - t, t.expand(steps, batch))
    return t.expand(steps, batch)


def recurrent(kind: str, x: Tensor, w: Tensor, r: Tensor, b: Optional[Tensor], lens: Optional[Tensor],
              h0: Optional[Tensor], c0: Optional[Tensor], p: Optional[Tensor], direction: str, layout: int,
              clip: float, before_reset: bool, acts: List[str], alphas: List[float], betas: List[float],
              input_forget: bool) -> List[Tensor]:
    """ONNX RNN / GRU / LSTM: [Y, Y_h] (+ Y_c for an LSTM); `acts` holds each direction's activations."""
    if layout == 1:
        x = x.transpose(0, 1)
        if h0 is not None:
            h0 = h0.transpose(0, 1)
        if c0 is not None:
            c0 = c0.transpose(0, 1)
    steps, batch = x.shape[0], x.shape[1]
    dirs, hidden = w.shape[0], r.shape[-1]
    gates = w.shape[1] // hidden
    bias = b if b is not None else x.new_zeros([dirs, 2 * gates * hidden])
    peep = p if p is not None else x.new_zeros([dirs, 3 * hidden])
    ys: List[Tensor] = []
    hs: List[Tensor] = []
    cs: List[Tensor] = []
    per = len(acts) // dirs
    for d in range(dirs):
        fa, ga = d * per, d * per + min(1, per - 1)
        ha = d * per + min(2, per - 1)
        reverse = direction == "reverse" or d == 1
        order = _time_order(steps, batch, lens, reverse, x.device)
        xs = torch.gather(x, 0, order.unsqueeze(-1).expand(x.shape))
        h = h0[d] if h0 is not None else x.new_zeros([batch, hidden])
        c = c0[d] if c0 is not None else x.new_zeros([batch, hidden])
        wb, rb = bias[d, :gates * hidden], bias[d, gates * hidden:]
        gx_all = xs @ w[d].t() + wb
        out: List[Tensor] = []
        for k in range(steps):
            gx = gx_all[k]
            if kind == "GRU":
                rz, rr, rh = r[d].split(hidden, 0)
                bz, br, bh = rb.split(hidden)
                wz, wr, wh = gx.split(hidden, -1)
                z = activation(torch.clamp(wz + h @ rz.t() + bz, -clip, clip), acts[fa], alphas[fa], betas[fa])
                rt = activation(torch.clamp(wr + h @ rr.t() + br, -clip, clip), acts[fa], alphas[fa], betas[fa])
                if before_reset:
                    pre = wh + rt * (h @ rh.t() + bh)
                else:
                    pre = wh + (rt * h) @ rh.t() + bh
                cand = activation(torch.clamp(pre, -clip, clip), acts[ga], alphas[ga], betas[ga])
                new_h, new_c = (1 - z) * cand + z * h, c
            elif kind == "LSTM":
                g = gx + h @ r[d].t() + rb
                gi, go, gf, gc = g.split(hidden, -1)
                pi, po, pf = peep[d].split(hidden)
                i = activation(torch.clamp(gi + pi * c, -clip, clip), acts[fa], alphas[fa], betas[fa])
                if input_forget:
                    f = 1 - i
                else:
                    f = activation(torch.clamp(gf + pf * c, -clip, clip), acts[fa], alphas[fa], betas[fa])
                new_c = f * c + i * activation(torch.clamp(gc, -clip, clip), acts[ga], alphas[ga], betas[ga])
                o = activation(torch.clamp(go + po * new_c, -clip, clip), acts[fa], alphas[fa], betas[fa])
                new_h = o * activation(new_c, acts[ha], alphas[ha], betas[ha])
            else:
                new_h = activation(torch.clamp(gx + h @ r[d].t() + rb, -clip, clip), acts[fa], alphas[fa],
                                   betas[fa])
                new_c = c
            if lens is not None:
                keep = (k < lens.long()).unsqueeze(-1)
                new_h = torch.where(keep, new_h, h)
                new_c = torch.where(keep, new_c, c)
                out.append(torch.where(keep, new_h, torch.zeros_like(new_h)))
            else:
                out.append(new_h)
            h, c = new_h, new_c
        y = torch.stack(out) if len(out) > 0 else x.new_zeros([0, batch, hidden])
        ys.append(torch.gather(y, 0, order.unsqueeze(-1).expand(y.shape)))
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, 1)  # [steps, dirs, batch, hidden]
    last_h, last_c = torch.stack(hs), torch.stack(cs)
    if layout == 1:
        y = y.permute(2, 0, 1, 3)
        last_h, last_c = last_h.transpose(0, 1), last_c.transpose(0, 1)
    if kind == "LSTM":
        return [y, last_h, last_c]
    return [y, last_h]


@op("GRU", "LSTM", "RNN")
def _recurrent(g, node, x, w, r, b=None, lens=None, h0=None, c0=None, p=None):
    a = node.attrs
    direction = a.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise Unsupported(f"direction={direction!r}")
    dirs = 2 if direction == "bidirectional" else 1
    names = list(a.get("activations", [])) or _DEFAULTS[node.op_type] * dirs
    unknown = sorted({n for n in names if n not in ACTIVATIONS})
    if unknown:
        raise Unsupported(f"activations {unknown} (supported: {', '.join(ACTIVATIONS)})")
    given_alpha, given_beta = list(a.get("activation_alpha", [])), list(a.get("activation_beta", []))
    alphas, betas = [], []
    for name in names:  # the attribute lists hold values only for the activations that take them
        default_alpha, default_beta = ACTIVATIONS[name]
        takes = name in ("Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu")
        alphas.append(float(given_alpha.pop(0)) if takes and given_alpha else default_alpha)
        betas.append(float(given_beta.pop(0)) if name in ("Affine", "ScaledTanh", "HardSigmoid") and given_beta
                     else default_beta)
    clip = a.get("clip")

    def given(value):
        return value if value is not None and value.present else None

    lstm = node.op_type == "LSTM"
    out = g.call(recurrent, node.op_type, x, w, r, given(b), given(lens), given(h0), given(c0) if lstm else None,
                 given(p) if lstm else None, direction, int(a.get("layout", 0)),
                 math.inf if clip is None else float(clip), bool(a.get("linear_before_reset", 0)), names, alphas,
                 betas, bool(a.get("input_forget", 0)))
    return g.unpack(out, len(node.outputs))
