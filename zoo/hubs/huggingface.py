"""The Hugging Face Hub as a zoo (``hf://OWNER/REPO[@REV][/PATH]``), through huggingface_hub.

Search and model info go through `huggingface_hub.HfApi` (its HTTP session, ``HF_ENDPOINT``,
``HF_TOKEN``); each file's metadata through `huggingface_hub.get_hf_file_metadata`, which reads
``X-Repo-Commit``, ``X-Linked-Etag`` (an LFS file's sha256), ``X-Linked-Size`` and the ``Location``
an LFS file is served from (a second host, which never sees the token). A model is pinned to the
commit it was added at: its file URLs name that commit.

The bytes come through zoo's transport on huggingface_hub's own session: resumable (Range and
If-Range), locked per file, retried with backoff, and hashed as they arrive, then checked against
the LFS sha256 (or a small file's git blob id) before the file joins the content-addressed store.
`hf_hub_download` checks no hash, so checking its file would take a second read of every byte.
``HF_HUB_OFFLINE`` works as ``--offline``: files already fetched are used, nothing is asked.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar
from urllib.parse import urlsplit

from zoo.errors import HubError, ModelFormatError, OfflineError, require
from zoo.records import Artifact, InputSpec, Model, file_name_parts

if TYPE_CHECKING:
    import requests

__all__ = ["DEFAULT_LIBRARIES", "Origin", "catalog_name", "client", "endpoint", "offline", "resolve", "search"]

SCHEME = "hf"
DEFAULT_ENDPOINT = "https://huggingface.co"
# The Hub's library tags whose models zoo converts: searched when no --library is given.
DEFAULT_LIBRARIES = ("onnx", "keras", "tflite", "tf")
# A Hub library -> zoo's framework (a search result of another library is shown, not stored).
LIBRARIES = {"onnx": "onnx", "keras": "keras", "tf-keras": "keras", "tflite": "tflite", "tf": "tensorflow",
             "tensorflow": "tensorflow", "transformers": "pytorch", "timm": "pytorch", "pytorch": "pytorch",
             "torchscript": "pytorch", "caffe": "caffe"}
# File suffix -> (framework, format) zoo converts; confirmed from the content once fetched.
CONVERTIBLE = {".onnx": ("onnx", "onnx"), ".tflite": ("tflite", "tflite"), ".keras": ("keras", "keras"),
               ".h5": ("keras", "h5"), ".hdf5": ("keras", "h5"), ".pt": ("pytorch", "torchscript"),
               ".pth": ("pytorch", "torchscript"), ".ptl": ("pytorch", "torchscript"),
               ".caffemodel": ("caffe", "caffe"), ".pb": ("tensorflow", "frozen_graph")}
# Files with those suffixes that are not whole models zoo can read (a library's own weights layout).
NOT_MODELS = ("tf_model.h5", "saved_model.pb", "keras_metadata.pb", "fingerprint.pb")
# A TensorFlow SavedModel is a folder: saved_model.pb, and these beside it (keras adds keras_metadata.pb).
SAVED_MODEL = "saved_model.pb"
SAVED_MODEL_FOLDERS = ("variables/", "assets/", "assets.extra/")
SAVED_MODEL_FILES = ("fingerprint.pb", "keras_metadata.pb")
_LESSER = re.compile(r"quant|int8|uint8|int4|q4|q8|fp16|bnb|bf16", re.I)  # variants picked after the plain one
_SMALL_FILE = 1 << 20  # the card and preprocessing config are read whole, up to 1 MiB
_SUMMARY = 300  # characters of the card's first paragraph kept as the description

T = TypeVar("T")


def _hub():
    hub = require("huggingface_hub", "hub")
    # `hub.utils` (sessions, headers, errors) is a lazy attribute until its module is imported: a
    # fresh `zoo fetch` reaches it before anything has imported HfApi.
    require("huggingface_hub.utils", "hub")
    return hub


def endpoint() -> str:
    """The Hub's URL: ``$HF_ENDPOINT`` (read now, not when huggingface_hub was imported), else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    """True when ``$HF_HUB_OFFLINE`` (or ``$TRANSFORMERS_OFFLINE``) says never to ask the Hub."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def catalog_name(repo: str, path: str | None = None) -> str:
    """``onnx-community/resnet-18`` -> ``onnx-community--resnet-18`` (``--`` never occurs in a repo id,
    so the name reads back); a file picked with PATH adds its stem: ``...--resnet-18.model_fp16``."""
    name = repo.replace("/", "--")
    if path:
        stem = os.path.splitext(os.path.basename(path))[0]
        name += "." + re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._-")
    return name[:128]


