"""`zoo convert`: turn a cataloged model into a verified ONNX file."""
from __future__ import annotations

import time

import click

from zoo.cli._app import cache_option, catalog_option, cli, echo, emit, json_option, quiet_option


@cli.command("convert")
@click.argument("name")
@click.option("--input", "inputs", multiple=True, metavar="NAME=SHAPE[:DTYPE]",
              help="A TorchScript forward() tensor, e.g. x=1x512 or image=Nx3x224x224:float32 (N: dynamic; "
                   "dtype float32, float16, int64, int32, bool...). Repeat for several; recorded on the model.")
@click.option("--arg", "args", multiple=True, metavar="NAME=VALUE",
              help="A non-tensor forward() argument baked into the graph, e.g. sr=16000. Repeat for several.")
@click.option("--opset", type=click.IntRange(7, 23), default=None,
              help="ONNX opset [default 17; an ONNX model keeps its own unless given].")
@click.option("--nchw", is_flag=True, help="Channels-first inputs for TensorFlow models (tf2onnx inputs_as_nchw).")
@click.option("--force", is_flag=True, help="Keep the model even if its outputs differ from the source (marked unverified).")
@click.option("--trust-model-code", is_flag=True,
              help="Convert even if the model's graph uses file, process, network or custom ops (refused by "
                   "default, before anything runs). Applies to this conversion only; never recorded.")
@json_option
@catalog_option
@cache_option
@quiet_option
def convert_command(name: str, inputs: tuple[str, ...], args: tuple[str, ...], opset: int | None, nchw: bool,
                    force: bool, trust_model_code: bool, as_json: bool, catalog: str | None, cache_dir: str | None,
                    quiet: bool) -> None:
    """Convert a model to ONNX, check it against its source framework and register it.

    NAME is a catalog name, or the path of a model file not yet in the catalog (it is added
    first, as `zoo add PATH` would). Fetches the model first if needed. Converting again is
    instant when nothing changed. TensorFlow and TorchScript models are checked for file,
    process and network ops before anything runs, then converted in a sandboxed child process
    (Linux Landlock: it can write only in a scratch folder); --json says whether it was active.

    \b
    Example:
        zoo convert bvlc_alexnet
        zoo convert resnet50.keras --nchw --opset 17 --json
        zoo convert exports/vad.pt --input x=1x512 --arg sr=16000
    """
    from zoo.conversion import convert

    start = time.perf_counter()
    if not quiet and not as_json:
        echo(f"converting {name}...", err=True, one_line=True)
    artifact = convert(name, inputs=inputs, args=args, opset=opset, nchw=nchw, force=force,
                       trust_model_code=trust_model_code, catalog=catalog, cache_dir=cache_dir)
    elapsed = time.perf_counter() - start
    name = artifact.meta.get("model") or name
    if artifact.meta.get("added") and not quiet and not as_json:
        echo(f"added {name} to the catalog (source local)", err=True, one_line=True)
    data = {"name": name, **artifact.to_dict(), "seconds": round(elapsed, 3)}
    emit(data, as_json, lambda: _describe(name, artifact.meta, artifact.path, elapsed))


def _describe(name: str, meta: dict, path: str | None, elapsed: float) -> str:
    report = meta.get("report", {})
    outputs = report.get("outputs", [])
    if report.get("verified"):
        worst = max((o["max_rel"] for o in outputs), default=0.0)
        runtime = report.get("versions", {}).get("onnxruntime", "")
        check = (f"verified: onnxruntime {runtime} vs {report.get('reference')}, "
                 f"max diff {worst:.2g} x output scale")
        check += _quantized_text(report.get("quantization") or {})
    elif report.get("verified") is False:
        check = "UNVERIFIED: outputs differ beyond tolerance (kept with --force)"
    else:
        check = "not compared (no reference engine available)"
    state = "up to date" if meta.get("reused") else f"converted in {elapsed:.1f} s"
    layout = f", input layout {meta['layout']}" if meta.get("layout") else ""
    sandbox = meta.get("sandbox") or {}
    isolation = ""
    if sandbox.get("process") == "child":
        isolation = f"\n  sandbox: {sandbox.get('summary') or ('active' if sandbox.get('active') else 'none')}"
    return (f"{name}: {state} -> {path}\n"
            f"  opset {report.get('opset')}{layout}, {len(outputs)} output(s); {check}" + isolation)


def _quantized_text(quantization: dict) -> str:
    """' (dynamic-range model: largest difference 0.0089 of 0.055 allowed, 3 x its quantization noise)'."""
    outputs = quantization.get("outputs") or []
    if not outputs:
        return ""
    worst = max(outputs, key=lambda o: o["max_abs"] / o["tolerance_abs"] if o["tolerance_abs"] else 0.0)
    why = {"noise": f"{quantization.get('noise_factor', 3):g} x its quantization noise",
           "steps": f"{quantization.get('lsb_allowed')} steps of its output",
           "float": "the float tolerance"}.get(worst.get("bound"), "its quantization")
    return (f" ({quantization.get('kind') or 'quantized'} model: largest difference {worst['max_abs']:.2g} of "
            f"{worst['tolerance_abs']:.2g} allowed, {why})")
