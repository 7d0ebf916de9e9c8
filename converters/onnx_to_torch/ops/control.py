"""Control flow and containers: If, Loop, Scan (subgraphs lowered into modules), sequences and optionals."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from converters.onnx_to_torch._registry import Unsupported, op
from converters.onnx_to_torch.ops._common import axis


# ---------------------------------------------------------------- the modules a subgraph runs in
class IfModule(nn.Module):
    """ONNX If: one branch module or the other; each takes what it captures from the outer graph."""

    def __init__(self, then_branch: nn.Module, else_branch: nn.Module):
        super().__init__()
        self.then_branch = then_branch
        self.else_branch = else_branch

    def forward(self, cond: Tensor, then_captured: List[Tensor], else_captured: List[Tensor]) -> List[Tensor]:
        empty: List[Tensor] = []
        if bool(cond.reshape(-1)[0]):
            return self.then_branch(empty, then_captured)
        return self.else_branch(empty, else_captured)


class LoopModule(nn.Module):
    """ONNX Loop: the body runs while the trip count and the condition allow; scan outputs stacked."""

    def __init__(self, body: nn.Module, carried: int, scans: int):
        super().__init__()
        self.body = body
        self.carried = carried
        self.scans = scans

    def forward(self, trip: Optional[Tensor], cond: Optional[Tensor], state: List[Tensor],
                captured: List[Tensor]) -> List[Tensor]:
        limit = int(trip.reshape(-1)[0].item()) if trip is not None else (1 << 62)
        keep = cond.reshape([]).to(torch.bool) if cond is not None else torch.ones([], dtype=torch.bool)
        collected: List[List[Tensor]] = []
        for _ in range(self.scans):
            collected.append([])
        i = 0
        while i < limit and bool(keep):
            outs = self.body([torch.tensor(i, dtype=torch.int64), keep] + state, captured)
            keep = outs[0].reshape([]).to(torch.bool)
            state = outs[1:1 + self.carried]
            for k in range(self.scans):
                collected[k].append(outs[1 + self.carried + k])
            i += 1
        result = list(state)
        for k in range(self.scans):
            result.append(torch.stack(collected[k]) if len(collected[k]) > 0 else torch.zeros([0]))
        return result


class SequenceLoopModule(LoopModule):
    """A Loop that carries a sequence: it runs eagerly (and traces); TorchScript has no type for it."""

    __zoo_eager_only__ = True


class ScanModule(nn.Module):
    """ONNX Scan (opset 9+): the body over slices of the scan inputs, states carried along."""

    def __init__(self, body: nn.Module, states: int, in_axes: List[int], in_reverse: List[bool],
                 out_axes: List[int], out_reverse: List[bool]):
        super().__init__()
        self.body = body
        self.states = states
        self.in_axes = in_axes
        self.in_reverse = in_reverse
        self.out_axes = out_axes
        self.out_reverse = out_reverse

    def forward(self, state: List[Tensor], inputs: List[Tensor], captured: List[Tensor]) -> List[Tensor]:
        axes = [axis(self.in_axes[k], inputs[k].dim()) for k in range(len(inputs))]
        length = inputs[0].shape[axes[0]]
        collected: List[List[Tensor]] = []
        for _ in range(len(self.out_axes)):
            collected.append([])
        for t in range(length):
            slices: List[Tensor] = []
            for k in range(len(inputs)):
                slices.append(inputs[k].select(axes[k], length - 1 - t if self.in_reverse[k] else t))
            outs = self.body(state + slices, captured)
            state = outs[:self.states]
            for k in range(len(self.out_axes)):
                collected[k].append(outs[self.states + k])
        result = list(state)
        for k in range(len(self.out_axes)):
            parts = collected[k]
            if self.out_reverse[k]:
                parts = parts[::-1]
            stacked = torch.stack(parts)
            result.append(stacked.movedim(0, axis(self.out_axes[k], stacked.dim())))
        return result


class SequenceMapModule(nn.Module):
    """ONNX SequenceMap: the body on each position of the input sequences (tensors passed whole)."""

    def __init__(self, body: nn.Module, is_sequence: List[bool], outputs: int):
        super().__init__()
        self.body = body
        self.is_sequence = is_sequence
        self.outputs = outputs

    def forward(self, sequences: List[List[Tensor]], tensors: List[Tensor], captured: List[Tensor]) -> List[List[Tensor]]:
        result: List[List[Tensor]] = []
        for _ in range(self.outputs):
            result.append([])
        for i in range(len(sequences[0])):
            args: List[Tensor] = []
            s, t = 0, 0
            for flag in self.is_sequence:
                if flag:
                    args.append(sequences[s][i])
                    s += 1
                else:
                    args.append(tensors[t])
                    t += 1
            outs = self.body(args, captured)
            for k in range(self.outputs):
                result[k].append(outs[k])
        return result


@op("If")
def _if(g, node, cond):
    if g.evaluating:
        raise Unsupported("folding an If")
    then_module, then_captured = g.subgraph(node.subgraphs["then_branch"], [], g.scope)
    else_module, else_captured = g.subgraph(node.subgraphs["else_branch"], [], g.scope)
    out = g.call_module(IfModule(then_module, else_module), cond, list(then_captured), list(else_captured),
                        name="if")
    return g.unpack(out, len(node.outputs))


@op("Loop", eager_only="a Loop carrying a sequence (TorchScript has no type for a list of lists)")
def _loop(g, node, trip, cond, *initial):
    if g.evaluating:
        raise Unsupported("folding a Loop")
    body = node.subgraphs["body"]
    scans = len(body.outputs) - 1 - len(initial)
    module, captured = g.subgraph(body, body.inputs, g.scope)
    cls = SequenceLoopModule if any(v.kind != "tensor" for v in initial) else LoopModule
    out = g.call_module(cls(module, len(initial), scans), trip if trip.present else None,
                        cond if cond.present else None, list(initial), list(captured), name="loop")
    return g.unpack(out, len(node.outputs))


@op("Scan", since=9)
def _scan(g, node, *inputs):
    if g.evaluating:
        raise Unsupported("folding a Scan")
    body = node.subgraphs["body"]
    n_scan = int(node.attr("num_scan_inputs"))
    states = len(inputs) - n_scan
    n_out = len(body.outputs) - states
    in_axes = [int(v) for v in node.attr("scan_input_axes", [])] or [0] * n_scan
    in_dirs = [bool(v) for v in node.attr("scan_input_directions", [])] or [False] * n_scan
    out_axes = [int(v) for v in node.attr("scan_output_axes", [])] or [0] * n_out
    out_dirs = [bool(v) for v in node.attr("scan_output_directions", [])] or [False] * n_out
    module, captured = g.subgraph(body, body.inputs, g.scope)
    out = g.call_module(ScanModule(module, states, in_axes, in_dirs, out_axes, out_dirs), list(inputs[:states]),
                        list(inputs[states:]), list(captured), name="scan")
    return g.unpack(out, len(node.outputs))


@op("SequenceMap", since=17)
def _sequence_map(g, node, *inputs):
    if g.evaluating:
        raise Unsupported("folding a SequenceMap")
    body = node.subgraphs["body"]
    flags = [v.kind == "sequence" for v in inputs]
    flags[0] = True
    module, captured = g.subgraph(body, body.inputs, g.scope)
    out = g.call_module(SequenceMapModule(module, flags, len(node.outputs)),
                        [v for v, f in zip(inputs, flags) if f], [v for v, f in zip(inputs, flags) if not f],
                        list(captured), name="sequence_map")
    return [_kind(v, "sequence") for v in g.unpack(out, len(node.outputs))]


# ---------------------------------------------------------------- sequences (List[Tensor])
def _kind(value, kind: str):
    value.kind = kind
    return value


def sequence_construct(xs: List[Tensor]) -> List[Tensor]:
    return list(xs)


def sequence_empty() -> List[Tensor]:
    out: List[Tensor] = []
    return out


def _position(pos: Tensor, n: int) -> int:
    p = int(pos.reshape(-1)[0].item())
    return p + n if p < 0 else p


def sequence_at(seq: List[Tensor], pos: Tensor) -> Tensor:
    return seq[_position(pos, len(seq))]


def sequence_insert(seq: List[Tensor], x: Tensor, pos: Optional[Tensor]) -> List[Tensor]:
    out = list(seq)
    if pos is None:
        out.append(x)
    else:
        out.insert(_position(pos, len(seq)), x)
    return out


def sequence_erase(seq: List[Tensor], pos: Optional[Tensor]) -> List[Tensor]:
    out = list(seq)
    if pos is None:
        out.pop()
    else:
        out.pop(_position(pos, len(seq)))
    return out


def sequence_length(seq: List[Tensor]) -> Tensor:
    return torch.tensor(len(seq), dtype=torch.int64)


def split_to_sequence(x: Tensor, split: Optional[Tensor], ax: int, keepdims: bool) -> List[Tensor]:
    a = axis(ax, x.dim())
    if split is None:
        parts = list(torch.split(x, 1, a))
        if not keepdims:
            return [p.squeeze(a) for p in parts]
        return parts
    if split.dim() == 0:
        return list(torch.split(x, int(split.item()), a))
    sizes: List[int] = split.reshape(-1).long().tolist()
    return list(torch.split(x, sizes, a))


def concat_from_sequence(seq: List[Tensor], ax: int, new_axis: bool) -> Tensor:
    if new_axis:
        return torch.stack(seq, axis(ax, seq[0].dim() + 1))
    return torch.cat(seq, ax)


@op("SequenceConstruct", since=11)
def _sequence_construct(g, node, *xs):
    return _kind(g.call(sequence_construct, list(xs)), "sequence")


@op("SequenceEmpty", since=11)
def _sequence_empty(g, node):
    return _kind(g.call(sequence_empty), "sequence")


@op("SequenceAt", since=11)
def _sequence_at(g, node, seq, pos):
    return g.call(sequence_at, seq, pos)


@op("SequenceInsert", since=11)
def _sequence_insert(g, node, seq, x, pos=None):
    return _kind(g.call(sequence_insert, seq, x, pos if pos is not None and pos.present else None), "sequence")


@op("SequenceErase", since=11)
def _sequence_erase(g, node, seq, pos=None):
    return _kind(g.call(sequence_erase, seq, pos if pos is not None and pos.present else None), "sequence")


@op("SequenceLength", since=11)
def _sequence_length(g, node, seq):
    return g.call(sequence_length, seq)


@op("SplitToSequence", since=11)
def _split_to_sequence(g, node, x, split=None):
    split = split if split is not None and split.present else None
    return _kind(g.call(split_to_sequence, x, split, int(node.attr("axis", 0)), bool(node.attr("keepdims", 1))),
                 "sequence")


@op("ConcatFromSequence", since=11)
def _concat_from_sequence(g, node, seq):
    return g.call(concat_from_sequence, seq, int(node.attr("axis")), bool(node.attr("new_axis", 0)))


# ---------------------------------------------------------------- optionals (Optional[Tensor], or a list)
def empty_optional() -> Optional[Tensor]:
    return None


def has_element(x: Optional[Tensor]) -> Tensor:
    return torch.tensor(x is not None)


def has_elements(x: Optional[List[Tensor]]) -> Tensor:
    return torch.tensor(x is not None)


def get_element(x: Optional[Tensor]) -> Tensor:
    assert x is not None, "OptionalGetElement of an empty optional"
    return x


@op("Optional", since=15)
def _optional(g, node, x=None):
    if x is None or not x.present:
        return _kind(g.call(empty_optional), "optional")
    return _kind(x, "optional sequence" if x.kind.endswith("sequence") else "optional")


@op("OptionalHasElement", since=15)
def _optional_has_element(g, node, x=None):
    if x is None or not x.present:
        return g.constant(torch.tensor(False))
    if x.kind.endswith("sequence"):
        return g.call(has_elements, x)
    return g.call(has_element, x)


@op("OptionalGetElement", since=15)
def _optional_get_element(g, node, x):
    if x.kind.endswith("sequence"):
        return x
    return g.call(get_element, x)