def _version() -> str:
    from zoo import config

    return config.version()


def _api():
    hub = _hub()
    return hub.HfApi(endpoint=endpoint(), library_name="zoo", library_version=_version())


def client() -> Any:
    """huggingface_hub's API client (importing it: `zoo.hubs` does that before it starts a search)."""
    return _api()


# ---- errors ------------------------------------------------------------------------------------

def _call(what: str, fn: Callable[[], T], repo: str | None = None, retries: int = 3, max_wait: float = 30.0) -> T:
    """`fn()` with the Hub's refusals as one-line errors; HTTP 429 waits out a short Retry-After first."""
    hub = _hub()
    import requests

    from zoo.transport import retry_after

    utils = hub.utils
    for attempt in range(retries + 1):
        try:
            return fn()
        except utils.GatedRepoError as error:
            raise HubError(
                f"{what}: hf://{repo} is gated: accept its conditions at {endpoint()}/{repo} while logged in, "
                "then give zoo a token that may read it (HF_TOKEN, or `huggingface-cli login`)",
                status=_status(error)) from None
        except utils.RepositoryNotFoundError as error:
            raise HubError(
                f"{what}: hf://{repo} is not on the Hub at {endpoint()}, or is private (a token that may read it "
                f"goes in HF_TOKEN); look for it with `zoo search {repo.split('/')[-1]} --hub`",
                status=404) from None
        except utils.RevisionNotFoundError as error:
            raise HubError(f"{what}: hf://{repo} has no such revision ({_reason(error)}); give a branch, tag "
                           "or commit of the repository", status=404) from None
        except utils.EntryNotFoundError as error:
            raise HubError(f"{what}: hf://{repo} has no such file ({_reason(error)})", status=404) from None
        except utils.HfHubHTTPError as error:
            status = _status(error)
            if status == 429:
                response = getattr(error, "response", None)
                wait = retry_after(response.headers.get("Retry-After") if response is not None else None)
                if attempt < retries and wait is not None and wait <= max_wait:
                    time.sleep(wait)
                    continue
                shown = f"{wait:.0f} s" if wait is not None else "a while"
                raise HubError(
                    f"{what}: the Hugging Face Hub is limiting requests (HTTP 429) and asks to wait {shown}; "
                    "try again then (logged-in users, HF_TOKEN, get higher limits)",
                    status=429, retry_after=wait) from None
            if status in (401, 403):
                raise HubError(f"{what}: the Hub refused (HTTP {status}): HF_TOKEN is missing, expired or may not "
                               f"read hf://{repo}", status=status) from None
            raise HubError(f"{what}: the Hub answered HTTP {status}: {_reason(error)}; try again later",
                           status=status) from None
        except utils.OfflineModeIsEnabled:
            raise OfflineError(f"{what}: HF_HUB_OFFLINE is set, so the Hub was not asked; unset it to go online",
                               missing=[what]) from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise HubError(f"{what}: cannot reach the Hugging Face Hub at {endpoint()} ({_network(error)}); "
                           "check the network or HF_ENDPOINT; models already fetched work with --offline") from None
    raise AssertionError("unreachable")


def _status(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _reason(error: Exception) -> str:
    from zoo._redact import mask_secrets

    text = " ".join(str(error).split())
    return mask_secrets(text[:200])


def _network(error: Exception) -> str:
    text = str(error)
    for needle, said in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                         ("Name or service not known", "unknown host"), ("Failed to resolve", "unknown host"),
                         ("Network is unreachable", "no network")):
        if needle in text:
            return said
    return type(error).__name__


# ---- search ------------------------------------------------------------------------------------

