"""What a model's own code may do while zoo converts it: every op is checked before anything runs.

Converting verifies the result by running the source model, so a model file is code that runs on
the user's machine: a TorchScript ``forward`` may call ``torch.from_file(path, shared=True)`` and
overwrite any file it can open, a SavedModel signature may call ``tf.io.write_file``. Each
converter therefore walks the model's graphs first and refuses an op that is not known to be a
pure computation, with one line that names the op, where it is, and the override
(``zoo convert NAME --trust-model-code``, ``trust_model_code=True``).

The rule is an allow-list where the model's computation runs, and a deny-list of file, process
and network ops everywhere else a file may hold code:

- TorchScript: every node of every method of every submodule (calls inlined, ``prim::If`` /
  ``prim::Loop`` blocks included) must be in an allowed namespace (``aten``, ``prim``, the
  quantized and prepacked kernels) and not one of `TORCH_DENIED`; the archive's serialized code
  is scanned for the same names before ``torch.jit.load`` compiles it (a scripted class's
  ``__setstate__`` runs during the load). ``prim::Print``, ``aten::_print`` and ``aten::warn`` stay
  allowed: they write to the converter's standard streams, which the sandboxed child process
  captures into its scratch folder (``converters.isolation``), never to a file or the terminal.
- TensorFlow: the nodes and functions the conversion runs (the signature's, a frozen graph's
  outputs' ancestors, a traced Keras model) may hold only ops tf2onnx converts plus graph
  plumbing (`TF_PLUMBING`); everything else a SavedModel holds (other signatures, initializers,
  restore functions, the object graph's functions) may hold anything but `TF_DENIED` ops, except
  that the checkpoint ops of its own save path (``saver_def.save_tensor_name``'s ancestors, run
  only when the model is saved again) and ``RestoreV2`` on its restore path are expected there.
- TFLite: builtin ops cannot touch files; a Flex op carries any TensorFlow op (a NodeDef in its
  custom options), which is checked as a TensorFlow op of the computation.

This is the first line of defence; the second is the sandbox the converters run in.
"""
from __future__ import annotations

import ast
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any

from zoo.errors import UnsafeModelError

TRUST_HINT = ("if you trust the file, convert it anyway with `zoo convert NAME --trust-model-code` "
              "(trust_model_code=True in Python)")

# ---------------------------------------------------------------------------------------------
# TorchScript

# Namespaces of compiled kernels that compute on tensors; custom op libraries (anything else) can do anything.
TORCH_NAMESPACES = frozenset({"aten", "prim", "prims", "quantized", "_quantized", "prepacked", "mkldnn",
                              "mkldnn_prepacked", "onednn", "profiler"})
# Ops inside those namespaces that reach outside the process's memory.
TORCH_DENIED = {
    "aten::from_file": "maps a file into memory (with shared=True, writes to it)",
    "aten::save": "writes a file",
    "prim::rpc_async": "calls another process over the network",
    "prim::rpc_sync": "calls another process over the network",
    "prim::rpc_remote": "calls another process over the network",
    "prim::PythonOp": "calls Python code",
    "prim::IgnoredPythonOp": "calls Python code",
}


def refusal(label: str, op: str, where: str, why: str) -> UnsafeModelError:
    """The one-line error for an op a model may not run during conversion."""
    return UnsafeModelError(f"{label}: refused before running any of it: {where} uses {op} ({why}); "
                            f"{TRUST_HINT}")


def _torch_op_problem(kind: str) -> str | None:
    """Why a TorchScript node kind is refused, or None when it is an allowed computation."""
    if kind in TORCH_DENIED:
        return TORCH_DENIED[kind]
    namespace = kind.split("::", 1)[0]
    if namespace not in TORCH_NAMESPACES:
        return f"a custom op outside the {', '.join(sorted(TORCH_NAMESPACES))} namespaces, which can run any code"
    return None


def check_torchscript_archive(path: str | os.PathLike, label: str | None = None) -> None:
    """Scan a TorchScript archive's serialized code for refused ops, before anything compiles or runs it.

    The code is Python syntax (``torch.from_file(...)``, ``ops.myns.op(...)``); a reference to a
    refused op anywhere (called or not) refuses the file. The module's compiled graphs are
    checked again after loading (`check_torchscript_module`): this scan exists because loading
    already runs code (a scripted class's ``__setstate__``).
    """
    path = os.fspath(path)
    label = label or os.path.basename(path)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            parts = info.filename.split("/")
            if "code" not in parts[:-1] or not info.filename.endswith(".py") or info.file_size > 64 << 20:
                continue
            text = archive.read(info).decode("utf-8", errors="replace")
            for op, function in _torch_code_refs(text):
                problem = _torch_op_problem(op)
                if problem:
                    where = f"{'/'.join(parts[parts.index('code') + 1:])}{' ' + function if function else ''}"
                    raise refusal(label, op, f"the serialized code ({where})", problem)


