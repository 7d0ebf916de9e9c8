"""Fold top-level If nodes whose condition is known, so the branch a model takes is cut like any layer.

Exported audio and text models often start with an If on a scalar input (Silero VAD: ``sr ==
16000`` picks the 16 kHz or the 8 kHz network): the whole encoder then sits inside a branch,
and a listing of the top graph shows an Equal and an If. Given the scalar's value (``--arg
sr=16000``), the condition is a constant: the value is baked in as an initializer, the
condition evaluated (with onnxruntime, on the nodes it depends on), and the If replaced by the
nodes of the branch it takes. A condition that depends only on constants and on input sizes the
graph fixes is folded without being asked. What cannot be decided (a condition on tensor values
or on a dynamic size) stays an If, and `branch_hints` says which scalar inputs would decide it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zoo.errors import InputError

if TYPE_CHECKING:
    import onnx

# Folding stops after this many rounds (a folded branch may hold Ifs of its own).
MAX_ROUNDS = 16


def has_branches(model: onnx.ModelProto) -> bool:
    """True when the top graph holds an If node."""
    return any(node.op_type == "If" for node in model.graph.node)


def fold_ifs(model: onnx.ModelProto, values: Mapping[str, Any] | None = None
             ) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` with `values` (input name -> scalar) baked in and decided Ifs inlined.

    Returns the model and notes on what was baked and folded; the model itself when there is
    nothing to do. Raises InputError when a value names no input of the model.

    >>> folded, notes = fold_ifs(onnx.load("silero_vad.onnx"), {"sr": 16000})   # doctest: +SKIP
    >>> notes                                                                  # doctest: +SKIP
    ['input sr = 16000 baked in', "If 'If_0' folded: its then branch (condition true)"]
    """
    import onnx

    values = dict(values or {})
    if not values and not has_branches(model):
        return model, []
    new = onnx.ModelProto()
    new.CopyFrom(model)
    notes = _bake(new, values)
    for _ in range(MAX_ROUNDS):
        folded = _fold_one(new)
        if folded is None:
            break
        notes.append(folded)
    return (new, notes) if notes else (model, [])


def branch_hints(model: onnx.ModelProto) -> list[str]:
    """For each If left in the top graph, the scalar inputs its condition depends on (a hint to give them)."""
    from zoo.graph import GraphInfo, value_dims

    info = GraphInfo(model)
    scalars = {i.name for i in model.graph.input
               if i.name in info.inputs and (value_dims(i) or []) in ([], [1])}
    hints = []
    for node in model.graph.node:
        if node.op_type != "If":
            continue
        cone = _cone(info, node.input[0])
        used = sorted(scalars & cone)
        if used:
            hints.append(f"If {node.name or node.output[0]!r} branches on input {', '.join(used)}")
    return hints


# ---------------------------------------------------------------------------------------------