def search(query: str | None, *, author: str | None = None, libraries: Sequence[str] = DEFAULT_LIBRARIES,
           limit: int = 20, source: str = SCHEME) -> list[Model]:
    """The Hub's models matching `query`, most downloaded first, as catalog entries without files.

    One request per library (the Hub ANDs its filters), sent together (the wait is one round trip,
    not one per library), merged by downloads.
    """
    from concurrent.futures import ThreadPoolExecutor

    api = _api()

    def listing(library: str | None) -> list[Any]:
        return _call(f"searching the Hub for {query or 'models'}", lambda: list(api.list_models(
            search=query or None, author=author, filter=library, sort="downloads", direction=-1, limit=limit or None)))

    wanted = list(libraries) or [None]
    if len(wanted) == 1:
        listings = [listing(wanted[0])]
    else:  # huggingface_hub keeps one HTTP session per thread
        with ThreadPoolExecutor(max_workers=min(len(wanted), 8), thread_name_prefix="zoo-hub-search") as pool:
            listings = list(pool.map(listing, wanted))
    found: dict[str, Any] = {}
    for listed in listings:
        for info in listed:
            found.setdefault(info.id, info)
    ranked = sorted(found.values(), key=lambda i: -(i.downloads or 0))
    models = [_stub(info, source) for info in ranked]
    return [m for m in models if m is not None][:limit or None]


def _license(tags: Sequence[str], card: dict[str, Any] | None = None) -> str | None:
    if card and isinstance(card.get("license"), str):
        return card["license"]
    return next((t.split(":", 1)[1] for t in tags if t.startswith("license:")), None)


def _tags(tags: Sequence[str]) -> list[str]:
    """The repo's tags worth searching by (not its region or hosting flags)."""
    return [t for t in tags if not t.startswith(("region:", "endpoints_", "deploy:"))][:50]


def _framework(library: str | None, tags: Sequence[str]) -> str | None:
    if library in LIBRARIES:
        return LIBRARIES[library]
    return next((LIBRARIES[t] for t in tags if t in LIBRARIES), None)


def _stub(info: Any, source: str) -> Model | None:
    tags = list(info.tags or [])
    framework = _framework(info.library_name, tags)
    if framework is None:
        return None
    return Model(name=catalog_name(info.id), framework=framework, task=info.pipeline_tag, license=_license(tags),
                 tags=_tags(tags), source=source, homepage=f"{endpoint()}/{info.id}",
                 meta={"hub": {"name": SCHEME, "repo": info.id, "library": info.library_name, "stub": True,
                               "downloads": info.downloads, "likes": info.likes, "gated": info.gated or False}})


# ---- a pinned model ----------------------------------------------------------------------------

def resolve(repo: str, *, revision: str | None = None, path: str | None = None, name: str | None = None,
            source: str = SCHEME) -> Model:
    """The model in hf://`repo` pinned to the commit `revision` (default: main) is at now.

    Raises:
        HubError: the repo, revision or file is not there, gated, or the Hub cannot be reached.
        ModelFormatError: no file zoo converts (the message lists the repo's files).
    """
    api = _api()
    info = _call(f"reading hf://{repo}", lambda: api.model_info(repo, revision=revision, files_metadata=True), repo)
    commit = info.sha
    files = {s.rfilename: s for s in (info.siblings or [])}
    chosen, others = _choose(repo, files, path)
    main = chosen[-1][1]
    saved_model = os.path.basename(main) == SAVED_MODEL
    framework, fmt = ("tensorflow", "saved_model") if saved_model else CONVERTIBLE[os.path.splitext(main)[1].lower()]
    card = info.card_data.to_dict() if getattr(info, "card_data", None) is not None else {}
    tags = list(info.tags or [])
    datasets = card.get("datasets")
    meta: dict[str, Any] = {"hub": {
        "name": SCHEME, "repo": repo, "ref": revision or "main", "commit": commit, "path": main,
        "library": info.library_name, "downloads": info.downloads, "gated": info.gated or False,
        **({"other_models": others} if others else {})}}
    if revision and revision != commit and revision != "main":
        meta["version"] = revision
    readme = _small_file(repo, commit, "README.md", files)
    spec = _input_spec(_small_file(repo, commit, "preprocessor_config.json", files), framework)
    if spec.shape is None:
        spec = _card_input_spec(readme, framework)
    return Model(
        name=name or catalog_name(repo, path), framework=framework, format=fmt, task=info.pipeline_tag,
        dataset=datasets[0] if isinstance(datasets, list) and datasets else None,
        description=_summary(readme), license=_license(tags, card),
        tags=_tags(tags), source=source, homepage=f"{endpoint()}/{repo}", input=spec,
        artifacts=[_artifact(repo, commit, files[p], role, filename) for role, p, filename in chosen],
        meta=meta, revision=commit)


