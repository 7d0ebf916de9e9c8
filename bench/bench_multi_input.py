"""Multi-input Extractor (token ids + attention mask, fed by name) vs bare onnxruntime on the same cut.

Run: .venv/bin/python bench/bench_multi_input.py [--repeats 11]

The model is a BERT-sized slice built in torch and exported with torch.onnx (embedding of a
30,522-token vocabulary, two masked self-attention blocks of width 256, masked mean-pool);
its weights are random, which does not change the cost. Timings are interleaved (A, B, A,
B...) and medians are reported, so a neighbour's load hits both sides alike. Two cases: one
call within the batch size (the extractor's checks and dict handling are the only extra
work) and a call 4x the batch size (the extractor splits it along the shared batch axis;
bare onnxruntime runs the same slices in a Python loop).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

from _timing import interleaved  # bench/ is the script's folder

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VOCAB, WIDTH, SEQ = 30522, 256, 128




def export_text_encoder(path: Path) -> None:
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(WIDTH, 4, batch_first=True)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(WIDTH, 4 * WIDTH), torch.nn.GELU(),
                                           torch.nn.Linear(4 * WIDTH, WIDTH))

        def forward(self, h, padding):
            h = h + self.attention(h, h, h, key_padding_mask=padding, need_weights=False)[0]
            return h + self.mlp(h)

    class TextEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, WIDTH)
            self.block1, self.block2 = Block(), Block()

        def forward(self, input_ids, attention_mask):
            padding = attention_mask == 0
            h = self.block2(self.block1(self.embed(input_ids), padding), padding)
            weights = attention_mask[:, :, None].to(h.dtype)
            return (h * weights).sum(1) / weights.sum(1).clamp(min=1)

    torch.manual_seed(0)
    module = TextEncoder().eval()
    ids = torch.randint(0, VOCAB, (2, SEQ))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (ids, torch.ones_like(ids)), str(path), dynamo=False, opset_version=17,
                          input_names=["input_ids", "attention_mask"], output_names=["pooled"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "pooled": {0: "batch"}})


def tokens(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(SEQ // 4, SEQ + 1, size=n)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int64)
    return rng.integers(1, VOCAB, size=(n, SEQ)).astype(np.int64) * mask, mask


def bare_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["ZOO_CACHE"] = scratch  # cut files go to a scratch cache, not the user's
        from zoo.extract import load_extractor
        from zoo.options import ExtractorOptions

        path = Path(scratch) / "text_encoder.onnx"
        export_text_encoder(path)
        extractor = load_extractor(path, -1, options=ExtractorOptions(batch_size=args.batch))
        session = bare_session(extractor.model_path)
        outputs = extractor.meta.outputs
        for factor in (1, 4):
            n = args.batch * factor
            ids, mask = tokens(n)

            def bare():
                parts = [session.run(outputs, {"input_ids": ids[i:i + args.batch],
                                               "attention_mask": mask[i:i + args.batch]})[0]
                         for i in range(0, n, args.batch)]
                return np.concatenate(parts)

            def named():
                return extractor(input_ids=ids, attention_mask=mask)

            np.testing.assert_allclose(named(), bare(), rtol=1e-5, atol=1e-6)
            t = interleaved({"extractor": named, "bare": bare}, args.repeats)
            print(f"[{n} samples, batch {args.batch}] text encoder ({VOCAB} tokens, width {WIDTH}, seq {SEQ}), "
                  f"{args.repeats} interleaved repeats")
            print(f"  bare onnxruntime : {n / t['bare']:8.1f} samples/s ({t['bare'] * 1e3:.1f} ms/call)")
            print(f"  Extractor        : {n / t['extractor']:8.1f} samples/s ({t['extractor'] * 1e3:.1f} ms/call)")
            print(f"  ratio Extractor/bare throughput: {t['bare'] / t['extractor']:.3f}  (goal >= 0.97)")


if __name__ == "__main__":
    main()