def _torch_code_refs(text: str) -> Iterator[tuple[str, str]]:
    """(op kind, enclosing Class.method) of each op the serialized code refers to."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        # Not Python syntax: fall back to the names, which is stricter (comments count too).
        for match in re.finditer(r"\b(?:torch\.(?:ops\.)?|ops\.)([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?", text):
            yield (f"aten::{match.group(1)}" if match.group(2) is None else f"{match.group(1)}::{match.group(2)}"), ""
        return
    scopes: list[str] = []

    def visit(node: ast.AST) -> Iterator[tuple[str, str]]:
        named = isinstance(node, (ast.ClassDef, ast.FunctionDef))
        if named:
            scopes.append(node.name)
        if isinstance(node, ast.Attribute):
            chain = _attribute_chain(node)
            kind = _torch_kind(chain)
            if kind:
                yield kind, ".".join(scopes)
                if named:
                    scopes.pop()
                return  # the chain's own parts are not separate references
        elif isinstance(node, ast.Name) and node.id in ("rpc_async", "rpc_sync", "rpc_remote"):
            yield f"prim::{node.id}", ".".join(scopes)
        for child in ast.iter_child_nodes(node):
            yield from visit(child)
        if named:
            scopes.pop()

    yield from visit(tree)


def _attribute_chain(node: ast.Attribute) -> list[str]:
    chain: list[str] = []
    current: ast.AST = node
    while isinstance(current, ast.Attribute):
        chain.append(current.attr)
        current = current.value
    if isinstance(current, ast.Name):
        chain.append(current.id)
    return chain[::-1]


def _torch_kind(chain: list[str]) -> str | None:
    """The op kind an attribute chain of serialized code names: torch.X -> aten::X, ops.ns.X -> ns::X."""
    if chain[:2] == ["torch", "ops"]:
        chain = chain[1:]
    if len(chain) == 3 and chain[0] == "ops":
        return f"{chain[1]}::{chain[2]}"
    if len(chain) == 2 and chain[0] == "torch":
        return f"aten::{chain[1]}"
    return None


def check_torchscript_module(module: Any, label: str) -> None:
    """Walk every method of every submodule of a loaded ScriptModule; refuse a node that is not allowed."""
    for owner, method, graph in _torch_graphs(module):
        for node in _torch_nodes(graph):
            kind = node.kind()
            problem = _torch_op_problem(kind)
            if problem:
                raise refusal(label, kind, f"{owner}.{method}{_torch_source_line(node)}", problem)


def _torch_graphs(module: Any) -> Iterator[tuple[str, str, Any]]:
    seen: set[int] = set()
    for name, sub in module.named_modules():
        c = getattr(sub, "_c", None)
        if c is None or id(c) in seen:
            continue
        seen.add(id(c))
        owner = getattr(sub, "original_name", type(sub).__name__) + (f" ({name})" if name else "")
        for method in c._method_names():  # noqa: SLF001  the only list of a ScriptModule's methods
            yield owner, method, c._get_method(method).inlined_graph  # noqa: SLF001


def _torch_nodes(graph: Any) -> Iterator[Any]:
    """Every node of a graph, inside prim::If / prim::Loop blocks and subgraph attributes too."""
    stack = [graph.nodes()]
    while stack:
        for node in stack.pop():
            yield node
            stack.extend(block.nodes() for block in node.blocks())
            if node.hasAttribute("Subgraph"):
                stack.append(node.g("Subgraph").nodes())


def _torch_source_line(node: Any) -> str:
    try:
        lines = node.sourceRange().strip().splitlines()
    except Exception:  # noqa: BLE001  some nodes carry no source range
        return ""
    return f" ({lines[0].strip()})" if lines and lines[0].strip().startswith("File") else ""


# ---------------------------------------------------------------------------------------------
# TensorFlow

# Ops that move data, hold state or steer control flow without touching anything outside the
# process. tf2onnx has no handler for them because freezing, grappler or its rewriters remove them.
TF_PLUMBING = frozenset({
    "NoOp", "Identity", "IdentityN", "Placeholder", "PlaceholderV2", "PlaceholderWithDefault", "Const",
    "VarHandleOp", "ReadVariableOp", "VariableV2", "Variable", "VarIsInitializedOp", "IsVariableInitialized",
    "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "Assign", "AssignAdd", "AssignSub",
    "DestroyResourceOp", "StatefulPartitionedCall", "PartitionedCall", "If", "StatelessIf", "While",
    "StatelessWhile", "Case", "StatelessCase", "_Arg", "_Retval", "Enter", "Exit", "Merge", "Switch",
    "NextIteration", "LoopCond", "ControlTrigger", "RefEnter", "RefExit", "RefMerge", "RefSwitch",
    "RefNextIteration", "RefIdentity", "StopGradient", "PreventGradient", "Snapshot", "CheckNumerics",
    "CheckNumericsV2", "EnsureShape", "Assert", "Print", "PrintV2", "StringFormat", "HashTableV2",
    "MutableHashTableV2", "LookupTableFindV2", "LookupTableImportV2", "LookupTableSizeV2",
    "LookupTableExportV2", "InitializeTableV2", "TensorArrayV3", "TensorArrayReadV3", "TensorArrayWriteV3",
    "TensorArrayGatherV3", "TensorArrayScatterV3", "TensorArraySizeV3", "TensorArrayCloseV3",
    "TensorArrayConcatV3", "TensorArraySplitV3", "TensorListReserve", "TensorListFromTensor",
    "TensorListGetItem", "TensorListSetItem", "TensorListStack", "TensorListLength", "TensorListResize",
    "TensorListElementShape", "TensorListPushBack", "TensorListPopBack", "EmptyTensorList",
    "FakeQuantWithMinMaxArgs", "FakeQuantWithMinMaxVars", "FakeQuantWithMinMaxVarsPerChannel",
})
# Ops that read or write files, run Python, or talk to other processes; refused wherever they are.
TF_DENIED_OPS = frozenset({
    "WriteFile", "ReadFile", "MatchingFiles", "ImmutableConst", "Save", "SaveV2", "SaveSlices",
    "MergeV2Checkpoints", "Restore", "RestoreV2", "RestoreSlice", "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "DecodeProtoV2", "EncodeProto", "LoadAndRemapMatrix", "GenerateVocabRemapping",
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "Rpc", "TryRpc", "Send", "Recv", "_Send",
    "_Recv", "_HostSend", "_HostRecv", "Copy", "CopyHost", "FileSystemSetConfiguration",
})
# Families of denied ops by name: summary and event writers, debugger taps (they write to
# file:// or grpc:// URLs), readers and datasets (files, sockets, SQL), collectives (network).
TF_DENIED_PATTERN = re.compile(
    r"Summary|EventFile|^Debug|Reader(V2)?$|^ReaderRead|Dataset|^Collective|^Nccl|Checkpoint|Iterator.*"
    r"(Save|Restore)|^Write|Rpc")
# Expected where a SavedModel saves or restores its own variables (never on the computation's path).
TF_SAVE_OPS = frozenset({"SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints", "RestoreV2", "Restore",
                         "RestoreSlice"})
TF_RESTORE_OPS = frozenset({"RestoreV2", "Restore", "RestoreSlice", "InitializeTableFromTextFile",
                            "InitializeTableFromTextFileV2"})


def _tf_converted_ops() -> frozenset[str]:
    """The TensorFlow ops tf2onnx has a handler for (its registry, filled when its op modules load)."""
    import tf2onnx.onnx_opset  # noqa: F401  registers the handlers
    from tf2onnx.handler import tf_op

    ops: set[str] = set()
    for domain, versions in tf_op.get_opsets().items():
        if domain in ("", "ai.onnx.contrib", "com.microsoft"):
            for handlers in versions:
                ops.update(handlers)
    return frozenset(ops)


def _tf_denied(node: Any) -> str | None:
    """Why a NodeDef is refused anywhere in a model, or None."""
    op = node.op
    if op == "PrintV2":
        stream = node.attr["output_stream"].s.decode("utf-8", "replace") if "output_stream" in node.attr else ""
        if stream and stream not in ("stderr", "stdout", "log(info)", "log(warning)", "log(error)"):
            return f"prints to {stream!r}, not to a standard stream"
        return None
    if op in ("PyFunc", "PyFuncStateless", "EagerPyFunc"):
        return "calls Python code"
    if op in TF_DENIED_OPS or TF_DENIED_PATTERN.search(op):
        return "reads or writes files, or talks to another process"
    return None


class TensorFlowPolicy:
    """The allow-list and deny-list, applied to GraphDefs.

    Allowed in the computation: ops tf2onnx converts, `TF_PLUMBING`, and any op TensorFlow itself
    registers as stateless (a pure function of its inputs, by TensorFlow's contract; tf2onnx then
    says whether it has an ONNX mapping). Denied everywhere: `_tf_denied` (which names the few
    stateless ops that read files anyway).
    """

    def __init__(self, label: str):
        from tensorflow.python.framework import op_def_registry

        self.label = label
        self.allowed = _tf_converted_ops() | TF_PLUMBING
        self.registry = op_def_registry

    def _unknown(self, op: str) -> str | None:
        if op in self.allowed:
            return None
        definition = self.registry.get(op)
        if definition is None:
            return "not a TensorFlow op (a custom op library's, which can run any code)"
        if definition.is_stateful:
            return "a stateful op that is neither one tf2onnx converts nor graph plumbing, so zoo cannot tell what it does"
        return None

    def computation(self, nodes: Iterable[Any], where: str) -> None:
        """Nodes the conversion runs: only allowed ops."""
        for node in nodes:
            problem = _tf_denied(node) or self._unknown(node.op)
            if problem:
                raise refusal(self.label, f"op {node.op}", _where(where, node), problem)

    def elsewhere(self, nodes: Iterable[Any], where: str, expected: frozenset[str] = frozenset()) -> None:
        """Nodes a model holds off the computation's path: no denied op, except `expected` ones."""
        for node in nodes:
            if node.op in expected:
                continue
            problem = _tf_denied(node)
            if problem:
                raise refusal(self.label, f"op {node.op}", _where(where, node), problem)