def _artifact(repo: str, commit: str, sibling: Any, role: str, filename: str) -> Artifact:
    hub = _hub()
    lfs = sibling.lfs
    checksum = f"sha256:{lfs.sha256}" if lfs else (f"gitblob:{sibling.blob_id}" if sibling.blob_id else None)
    return Artifact(role=role, filename=filename,
                    urls=[hub.hf_hub_url(repo, sibling.rfilename, revision=commit, endpoint=endpoint())],
                    size=lfs.size if lfs else sibling.size, checksum=checksum,
                    meta={"hub_path": sibling.rfilename})


def _rank(path: str) -> tuple:
    """Plain files before quantized or half-precision variants, shallow before deep, short before long."""
    suffix = os.path.splitext(path)[1].lower()
    order = list(CONVERTIBLE).index(suffix)
    return (bool(_LESSER.search(os.path.basename(path))), order, path.count("/"), len(path), path)


def _choose(repo: str, files: dict[str, Any], path: str | None) -> tuple[list[tuple[str, str, str]], list[str]]:
    """[(role, path in the repo, filename in the cache)] of the files the model needs (its main file
    last), and the repo's other models: single files first, then SavedModel folders."""
    convertible = sorted((p for p in files if os.path.splitext(p)[1].lower() in CONVERTIBLE
                          and os.path.basename(p) not in NOT_MODELS), key=_rank)
    saved_models = sorted((os.path.dirname(p) for p in files if os.path.basename(p) == SAVED_MODEL),
                          key=lambda folder: (folder.count("/") + bool(folder), len(folder), folder))
    if path is not None:
        path = path.strip("/")
        within = [f for f in saved_models if f == path or f.startswith(path + "/")]
        if path not in files and within:
            return _saved_model(files, within[0]), _others(convertible, saved_models, within[0])
        if path not in files:
            raise HubError(f"hf://{repo} has no file {path}; its files: {_listing(sorted(files))}", status=404)
        if os.path.basename(path) == SAVED_MODEL:
            folder = os.path.dirname(path)
            return _saved_model(files, folder), _others(convertible, saved_models, folder)
        if path not in convertible:
            raise ModelFormatError(f"hf://{repo}/{path} is not a model file zoo converts (ONNX, Keras .keras/.h5, "
                                   "TFLite, TorchScript, Caffe, frozen .pb, a SavedModel folder); the repo's models: "
                                   f"{_listing(_others(convertible, saved_models)) or 'none'}")
        main = path
    elif convertible:
        main = convertible[0]
    elif saved_models:
        return _saved_model(files, saved_models[0]), _others(convertible, saved_models, saved_models[0])
    else:
        raise ModelFormatError(
            f"hf://{repo} has no file zoo converts (ONNX, Keras .keras/.h5, SavedModel, TFLite, TorchScript, Caffe); "
            f"it has: {_listing(sorted(files))}. safetensors and PyTorch pickles need the model's own code: look for "
            "an ONNX export of it (`zoo search NAME --hub --library onnx`)")
    chosen: list[tuple[str, str, str]] = []
    if main.endswith(".caffemodel"):
        folder, stem = os.path.dirname(main), os.path.splitext(os.path.basename(main))[0]
        graphs = sorted((p for p in files if p.endswith(".prototxt") and os.path.dirname(p) == folder),
                        key=lambda p: (os.path.basename(p) not in (f"{stem}.prototxt", "deploy.prototxt"), p))
        if not graphs:
            raise ModelFormatError(f"hf://{repo}: {main} has no .prototxt beside it; a Caffe model needs both")
        chosen.append(("graph", graphs[0], os.path.basename(graphs[0])))
        role = "weights"
    else:
        role = "model"
    # ONNX weights kept apart (external data: model.onnx_data, model.onnx.data) go in the same folder.
    chosen += [("other", p, os.path.basename(p)) for p in sorted(files)
               if p != main and os.path.dirname(p) == os.path.dirname(main)
               and os.path.basename(p).startswith(os.path.basename(main)) and p.endswith(("_data", ".data"))]
    chosen.append((role, main, os.path.basename(main)))
    return chosen, _others(convertible, saved_models, main)


