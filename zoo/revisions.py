"""Revisions of a model: what a revision is, its content digest, and how ``NAME@REV`` picks one.

A model keeps every revision it had: a sync or a Hub update that changes its files adds one
instead of overwriting. A revision has an id (a Hub commit, the index's ``revision``, else the
first 12 hex digits of its digest), maybe a tag (the index's ``version``, a Hub tag) and a content
digest: the sha256 of what identifies its files (role, name, and the published checksum, else the
sha256 of a local file, else the URL and size). ``NAME@REV`` names one by id, tag or a prefix of
the id or digest (at least 4 hex digits); ``NAME@latest`` is the current one.

Ground floor: records and hashing only; the catalog stores revisions, `zoo.lockfile` pins them.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from zoo.errors import UnknownRevisionError
from zoo.records import DERIVED_ROLES, Artifact

__all__ = ["DERIVED_ROLES", "Revision", "content_digest", "file_identity", "resolve", "split_ref"]

_HEX = re.compile(r"^[0-9a-f]{4,64}$")
CURRENT = ("latest", "current")


def split_ref(ref: str) -> tuple[str, str | None]:
    """``"resnet@v2"`` -> ``("resnet", "v2")``; a plain name has no revision (model names hold no ``@``)."""
    name, at, revision = ref.partition("@")
    return (name, revision or None) if at else (ref, None)


def file_identity(artifact: Artifact) -> str | None:
    """What says a file is the same one: its published checksum, a local file's sha256, else URL and size."""
    if artifact.checksum:
        return artifact.checksum.lower()
    if not artifact.urls and artifact.sha256:
        return "sha256:" + artifact.sha256
    if artifact.urls:  # the size the publisher listed, not the one a fetch measured
        listed = artifact.size if artifact.size is not None and not artifact.meta.get("size_measured") else ""
        return f"url:{artifact.urls[0]}#{listed}"
    return None


def content_digest(artifacts: Iterable[Artifact]) -> str:
    """The sha256 of what identifies a model's files (derived files left out), order-free."""
    entries = sorted([a.role, a.filename, file_identity(a)] for a in artifacts if a.role not in DERIVED_ROLES)
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


@dataclass
class Revision:
    """One revision of a model: its id, tag, digest, when it was recorded and, if not current, its files."""

    revision: str
    digest: str
    tag: str | None = None
    created_at: float | None = None
    current: bool = False
    source: str | None = None
    files: list[Artifact] = field(default_factory=list)  # empty for the current one: the model's own
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {"revision": self.revision, "digest": self.digest, "tag": self.tag,
                "created_at": self.created_at, "current": self.current, "source": self.source}
        if self.files:
            data["files"] = [a.to_dict() for a in self.files]
        if self.meta:
            data["meta"] = self.meta
        return {k: v for k, v in data.items() if v is not None}

    def label(self) -> str:
        """``3fa9c2b1d0e4 (v2, current)``."""
        notes = [n for n in (self.tag, "current" if self.current else None) if n]
        return self.revision + (f" ({', '.join(notes)})" if notes else "")


def resolve(name: str, wanted: str, revisions: list[Revision]) -> Revision:
    """The revision of `name` that `wanted` names: an id, a tag, ``latest``, or a unique hex prefix.

    Raises:
        UnknownRevisionError: nothing matches, or a prefix matches several (the message lists them).
    """
    if wanted.lower() in CURRENT:
        found = [r for r in revisions if r.current]
        if found:
            return found[0]
    exact = [r for r in revisions if r.revision == wanted]
    if exact:
        return exact[0]
    tagged = sorted((r for r in revisions if r.tag == wanted), key=lambda r: r.created_at or 0)
    if tagged:
        return tagged[-1]
    low = wanted.lower()
    if _HEX.match(low):
        found = [r for r in revisions if r.revision.lower().startswith(low) or r.digest.startswith(low)]
        if len(found) == 1:
            return found[0]
        if found:
            raise UnknownRevisionError(
                f"{name}@{wanted} is ambiguous: it starts {', '.join(r.label() for r in found)}; give more digits",
                name=name, revision=wanted, known=[r.revision for r in revisions])
    known = ", ".join(r.label() for r in revisions) or "none recorded"
    raise UnknownRevisionError(
        f"model {name} has no revision {wanted!r}; its revisions: {known}. Name one by id, tag or a "
        f"digest prefix (see `zoo info {name}`)", name=name, revision=wanted, known=[r.revision for r in revisions])
