"""Specialize a TorchScript graph on the call it will be exported for, so only data-dependent control flow is left.

A scripted audio or text model branches in its ``forward`` on things that are fixed once the call
is known: the sample rate argument (``if sr == 16000``), the input's rank (``if x.dim() == 1``), its
fixed sizes (``if x.shape[-1] != 512: raise``) and attributes the module updates itself (a cached
last batch size, a recurrent state it keeps between calls). ``torch.onnx.export`` cannot turn those
branches into ONNX (``prim::If`` on an int, attribute writes), and tracing a ScriptModule keeps them.

`specialize` walks the IR instead, the way a compiler specializes a function on known arguments:

1. a deep copy of the module is frozen (``torch.jit.freeze``: methods inlined, attributes that are
   never written folded to constants);
2. the given arguments (``--arg sr=16000``) replace the graph's inputs by constants;
3. the attributes ``forward`` writes are read as they are at the start of the call (the module as
   loaded, or as it is now): each read before any write is the attribute's current value, a read
   after a write in the same or an enclosing block is the value written (store-to-load forwarding),
   and a read after a branch that may have written it waits for that branch to be decided;
4. ``aten::dim``, ``aten::size`` and ``len`` of a tensor become constants where the shapes the
   inputs are given (``--input x=Nx512``) decide them: the graph's shapes are propagated twice, with
   every dynamic size (N) set to two different values, and only what agrees is folded;
5. constant propagation then folds every ``prim::If`` whose condition became a constant, keeping the
   branch taken; steps 3-5 repeat until nothing changes. The attribute writes that are left only
   prepare the next call, which a stateless ONNX graph does not model: they are dropped.

What is left is control flow on tensor values, which the exporter turns into ONNX If/Loop, or
refuses; the refusal names the node and its source line (`remaining`).
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

# Rounds of forwarding, shape folding and constant propagation (each round folds at least one more branch).
MAX_ROUNDS = 32
_CONTROL = ("prim::If", "prim::Loop")
_UNKNOWN = object()  # an attribute a branch not yet decided may have written


@dataclass
class Specialized:
    """The specialized module, what was folded, and the control flow that is left."""

    module: Any  # the frozen, specialized ScriptModule
    function: Any  # its forward as a script function of forward's arguments (no self): what tracing inlines
    notes: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)  # "prim::If at model.py:12: if x.sum() > 0:"


def needs_specializing(module) -> bool:
    """True for a ScriptModule whose forward (methods inlined) branches, loops or writes attributes."""
    import torch

    graph = getattr(module, "graph", None)
    if not isinstance(module, torch.jit.ScriptModule) or graph is None:
        return False
    inlined = graph.copy()
    torch._C._jit_pass_inline(inlined)
    return any(inlined.findAllNodes(kind) for kind in (*_CONTROL, "prim::SetAttr"))


def specialize(module, examples: Sequence[Any], dynamic: Sequence[Sequence[int]], args: dict[str, Any]
               ) -> Specialized:
    """A frozen copy of `module` specialized on tensors shaped like `examples` and the values in `args`.

    `examples` are the tensors ``forward`` takes, in order; `dynamic` lists, per example, the axes
    whose size is not fixed (``--input x=Nx512``: axis 0); `args` maps forward's other arguments
    to their values. `module` itself is not changed.
    """
    import torch

    frozen = torch.jit.freeze(copy.deepcopy(module).eval())
    graph = frozen.graph
    notes: list[str] = []
    names = _argument_names(module)
    inputs = list(graph.inputs())
    for value, name in zip(inputs[1:], names):
        if name in args and value.uses():
            with graph.insert_point_guard(next(iter(graph.nodes()), graph.return_node())):
                value.replaceAllUsesWith(graph.insertConstant(args[name]))
            notes.append(f"{name}={args[name]!r}")
    written = {_attr_path(n, inputs[0]) for n in graph.findAllNodes("prim::SetAttr")} - {None}
    before = _count(graph)
    for _ in range(MAX_ROUNDS):
        changed = _forward_attributes(graph, inputs[0], frozen, written)
        changed |= _fold_shapes(graph, inputs[0], examples, dynamic)
        torch._C._jit_pass_constant_propagation(graph)
        torch._C._jit_pass_dce(graph)
        if not changed:
            break
    dropped = _drop_attribute_writes(graph, inputs[0])
    torch._C._jit_pass_dce(graph)
    after = _count(graph)
    summary = [f"specialized on {', '.join(notes) or 'the input shapes'}: {before - after} of {before} "
               f"branches and loops folded"]
    if dropped:
        summary.append(f"{dropped} attribute writes dropped (state for a next call; the ONNX graph is one call "
                       f"from the module's current state)")
    return Specialized(frozen, _function(graph), ["TorchScript " + "; ".join(summary)], remaining(graph))


def _function(graph):
    """The graph as a script function of forward's arguments; raises when it still reads the module."""
    import torch

    work = graph.copy()
    if next(work.inputs()).uses():
        reads = sorted({n.s("name") for n in work.findAllNodes("prim::GetAttr", True)})
        raise RuntimeError(f"forward still reads module attributes after specializing: {', '.join(reads)}")
    work.eraseInput(0)
    return torch._C._create_function_from_graph("forward", work)