def _saved_model(files: dict[str, Any], folder: str) -> list[tuple[str, str, str]]:
    """The files of the SavedModel in `folder` ('' is the repo's root), fetched file by file into one
    folder of the cache that is the SavedModel: saved_model.pb (the model, last), variables/, assets/."""
    prefix = f"{folder}/" if folder else ""
    parts = [("other", p, p[len(prefix):]) for p in sorted(files) if p.startswith(prefix)
             and (p[len(prefix):].startswith(SAVED_MODEL_FOLDERS) or p[len(prefix):] in SAVED_MODEL_FILES)]
    for _, path, filename in parts:
        if file_name_parts(filename) is None:  # a Hub (or a mirror) that lists "variables/../../x"
            raise HubError(f"the Hub lists {path!r} in the SavedModel {folder or './'}, which is not a path inside "
                           "it; zoo will not fetch it (is HF_ENDPOINT a Hub you trust?)")
    return [*parts, ("model", prefix + SAVED_MODEL, SAVED_MODEL)]


def _others(convertible: list[str], saved_models: list[str], chosen: str | None = None) -> list[str]:
    """The repo's models besides `chosen`: files, then SavedModel folders (as FOLDER/, the root as ./)."""
    folders = [f"{f}/" if f else "./" for f in saved_models if f != chosen]
    return [p for p in convertible if p != chosen][:20] + folders[:20]


def _listing(paths: Sequence[str], most: int = 12) -> str:
    shown = ", ".join(paths[:most])
    return shown + (f" and {len(paths) - most} more" if len(paths) > most else "")


def _small_file(repo: str, commit: str, path: str, files: dict[str, Any]) -> str | None:
    """A small text file of the repo at the commit (the card, a config), or None when it has none."""
    sibling = files.get(path)
    if sibling is None or (sibling.size or 0) > _SMALL_FILE:
        return None
    hub = _hub()
    url = hub.hf_hub_url(repo, path, revision=commit, endpoint=endpoint())
    headers = hub.utils.build_hf_headers(library_name="zoo", library_version=_version())

    def get() -> str:
        response = hub.utils.get_session().get(url, headers=headers, timeout=30)
        hub.utils.hf_raise_for_status(response)
        return response.content[:_SMALL_FILE].decode("utf-8", "replace")

    try:
        return _call(f"reading {path} of hf://{repo}", get, repo)
    except (HubError, OfflineError):
        return None  # the card and config are extras: the model is registered without them


def _summary(card: str | None) -> str | None:
    """The card's first paragraph of prose (after its YAML header, headings, badges and HTML)."""
    if not card:
        return None
    text = re.sub(r"\A---\n.*?\n---\n", "", card, flags=re.S)
    paragraph: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            if paragraph:
                break
            continue
        if stripped.startswith(("#", "<", "![", "[!", "|", "```", "-->", "<!--")) or re.match(r"^\[!\[", stripped):
            if paragraph:
                break
            continue
        paragraph.append(stripped)
    summary = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", " ".join(paragraph))  # links keep their text
    summary = re.sub(r"[*_`]{1,3}", "", summary).strip()
    if len(summary) > _SUMMARY:
        cut = summary[:_SUMMARY]
        summary = (cut[:cut.rfind(". ") + 1] if ". " in cut else cut.rsplit(" ", 1)[0] + " ...")
    return summary or None


# A model card's "Image size: 224 x 224" (timm's and many vision cards' "Model Details" list).
_CARD_SIZE = re.compile(r"image[ _-]?size\W{0,6}(\d{2,4})\s*[x×]\s*(\d{2,4})", re.I)


def _card_input_spec(card: str | None, framework: str) -> InputSpec:
    """The input size a model card states (no preprocessing config): the shape only, nothing guessed."""
    found = _CARD_SIZE.search(card or "")
    if not found:
        return InputSpec()
    height, width = int(found.group(1)), int(found.group(2))
    nhwc = framework in ("keras", "tflite", "tensorflow")
    return InputSpec(shape=[None, height, width, 3] if nhwc else [None, 3, height, width],
                     layout="NHWC" if nhwc else "NCHW", channel_order="RGB")


