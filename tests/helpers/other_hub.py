"""A second hub for the tests (``kg://OWNER/MODEL``), to show a hub is one module named in
`zoo.hubs.SCHEMES`: a catalog of models kept in `MODELS`, their files served by a `FaultServer`.

It has what `zoo.hubs` asks of a hub module (see DEVELOPERS.md, "Adding a hub") and nothing else:
Kaggle Models through kagglehub would be the same shape.
"""
from __future__ import annotations

import hashlib
from typing import Any

from zoo.errors import HubError
from zoo.records import Artifact, Model

SCHEME = "kg"
DEFAULT_LIBRARIES = ("onnx",)
# "OWNER/MODEL" -> {"version": "3", "files": {"model.onnx": URL}, "bodies": {"model.onnx": bytes}, "downloads": n}
MODELS: dict[str, dict[str, Any]] = {}


def offline() -> bool:
    return False


def _name(repo: str) -> str:
    return repo.replace("/", "--") + ".kg"


def search(query, *, author=None, libraries=DEFAULT_LIBRARIES, limit=20, source=SCHEME) -> list[Model]:
    found = [(repo, facts) for repo, facts in MODELS.items() if (query or "") in repo
             and (author is None or repo.startswith(author + "/"))]
    found.sort(key=lambda item: -item[1].get("downloads", 0))
    return [Model(name=_name(repo), framework="onnx", source=source, task="image-classification",
                  meta={"hub": {"name": SCHEME, "repo": repo, "stub": True, "downloads": facts.get("downloads")}})
            for repo, facts in found[:limit or None]]


def resolve(repo, *, revision=None, path=None, name=None, source=SCHEME) -> Model:
    facts = MODELS.get(repo)
    if facts is None:
        raise HubError(f"kg://{repo} is not on the hub", status=404)
    version = revision or facts["version"]
    artifacts = [Artifact(role="model", filename=file, urls=[url], size=len(facts["bodies"][file]),
                          checksum="sha256:" + hashlib.sha256(facts["bodies"][file]).hexdigest())
                 for file, url in facts["files"].items()]
    return Model(name=name or _name(repo), framework="onnx", format="onnx", source=source, artifacts=artifacts,
                 revision=f"v{version}", meta={"hub": {"name": SCHEME, "repo": repo, "commit": f"v{version}"}})


class Origin:
    def __init__(self, model: Model) -> None:
        self.hub = model.meta["hub"]
        self.stub = bool(self.hub.get("stub"))

    def offline(self) -> bool:
        return False

    def ready(self, cat, model: Model) -> Model:
        if not self.stub:
            return model
        cat.add_model(resolve(self.hub["repo"], name=model.name, source=model.source), replace=True)
        self.stub = False
        return cat.get(model.name)

    def session(self):
        return None  # zoo's own

    def token(self) -> str:
        return ""

    def token_hosts(self) -> set[str]:
        return set()

    def headers(self) -> dict[str, str]:
        return {"X-Hub": "kg"}

    def locate(self, artifact: Artifact) -> list[str]:
        return list(artifact.urls)

    def recognise(self, cat, model: Model) -> Model:
        return model
