"""ONNX's own node test cases through the ONNX -> PyTorch converter: pass rate, and every op's TorchScript form."""
from __future__ import annotations

import pytest
from helpers.onnx_node_suite import OUT_OF_SCOPE_OPS, OUT_OF_SCOPE_TYPES, collect, run_case

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

GOAL = 0.90  # of the in-scope cases
# Registered ops whose scripted form test_onnx_to_torch.py checks (no in-scope node case has them,
# or only inside a Loop carrying a sequence, which has no TorchScript form).
SCRIPTED_ELSEWHERE = {"ZooPythonOnly", "ConcatFromSequence", "GlobalLpPool", "Optional", "SequenceAt",
                      "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceLength"}


@pytest.fixture(scope="module")
def suite():
    torch.set_num_threads(1)
    scope, skipped = collect()
    verdicts = {case.name: run_case(case) for case in scope}
    return scope, skipped, verdicts


def test_node_suite_pass_rate(suite):
    scope, skipped, verdicts = suite
    passed = sum(v.passed for v in verdicts.values())
    rate = passed / len(scope)
    failing = sorted(f"{name}: {v.why}" for name, v in verdicts.items() if not v.passed)
    print(f"\nONNX node suite: {passed}/{len(scope)} in-scope cases pass ({100 * rate:.1f}%, goal "
          f"{100 * GOAL:.0f}%); {len(skipped)} out of scope")
    assert len(scope) > 1500  # the installed onnx ships its cases; an empty suite proves nothing
    assert rate >= GOAL, "\n".join(failing)


def test_out_of_scope_cases_have_one_declared_reason_each(suite):
    scope, skipped, _ = suite
    declared = set(OUT_OF_SCOPE_OPS.values()) | {"training-mode dropout draws a random mask from numpy's generator"}
    for name, why in skipped.items():
        assert why in declared or why.startswith(("domain ", "element type ")), (name, why)
        if why.startswith("element type "):
            assert why.split()[2].rstrip(":") in set(OUT_OF_SCOPE_TYPES.values()) | {"map"}, (name, why)
    # Out of scope stays the exception: strings, random draws, non-default domains, 2- and 4-bit types.
    assert len(skipped) < 0.1 * (len(scope) + len(skipped))


def test_every_registered_op_has_a_scripted_form_or_is_listed_eager_only(suite):
    """For each op in supported_ops(), the first in-scope case using it that passes is scripted and
    must give the eager module's outputs, unless the op is in eager_only_ops()."""
    from converters.onnx_to_torch import eager_only_ops, supported_ops, to_torch

    scope, _, verdicts = suite
    eager_only = eager_only_ops()
    cases: dict[str, list] = {}
    for case in scope:
        if verdicts[case.name].passed:
            for op_type in {node.op_type for node in case.model.graph.node}:
                cases.setdefault(op_type, []).append(case)
    uncovered = sorted(set(supported_ops()) - set(cases) - SCRIPTED_ELSEWHERE)
    assert not uncovered, f"ops with no passing node case: {uncovered}"
    broken = []
    for op_type in sorted(set(cases) & set(supported_ops()) - SCRIPTED_ELSEWHERE):
        errors = []
        for case in cases[op_type][:3]:  # the first passing case that scripts proves the op's form
            try:
                _script_and_compare(to_torch(case.model), case)
                break
            except Exception as exc:  # noqa: BLE001 - collected and reported together
                errors.append(f"{case.name}: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}")
        else:
            if op_type not in eager_only:
                broken.append(f"{op_type}: {'; '.join(errors)}")
    assert not broken, "\n".join(broken)


def _script_and_compare(net, case) -> None:
    from helpers.onnx_node_suite import _array, _torch

    scripted = torch.jit.script(net)
    inputs, _ = case.data_sets[0]
    args = [_torch(_array(x)) for x in inputs]
    with torch.no_grad():
        want, got = net(*args), scripted(*args)
    _assert_same(got, want)


def _assert_same(got, want) -> None:
    if isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
        return
    if want is None:
        assert got is None
        return
    assert got.shape == want.shape and got.dtype == want.dtype
    if want.is_floating_point():
        assert torch.allclose(got.double(), want.double(), atol=1e-5, rtol=1e-4, equal_nan=True)
    else:
        assert torch.equal(got, want)