def _where(where: str, node: Any) -> str:
    return f"{where} node {node.name!r}" if node.name else where


def _function_refs(node: Any) -> Iterator[str]:
    """Names of the library functions a NodeDef calls (f, then_branch, body, branches...)."""
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        elif value.HasField("list"):
            yield from (f.name for f in value.list.func)


def _ancestors(nodes: dict[str, Any], roots: Iterable[str]) -> set[str]:
    """Names of `roots` and every node they depend on (data and control inputs)."""
    found: set[str] = set()
    stack = [r.lstrip("^").split(":")[0] for r in roots]
    while stack:
        name = stack.pop()
        if name in found or name not in nodes:
            continue
        found.add(name)
        stack.extend(i.lstrip("^").split(":")[0] for i in nodes[name].input)
    return found


def _function_closure(library: dict[str, Any], start: Iterable[str]) -> set[str]:
    """Names of the functions in `start` and every function they call, transitively."""
    found: set[str] = set()
    stack = list(start)
    while stack:
        name = stack.pop()
        if name in found or name not in library:
            continue
        found.add(name)
        for node in library[name].node_def:
            stack.extend(_function_refs(node))
    return found


def check_graph_def(graph_def: Any, label: str, outputs: Iterable[str] | None = None,
                    policy: TensorFlowPolicy | None = None) -> None:
    """A frozen GraphDef or a traced function's graph: the outputs' ancestors (all nodes when None)
    and the functions they call are the computation; other nodes must hold no denied op."""
    policy = policy or TensorFlowPolicy(label)
    nodes = {n.name: n for n in graph_def.node}
    library = {f.signature.name: f for f in graph_def.library.function}
    ran = set(nodes) if outputs is None else _ancestors(nodes, outputs)
    policy.computation((nodes[n] for n in sorted(ran)), "the graph's")
    policy.elsewhere((n for name, n in nodes.items() if name not in ran), "the graph's unused")
    called = _function_closure(library, (f for n in ran for f in _function_refs(nodes[n])))
    for name in sorted(called):
        policy.computation(library[name].node_def, f"function {name!r}")
    for name in sorted(set(library) - called):
        policy.elsewhere(library[name].node_def, f"function {name!r}")