def _bake(model: onnx.ModelProto, values: dict[str, Any]) -> list[str]:
    """Replace the named graph inputs by initializers holding the given values."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in inits}
    notes = []
    for name, value in values.items():
        if name not in inputs:
            raise InputError(
                f"{name} is not an input of the model; its inputs are {', '.join(inputs) or 'none'}")
        tensor_type = inputs[name].type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        array = np.asarray(value)
        if array.dtype.kind == "f" and np.dtype(dtype).kind in "iub" and not np.all(array == np.round(array)):
            raise InputError(f"{name} takes integers ({dtype}); {value!r} is not a whole number")
        array = array.astype(dtype)
        if len(dims) == 1 and array.ndim == 0:
            array = array.reshape(1)
        if array.ndim != len(dims) or any(d > 0 and d != n for d, n in zip(dims, array.shape)):
            raise InputError(f"{name} takes shape {[d if d > 0 else None for d in dims]}; the value given has "
                             f"shape {list(array.shape)}")
        graph.input.remove(inputs[name])
        graph.initializer.append(numpy_helper.from_array(array, name))
        notes.append(f"input {name} = {array.tolist()!r} baked in")
    return notes


def _cone(info, tensor: str) -> set[str]:
    """Every tensor `tensor` is computed from (itself included)."""
    from zoo.graph import ancestors

    return ancestors(info, [tensor])[0]


def _fold_one(model: onnx.ModelProto) -> str | None:
    """Inline the first top-level If whose condition can be decided; a note, or None."""
    from zoo.graph import GraphInfo

    info = GraphInfo(model)
    for index, node in enumerate(model.graph.node):
        if node.op_type != "If" or not node.input or not node.input[0]:
            continue
        taken = _condition(model, info, node.input[0])
        if taken is None:
            continue
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if taken else "else_branch"))
        _inline(model, index, branch)
        which = "then" if taken else "else"
        return f"If {node.name or node.output[0]!r} folded: its {which} branch (condition {str(taken).lower()})"
    return None


def _condition(model: onnx.ModelProto, info, cond: str) -> bool | None:
    """The value of `cond` when constants and statically known shapes decide it, else None."""
    import numpy as np
    import onnx
    from onnx import helper

    from zoo.graph import cut

    cone = _cone(info, cond)
    if cone & set(info.inputs) and not _only_through_static_shapes(info, cone):
        return None
    sub = cut(model, [cond], info)
    static = {}
    for node in sub.graph.node:  # Shape of a tensor whose read sizes the graph fixes: a constant
        if node.op_type == "Shape":
            dims = info.shape(node.input[0])
            if not dims:
                return None
            start = next((a.i for a in node.attribute if a.name == "start"), 0)
            end = next((a.i for a in node.attribute if a.name == "end"), len(dims))
            dims = dims[start:end] if end else dims[start:]
            fixed = [isinstance(d, int) and d > 0 for d in dims]
            if not all(fixed) and not _reads_only(sub, node.output[0], fixed):
                return None
            # A dynamic size nobody reads: any value stands for it.
            static[node.output[0]] = np.asarray([d if ok else 1 for d, ok in zip(dims, fixed)], np.int64)
    nodes = [n for n in sub.graph.node if not (n.op_type == "Shape" and n.output[0] in static)]
    constants = [helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(v, name))
                 for name, v in static.items()]
    needed = {x for n in nodes for x in n.input}
    graph = helper.make_graph(constants + _needed_nodes(nodes, cond), "condition", [],
                              [helper.make_tensor_value_info(cond, onnx.TensorProto.BOOL, None)],
                              [t for t in sub.graph.initializer if t.name in needed])
    probe = helper.make_model(graph, opset_imports=list(model.opset_import))
    probe.ir_version = model.ir_version
    probe.functions.extend(model.functions)
    try:
        from converters.onnx_model import session

        value = session(probe).run([cond], {})[0]
    except Exception:  # noqa: BLE001 a condition onnxruntime cannot evaluate alone stays an If
        return None
    value = np.asarray(value)
    return bool(value.reshape(-1)[0]) if value.size == 1 else None


def _reads_only(model: onnx.ModelProto, shape: str, fixed: list[bool]) -> bool:
    """True when every reader of the `shape` tensor picks fixed positions of it with constant indices
    (``Gather(shape, 1)``, ``Slice(shape, 1, 2)``): a dynamic size (the batch) is then never read."""
    from onnx import numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    readers = [n for n in model.graph.node if shape in n.input]
    for node in readers:
        values = [constants.get(x) for x in node.input[1:]]
        if node.op_type == "Gather" and node.input[0] == shape and values and values[0] is not None:
            picked = [int(i) for i in values[0].reshape(-1)]
        elif node.op_type == "Slice" and node.input[0] == shape and len(values) >= 2 and all(
                v is not None for v in values):
            start, end = int(values[0].reshape(-1)[0]), int(values[1].reshape(-1)[0])
            step = int(values[3].reshape(-1)[0]) if len(values) > 3 else 1
            picked = list(range(len(fixed)))[start:end:step]
        else:
            return False
        if not all(-len(fixed) <= i < len(fixed) and fixed[i] for i in picked):
            return False
    return True


def _only_through_static_shapes(info, cone: set[str]) -> bool:
    """True when the inputs in `cone` reach the condition only through Shape nodes."""
    for name in cone:
        i = info.producer.get(name)
        if i is None:
            continue
        node = info.nodes[i]
        if node.op_type != "Shape" and any(x in info.data for x in info.node_inputs[i]):
            return False
    return True


def _needed_nodes(nodes: list, output: str) -> list:
    """The nodes `output` needs, in order."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    keep, stack = set(), [output]
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in keep:
            continue
        keep.add(i)
        stack.extend(nodes[i].input)
    return [nodes[i] for i in sorted(keep)]


def _inline(model: onnx.ModelProto, index: int, branch: onnx.GraphProto) -> None:
    """Replace node `index` (an If) of the top graph by the nodes of `branch`."""
    from onnx import helper

    graph = model.graph
    node = graph.node[index]
    taken = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for n in graph.node:
        taken.update(n.output)
    local = {t.name for t in branch.initializer} | {o for n in branch.node for o in n.output}
    results = {out.name: target for out, target in zip(branch.output, node.output)}
    rename = {}
    for name in local:
        if name in results:
            rename[name] = results[name]  # a branch output is produced under the If's output name
        elif name in taken:
            rename[name] = _fresh(name, taken)
            taken.add(rename[name])
    body = []
    for n in branch.node:
        copy = helper.make_node("Identity", [], [])  # placeholder replaced below
        copy.CopyFrom(n)
        _rename(copy, rename)
        body.append(copy)
    produced = {o for n in body for o in n.output}
    for out, target in zip(branch.output, node.output):
        source = rename.get(out.name, out.name)
        if source != target or target not in produced:  # an outer tensor or initializer handed through
            body.append(helper.make_node("Identity", [source], [target], name=f"{target}/from_branch"))
    for init in branch.initializer:
        copy = type(init)()
        copy.CopyFrom(init)
        copy.name = rename.get(init.name, init.name)
        graph.initializer.append(copy)
    graph.value_info.extend(v for v in branch.value_info if v.name not in rename)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes[:index] + body + nodes[index + 1:])


def _fresh(name: str, taken: set[str]) -> str:
    n = 1
    while f"{name}__branch{n}" in taken:
        n += 1
    return f"{name}__branch{n}"


def _rename(node, rename: dict[str, str]) -> None:
    """Apply `rename` to a node's inputs and outputs, and to the outer names its subgraphs read."""
    for field in (node.input, node.output):
        for k, name in enumerate(field):
            if name in rename:
                field[k] = rename[name]
    for attr in node.attribute:
        for sub in [attr.g, *attr.graphs] if attr.type in (5, 10) else []:
            own = {i.name for i in sub.input} | {t.name for t in sub.initializer} | {o for n in sub.node for o in n.output}
            outer = {k: v for k, v in rename.items() if k not in own}
            for inner in sub.node:
                _rename(inner, outer)
            for out in sub.output:
                if out.name in outer:
                    out.name = outer[out.name]


__all__ = ["branch_hints", "fold_ifs", "has_branches"]
