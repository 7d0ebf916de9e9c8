"""ONNX's own node test cases through to_torch (and onnx2torch, for comparison): pass rates.

Run: .venv/bin/python bench/bench_node_suite.py [--onnx2torch PYTHON]

The cases come from the installed onnx (onnx.backend.test.case.node); the in-scope rule, the
out-of-scope list with reasons and the comparison (onnx's runner tolerances) are the test's,
tests/helpers/onnx_node_suite.py. With --onnx2torch, the same cases run through onnx2torch.convert
in the given interpreter (a throw-away venv that has it; never this project's).
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def rate(converter: str) -> tuple[int, int, int, list[str], float]:
    """(passed, in scope, out of scope, the failing ops most often, seconds)."""
    import torch
    from helpers.onnx_node_suite import collect, run_case

    torch.set_num_threads(1)
    if converter == "onnx2torch":
        from onnx2torch import convert
    else:
        from converters.onnx_to_torch import to_torch as convert
    scope, skipped = collect()
    start = time.perf_counter()
    failing: collections.Counter = collections.Counter()
    passed = 0
    for case in scope:
        verdict = run_case(case, convert)
        passed += verdict.passed
        if not verdict.passed:
            failing.update({node.op_type for node in case.model.graph.node})
    worst = [f"{op} ({n})" for op, n in failing.most_common(8)]
    return passed, len(scope), len(skipped), worst, time.perf_counter() - start


def report(name: str, result: tuple) -> None:
    passed, scope, skipped, worst, seconds = result
    print(f"{name:<12} {passed}/{scope} in-scope cases pass ({100 * passed / scope:.1f}%), {skipped} out of scope, "
          f"{seconds:.0f} s; failing most: {', '.join(worst) or '-'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx2torch", metavar="PYTHON", help="an interpreter with onnx2torch installed")
    parser.add_argument("--converter", default="zoo", choices=["zoo", "onnx2torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.converter == "onnx2torch":  # the child run
        report("onnx2torch", rate("onnx2torch"))
        return
    report("to_torch", rate("zoo"))
    if args.onnx2torch:
        done = subprocess.run([args.onnx2torch, __file__, "--converter", "onnx2torch"], capture_output=True,
                              text=True)
        print(done.stdout.strip().splitlines()[-1] if done.returncode == 0 else
              f"onnx2torch run failed: {done.stderr.strip().splitlines()[-1:]}")


if __name__ == "__main__":
    main()