def check_saved_model(path: str | os.PathLike, tags: Iterable[str], signature: str, label: str | None = None) -> None:
    """Check the MetaGraph a conversion loads: the signature's computation, then everything else it holds."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.fspath(path)
    label = label or os.path.basename(path.rstrip("/"))
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as fh:
        proto.ParseFromString(fh.read())
    wanted = {t for t in tags if t}
    policy = TensorFlowPolicy(label)
    for meta in proto.meta_graphs:
        if set(meta.meta_info_def.tags) - {""} == wanted:
            _check_meta_graph(meta, signature, policy)


def _check_meta_graph(meta: Any, signature: str, policy: TensorFlowPolicy) -> None:
    graph = meta.graph_def
    nodes = {n.name: n for n in graph.node}
    library = {f.signature.name: f for f in graph.library.function}
    sig = meta.signature_def.get(signature)
    tensors = [t.name for t in [*sig.inputs.values(), *sig.outputs.values()]] if sig is not None else []
    ran = _ancestors(nodes, tensors)
    computed = _function_closure(library, (f for n in ran for f in _function_refs(nodes[n])))
    policy.computation((nodes[n] for n in sorted(ran)), f"signature {signature!r}")
    for name in sorted(computed):
        policy.computation(library[name].node_def, f"function {name!r} (signature {signature!r})")
    # The save path runs only when the model is saved again; the restore path reads its variables.
    saver = meta.saver_def
    save_only = _ancestors(nodes, [saver.save_tensor_name] if saver.save_tensor_name else [])
    roots = [n for n in nodes if n not in save_only]
    roots += [t.name for s in meta.signature_def.values() for t in [*s.inputs.values(), *s.outputs.values()]]
    roots += [saver.restore_op_name] if saver.restore_op_name else []
    roots += [v for c in meta.collection_def.values() for v in c.node_list.value]
    elsewhere = _ancestors(nodes, roots) - ran
    save_only -= elsewhere | ran
    policy.elsewhere((nodes[n] for n in sorted(elsewhere)), "the graph's", expected=TF_RESTORE_OPS)
    policy.elsewhere((nodes[n] for n in sorted(save_only)), "the save path's", expected=TF_SAVE_OPS)
    saving = _function_closure(library, (f for n in save_only for f in _function_refs(nodes[n])))
    # What loading may call: the object graph's functions (restore functions of saveables run then).
    loaded = _object_graph_functions(meta)
    others = _function_closure(library, [*(f for n in elsewhere for f in _function_refs(nodes[n])),
                                         *loaded, *(set(library) - saving)]) - computed
    for name in sorted(others):
        policy.elsewhere(library[name].node_def, f"function {name!r}", expected=TF_RESTORE_OPS)
    for name in sorted(saving - others - computed):
        policy.elsewhere(library[name].node_def, f"save function {name!r}", expected=TF_SAVE_OPS)


def _object_graph_functions(meta: Any) -> set[str]:
    """Library functions a TF2 SavedModel's object graph names (tf.saved_model.load revives them)."""
    names: set[str] = set()
    for node in meta.object_graph_def.nodes:
        names.update(node.function.concrete_functions)
        if node.bare_concrete_function.concrete_function_name:
            names.add(node.bare_concrete_function.concrete_function_name)
        for saveable in node.saveable_objects.values():
            names.update(n for n in (saveable.save_function, saveable.restore_function) if n)
    return names