def remaining(graph) -> list[str]:
    """The control flow left in `graph`, each with its source line."""
    out = []
    for node in _walk(graph.block()):
        if node.kind() in _CONTROL:
            out.append(f"{node.kind()} {_source(node)}".strip())
    return out


# ---------------------------------------------------------------------------------------------


def _argument_names(module) -> list[str]:
    """forward()'s argument names after self, from its schema."""
    schema = module.forward.schema
    return [a.name for a in schema.arguments[1:]]


def _count(graph) -> int:
    return sum(1 for n in _walk(graph.block()) if n.kind() in _CONTROL)


def _walk(block) -> Iterator[Any]:
    """Every node of a block and of its nested blocks, in order."""
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _walk(inner)


def _attr_path(node, self_value) -> tuple[str, ...] | None:
    """('_model', '_state') for an attribute read or written through a chain of GetAttr from self."""
    path = [node.s("name")]
    value = node.inputsAt(0)
    while value is not None and value is not self_value:
        owner = value.node()
        if owner.kind() != "prim::GetAttr":
            return None
        path.insert(0, owner.s("name"))
        value = owner.inputsAt(0)
    return tuple(path) if value is self_value else None


def _current(module, path: tuple[str, ...]) -> Any:
    value = module
    for name in path:
        value = getattr(value, name)
    return value