def _input_spec(text: str | None, framework: str) -> InputSpec:
    """How to feed the model, from a transformers image processor's preprocessor_config.json."""
    if not text:
        return InputSpec()
    try:
        config = json.loads(text)
    except ValueError:
        return InputSpec()
    if not isinstance(config, dict) or "image_mean" not in config and "size" not in config:
        return InputSpec()
    size, crop = config.get("size"), config.get("crop_size")
    height = width = resize = None
    if isinstance(size, dict) and "height" in size and "width" in size:
        height, width = int(size["height"]), int(size["width"])
        resize = [height, width]
    elif isinstance(size, dict) and "shortest_edge" in size:
        resize = int(size["shortest_edge"])
        height = width = resize
    elif isinstance(size, int):
        resize = height = width = size
    crop_hw = None
    if config.get("do_center_crop", crop is not None) and isinstance(crop, dict) and "height" in crop:
        crop_hw = [int(crop["height"]), int(crop["width"])]
        height, width = crop_hw
    elif config.get("do_center_crop") and isinstance(crop, int):
        crop_hw = [crop, crop]
        height = width = crop
    normalize = config.get("do_normalize", True)
    nhwc = framework in ("keras", "tflite", "tensorflow")
    shape = None if height is None else ([None, height, width, 3] if nhwc else [None, 3, height, width])
    return InputSpec(
        shape=shape, layout="NHWC" if nhwc else "NCHW",
        mean=[float(v) for v in config["image_mean"]] if normalize and config.get("image_mean") else None,
        std=[float(v) for v in config["image_std"]] if normalize and config.get("image_std") else None,
        scale=float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else None,
        channel_order="RGB", pixel_range=[0, 255], resize=resize if config.get("do_resize", True) else None,
        crop=crop_hw)


# ---- fetching ----------------------------------------------------------------------------------

class Origin:
    """How `zoo.fetch` gets a Hub model's files: huggingface_hub's session and token, each file's
    location from its metadata (checked against the pinned commit and the LFS sha256)."""

    def __init__(self, model: Model) -> None:
        self.hub = model.meta["hub"]
        self.repo = self.hub["repo"]
        self.stub = bool(self.hub.get("stub"))

    def offline(self) -> bool:
        return offline()

    def ready(self, cat: Any, model: Model) -> Model:
        """The model with its files: a search result is pinned (resolved) first."""
        if not self.stub:
            return model
        pinned = resolve(self.repo, name=model.name, source=model.source or SCHEME)
        cat.add_model(pinned, replace=True)
        self.hub, self.stub = pinned.meta["hub"], False
        return cat.get(model.name)

    def session(self) -> requests.Session:
        return _hub().utils.get_session()

    def token(self) -> str:
        return _hub().get_token() or ""

    def token_hosts(self) -> set[str]:
        return {urlsplit(endpoint()).hostname or ""}

    def headers(self) -> dict[str, str]:
        return dict(_hub().utils.build_hf_headers(token=False, library_name="zoo", library_version=_version()))

    def locate(self, artifact: Artifact) -> list[str]:
        """Where to download the file from: the location its metadata gives (an LFS file's second host)."""
        hub = _hub()
        url = artifact.urls[0]
        label = f"{artifact.filename} of hf://{self.repo}"
        found = _call(f"fetching {label}", lambda: hub.get_hf_file_metadata(
            url, library_name="zoo", library_version=_version()), self.repo)
        commit = self.hub.get("commit")
        if commit and found.commit_hash and found.commit_hash != commit:
            raise HubError(f"fetching {label}: the Hub served commit {found.commit_hash}, not the pinned {commit}; "
                           "is HF_ENDPOINT a mirror that rewrites history?")
        if artifact.checksum and artifact.checksum.startswith("sha256:") and found.etag \
                and found.etag != artifact.checksum.split(":", 1)[1]:
            raise HubError(f"fetching {label}: the Hub says its sha256 is {found.etag}, the pinned commit "
                           f"{commit} said {artifact.checksum.split(':', 1)[1]}")
        return [found.location or url]

    def recognise(self, cat: Any, model: Model) -> Model:
        """Confirm the fetched model file is what its name says, by its content (as `zoo add` would)."""
        from zoo.formats import detect_format

        main = model.artifact("model") or model.artifact("weights")
        if main is None or not main.path:
            return model
        try:
            info = detect_format(main.path)
        except ModelFormatError as error:
            raise ModelFormatError(f"hf://{self.repo}: {main.meta.get('hub_path', main.filename)} is not a model "
                                   f"zoo converts: {error}") from None
        if (info.framework, info.format) == (model.framework, model.format) and not info.meta:
            return model
        meta = {**model.meta, **info.meta}
        return cat.update_model(model.name, framework=info.framework, format=info.format, meta=meta)