# ---------------------------------------------------------------------------------------------
# TFLite


def check_tflite(path: str | os.PathLike, label: str | None = None) -> None:
    """Refuse Flex ops (TensorFlow ops inside a TFLite file) that are not allowed TensorFlow computations."""
    from zoo.tflite_structure import custom_ops

    path = os.fspath(path)
    label = label or os.path.basename(path)
    flex = [(code, options) for code, options in custom_ops(path) if code.startswith("Flex")]
    if not flex:
        return
    from tensorflow.core.framework import node_def_pb2
    from tf2onnx.flexbuffers import read_flexbuffer

    policy = TensorFlowPolicy(label)
    for code, options in flex:
        try:
            data = read_flexbuffer(options, decode_strings=False)
            node = node_def_pb2.NodeDef()
            node.ParseFromString(data[1])
            names = {data[0].decode("utf-8", "replace"), node.op}
        except Exception:  # noqa: BLE001  any malformed custom options
            raise refusal(label, f"Flex op {code}", "an operator", "its TensorFlow op cannot be read") from None
        for name in sorted(names):
            node.op = name
            policy.computation([node], f"Flex op {code}")


__all__ = ["TF_DENIED_OPS", "TF_PLUMBING", "TORCH_DENIED", "TORCH_NAMESPACES", "TensorFlowPolicy",
           "check_graph_def", "check_saved_model", "check_tflite", "check_torchscript_archive",
           "check_torchscript_module", "refusal"]