def _constant(graph, node, value):
    """A graph constant for an attribute's value, inserted before `node`; None when TorchScript has no constant for it."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().clone()
    elif not isinstance(value, (bool, int, float, str, type(None))) and not (
            isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float)) for v in value)):
        return None
    try:
        with graph.insert_point_guard(node):
            return graph.insertConstant(value)
    except (RuntimeError, TypeError):
        return None


def _forward_attributes(graph, self_value, module, written: set[tuple[str, ...]]) -> bool:
    """Replace reads of written attributes by their value at that point of the call (see module docstring)."""
    changed = False

    def walk(block, state: dict) -> None:
        nonlocal changed
        for node in list(block.nodes()):
            kind = node.kind()
            if kind == "prim::GetAttr":
                path = _attr_path(node, self_value)
                if path not in written:
                    continue
                known = state.get(path)
                if known is _UNKNOWN:
                    continue
                value = known if known is not None else _constant(graph, node, _current(module, path))
                if value is None:
                    continue
                node.output().replaceAllUsesWith(value)
                node.destroy()
                changed = True
            elif kind == "prim::SetAttr":
                path = _attr_path(node, self_value)
                if path is not None:
                    state[path] = node.inputsAt(1)
            elif kind == "prim::If":
                for inner in node.blocks():
                    walk(inner, dict(state))
                for path in _writes(node, self_value):
                    state[path] = _UNKNOWN
            elif list(node.blocks()):  # a loop: what it writes is unknown inside and after it
                for path in _writes(node, self_value):
                    state[path] = _UNKNOWN
                for inner in node.blocks():
                    walk(inner, dict(state))

    walk(graph.block(), {})
    return changed


def _writes(node, self_value) -> set[tuple[str, ...]]:
    return {p for inner in node.blocks() for n in _walk(inner) if n.kind() == "prim::SetAttr"
            and (p := _attr_path(n, self_value)) is not None}


def _drop_attribute_writes(graph, self_value) -> int:
    """Remove the attribute writes no read depends on any more; how many."""
    reads = {_attr_path(n, self_value) for n in graph.findAllNodes("prim::GetAttr", True)}
    dropped = 0
    for node in graph.findAllNodes("prim::SetAttr", True):
        if _attr_path(node, self_value) not in reads:
            node.destroy()
            dropped += 1
    return dropped


# Queries whose answer the input shapes can fix.
_SHAPE_QUERIES = ("aten::dim", "aten::size", "aten::len")


def _fold_shapes(graph, self_value, examples: Sequence[Any], dynamic: Sequence[Sequence[int]]) -> bool:
    """Fold the top-level dim/size/len queries whose answer is the same for every size of the dynamic axes."""
    nodes = [n for n in graph.nodes() if n.kind() != "prim::SetAttr"]
    wanted = [k for k, n in enumerate(nodes) if n.kind() in _SHAPE_QUERIES or (  # x.shape[-1]
        n.kind() == "aten::__getitem__" and n.inputsAt(0).node().kind() == "aten::size")]
    if not wanted:
        return False
    answers = [_shape_answers(graph, examples, dynamic, variant, wanted) for variant in (0, 1, 2)]
    if any(a is None for a in answers):
        # A check further on refuses one variant (a frame length given as dynamic fails `!= 512`):
        # ask each query on its own, with the graph cut right after it.
        each = [[_shape_answers(graph, examples, dynamic, variant, [k]) for k in wanted] for variant in (0, 1, 2)]
        answers = [[None if a is None else a[0] for a in variant] for variant in each]
    changed = False
    for k, first, second, third in zip(wanted, *answers):
        if not (first == second == third) or not isinstance(first, (int, list)):
            continue
        node = nodes[k]
        value = _constant(graph, node, first)
        if value is None:
            continue
        node.output().replaceAllUsesWith(value)
        node.destroy()
        changed = True
    return changed


def _shape_answers(graph, examples, dynamic, variant: int, wanted: list[int]) -> list | None:
    """The values the `wanted` top-level nodes (attribute writes skipped) take when the graph runs.

    The graph (a copy without `self`, possible once every attribute read is forwarded) runs on
    inputs shaped like `examples`: variant 0 as given, variant 1 with other random values (a size
    that depends on the values, like a mask's nonzero count, then differs), variant 2 with every
    dynamic axis one longer. A query that answers alike in all three is decided by the fixed
    sizes alone. None when the graph cannot run on its own.
    """
    import torch

    work = graph.copy()
    for node in work.findAllNodes("prim::SetAttr", True):
        node.destroy()
    first = next(work.inputs())
    if first.uses():
        return None
    work.eraseInput(0)
    nodes = list(work.nodes())
    for _ in range(len(list(work.outputs()))):
        work.eraseOutput(0)
    for node in reversed(nodes[max(wanted) + 1:]):  # what comes after the queries is not run
        node.destroy()
    for k in wanted:
        work.registerOutput(nodes[k].output())
    if len(wanted) > 1:
        work.makeMultiOutputIntoTuple()  # a function returns one value
    generator = torch.Generator().manual_seed(variant)
    tensors = []
    for example, axes in zip(examples, dynamic):
        sizes = [s + 1 if variant == 2 and k in axes else s for k, s in enumerate(example.shape)]
        if example.dtype.is_floating_point:
            tensors.append(torch.randn(sizes, generator=generator).to(example.dtype))
        elif example.dtype == torch.bool:
            tensors.append(torch.randint(0, 2, sizes, generator=generator).bool())
        else:
            tensors.append(torch.randint(0, 10, sizes, generator=generator).to(example.dtype))
    arguments = list(work.inputs())
    stack = tensors + [_placeholder(v, torch) for v in arguments[len(tensors):]]  # folded arguments: unused
    try:
        function = torch._C._create_function_from_graph("zoo_shape_probe", work)
        with torch.no_grad():
            result = function(*stack)
    except Exception:  # noqa: BLE001  a graph that does not run on its own: nothing folded this round
        return None
    result = result if isinstance(result, tuple) and len(wanted) > 1 else (result,)
    return [list(r) if isinstance(r, (list, tuple)) else r for r in result]


def _placeholder(value, torch):
    """A value of the right type for a graph input that is no longer used (an argument folded in)."""
    kind = value.type().kind()
    return {"IntType": 0, "FloatType": 0.0, "BoolType": False, "StringType": ""}.get(kind, torch.zeros(0))


def _source(node) -> str:
    """'at file.py, line 12: <the line>' for a node, from the source range TorchScript recorded.

    The recorded text is a few lines of context with the node's own lines underlined by '~'.
    """
    try:
        text = str(node.sourceRange())
    except (RuntimeError, AttributeError):
        return ""
    lines = text.splitlines()
    where = lines[0].strip() if lines else ""
    code = next((lines[i].strip() for i in range(1, len(lines) - 1)
                 if set(lines[i + 1].strip()) <= {"~"} and lines[i + 1].strip()), "")
    if not where:
        return ""
    return f"at {where}" + (f": {code}" if code else "")


__all__ = ["Specialized", "needs_specializing", "remaining", "specialize"]
