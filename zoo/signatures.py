"""A cataloged model's signatures: the publisher's, checked on fetch, and zoo's own (`zoo sign`).

The publisher's signature comes with the index entry (role "signature"); who must have signed
it is the signer the model's source pins, else the one its index names (`SignaturePolicy`).
Fetch calls `check_publisher_signature` once a model's files are all in, and registers nothing
when the source requires a signature that is missing or does not verify. `sign` signs every
local file of a model together with a lineage statement per derived file (in-toto, see
`zoo.lineage`), so the signature attests how the ONNX or the trained head was made;
`verify_signatures` checks both kinds again. The cryptography and file views are
`zoo.signing`'s.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import SignatureError
from zoo.records import DERIVED_ROLES, Artifact, Model
from zoo.signing import Bundle, SignatureCheck, Signer, matching_view, sign_files, verify_files


@dataclass
class SignaturePolicy:
    """What fetch requires of a model's publisher signature: its source's policy and pinned signer."""

    source: str | None = None
    require: bool = False
    signer: Signer | None = None  # pinned at `zoo source add`; overrides the index's

    @classmethod
    def for_model(cls, catalog: Any, model: Model) -> SignaturePolicy:
        from zoo.errors import UnknownSourceError

        try:
            info = catalog.get_source(model.source) if model.source else None
        except UnknownSourceError:
            info = None
        if info is None:
            return cls(model.source)
        signer = Signer.from_dict(info.signer) if info.signer else None
        return cls(info.name, info.require_signature, signer)


def publisher_files(artifacts: list[Artifact]) -> list[dict[str, Path]]:
    """The ways a publisher may have signed a fetched model's files, most likely first.

    Each is name -> path: the files as the index lists them (an archive as the archive), then,
    for a model that is one unpacked archive, the archive's content.
    """
    files = [a for a in artifacts if a.role not in DERIVED_ROLES and a.path]
    listed = {a.filename: Path(a.meta.get("archive_path") or a.path) for a in files}
    views = [listed]
    if len(files) == 1 and files[0].meta.get("archive_path") and Path(files[0].path).is_dir():
        views.append({files[0].filename: Path(files[0].path)})
    return views


def _pick(views: list[dict[str, Path]], bundle_path: Path) -> dict[str, Path]:
    try:
        signed = Bundle.read(bundle_path).paths
    except SignatureError:
        return views[0]
    return next((v for v in views if matching_view(v, signed)), views[0])


def check_publisher_signature(model: Model, artifacts: list[Artifact],
                              policy: SignaturePolicy) -> SignatureCheck | None:
    """Verify the signature an index published for a fetched model; None when it published none.

    `artifacts` are the model's files as just fetched. A previous check of the same signature
    file by the same signer is reused when every signed sha256 still matches the fetched files'
    (computed in the download's own pass), so re-fetching a cached model hashes nothing twice.
    Under the source's policy (`--require-signature`) a missing or failing signature raises
    SignatureError; otherwise the failed check is returned to be recorded.
    """
    signature = next((a for a in artifacts if a.role == "signature" and a.meta.get("by") != "zoo"), None)
    if signature is None or not signature.path:
        if policy.require:
            raise SignatureError(
                f"{model.name} is unsigned (its index publishes no signature), and source "
                f"{policy.source!r} requires one (--require-signature); nothing was registered. Ask "
                f"the publisher for an OpenSSF model signature, or drop the requirement with "
                f"`zoo source add {policy.source} URL --no-require-signature`", model=model.name)
        return None
    signer = policy.signer
    if signer is None and signature.meta.get("signer"):
        signer = Signer.from_dict(signature.meta["signer"])
    if signer is None:
        check = SignatureCheck("failed", error=(
            f"nobody is named to have signed it: the index gives no public key, certificate chain "
            f"or identity, and source {policy.source!r} pins none (zoo source add --signer-key ...)"))
    else:
        views = publisher_files(artifacts)
        files = _pick(views, Path(signature.path))
        check = (_reuse(model.signature.get("publisher"), signature, signer, artifacts)
                 or verify_files(files, signature.path, signer, label=model.name))
    if not check.verified and policy.require:
        raise SignatureError(
            f"{model.name}: {check.summary()}; source {policy.source!r} requires a verified "
            "signature (--require-signature), so nothing was registered", model=model.name)
    return check


def _reuse(previous: Mapping[str, Any] | None, signature: Artifact, signer: Signer,
           artifacts: list[Artifact]) -> SignatureCheck | None:
    """The previous check, refreshed, when it verified this very bundle for these very bytes."""
    if not previous or previous.get("status") != "verified":
        return None
    if previous.get("bundle_sha256") != signature.sha256 or previous.get("signer_id") != signer.id():
        return None
    by_name = {a.filename: a.sha256 for a in artifacts if a.role not in DERIVED_ROLES}
    signed = previous.get("files") or {}
    if not signed or set(signed) != set(by_name) or any(
            signed[name] != f"sha256:{digest}" for name, digest in by_name.items()):
        return None
    check = SignatureCheck.from_dict(previous)
    check.checked_at = time.time()
    return check


# ---- zoo sign / zoo verify --signatures -------------------------------------------------------

ZOO_SIGNATURE = "zoo.sig"
ZOO_FOLDER = "zoo"  # zoo-made files (conversions, lineage statements) sit under zoo/ in the view
STATEMENT_SUFFIX = ".lineage.json"


def _zoo_signature(model: Model) -> Artifact | None:
    return next((a for a in model.artifacts if a.role == "signature" and a.meta.get("by") == "zoo"), None)


def _signed_artifacts(model: Model) -> list[tuple[str, Artifact]]:
    """(name in the signed view, artifact) for every local file `zoo sign` covers."""
    named = []
    for artifact in model.artifacts:
        if artifact.role == "signature" or not artifact.path or not os.path.exists(artifact.path):
            continue
        path = artifact.meta.get("archive_path") or artifact.path
        if not os.path.exists(path):
            continue
        name = f"{ZOO_FOLDER}/{artifact.filename}" if artifact.role in DERIVED_ROLES else artifact.filename
        named.append((name, artifact))
    return named


def _statement_names(model: Model) -> dict[str, Any]:
    """view name of a lineage statement -> the Lineage it holds, for each derived artifact."""
    from zoo.lineage import lineage_of

    statements = {}
    for name, artifact in _signed_artifacts(model):
        lineage = lineage_of(artifact)
        if lineage is not None:
            statements[f"{ZOO_FOLDER}/{artifact.filename}{STATEMENT_SUFFIX}"] = (name, lineage)
    return statements


def sign(name: str, *, key: str | os.PathLike, password: str | None = None,
         certificate: str | os.PathLike | None = None, chain: list[str | os.PathLike] = (),
         catalog: Any = None, cache_dir: str | os.PathLike | None = None) -> SignatureCheck:
    """Sign every local file of model `name` with `key`: its files, its conversion, its lineage.

    Each derived artifact (the converted ONNX, a trained model) is signed together with its
    lineage as an in-toto statement (source digests, converter and framework versions, the
    verified difference), so the signature attests how it was made. The bundle and statements
    go to ``<cache>/signatures/<name>/``; the catalog records the signature (role "signature",
    ``meta["by"] = "zoo"``) and the check made right after signing.

    Args:
        name: the cataloged model.
        key: an elliptic-curve private key (PEM file).
        password: the key's password, when it is encrypted.
        certificate: sign with this X.509 certificate of the key instead of the bare key.
        chain: the certificate's issuing CA certificates (PEM files); needed with `certificate`.
        catalog: a path, a SQLAlchemy URL or a `Catalog`.
        cache_dir: the cache folder.

    Returns:
        The check of the new signature (verified, by whom, which files).

    Raises:
        SignatureError: nothing to sign, or a key/certificate that cannot sign (says why).
        MissingDependencyError: model-signing is not installed (pip install 'zoo[provenance]').
        UnknownModelError: no model called `name`.

    >>> zoo.sign("bvlc_alexnet", key="release.pem").summary()        # doctest: +SKIP
    'signed by key sha256:1f0c..., verified'
    """
    from zoo.atomic import write_atomic
    from zoo.cache import signatures_folder
    from zoo.catalog import open_catalog
    from zoo.hashes import file_sha256

    cat = open_catalog(catalog)
    model = cat.get(name)
    named = _signed_artifacts(model)
    if not named:
        raise SignatureError(f"{name} has no file on disk to sign; fetch it (`zoo fetch {name}`) or "
                             "add it first", model=name)
    signer = Signer.for_private_key(key, password, certificate, chain)  # a bad key fails before any write
    folder = signatures_folder(name, cache_dir)
    files = {view: Path(a.meta.get("archive_path") or a.path) for view, a in named}
    for view, (subject, lineage) in _statement_names(model).items():
        path = folder / Path(view).name
        write_atomic(path, json.dumps(lineage.statement(subject), indent=1, sort_keys=True))
        files[view] = path
    bundle_path = folder / ZOO_SIGNATURE
    sign_files(files, bundle_path, key=key, password=password, certificate=certificate, chain=chain,
               label=name)
    check = verify_files(files, bundle_path, signer, label=name, by="zoo")
    if not check.verified:  # a key and a certificate that do not belong together, for one
        raise SignatureError(f"{name}: the signature just made does not verify: {check.error}", model=name)
    artifact = Artifact(role="signature", filename=ZOO_SIGNATURE, path=str(bundle_path),
                        size=bundle_path.stat().st_size, sha256=file_sha256(bundle_path),
                        meta={"by": "zoo", "signer": signer.to_dict(), "covers": sorted(files)})
    with cat.batch():
        cat.put_artifact(name, artifact)
        cat.record_signature(name, "zoo", check.to_dict())
    return check


@dataclass
class ModelSignatures:
    """`verify_signatures`' verdict on one model: each signature's check, and what it attests."""

    name: str
    checks: dict[str, SignatureCheck] = field(default_factory=dict)  # by "publisher" / "zoo"
    attested: list[str] = field(default_factory=list)  # one line per signed lineage statement

    @property
    def ok(self) -> bool:
        return all(c.verified for c in self.checks.values())

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.name, "ok": self.ok, "attested": self.attested,
                "checks": {by: c.to_dict() for by, c in self.checks.items()}}


def verify_signatures(names: str | list[str] | None = None, *, signer: Signer | None = None,
                      catalog: Any = None) -> list[ModelSignatures]:
    """Check every signature of the named models (default: every signed model) against their files.

    A publisher's signature is checked against the signer its source pins, else the one its
    index names; zoo's own against `signer` when given, else the key or chain recorded when it
    was made. Each check is recorded (`zoo info` shows it).

    Args:
        names: a model name, several, or None for every model.
        signer: who must have made zoo's own signatures (default: the signer recorded with them).
        catalog: a path, a SQLAlchemy URL or a `Catalog`.

    Returns:
        One verdict per signed model (models with no signature on disk are left out): each
        signature's check and one line per lineage statement it attests.

    Raises:
        MissingDependencyError: model-signing is not installed (pip install 'zoo[provenance]').
        UnknownModelError: a name is not in the catalog.
    """
    from zoo.catalog import open_catalog

    cat = open_catalog(catalog)
    if names is None:
        names = cat.names()
    elif isinstance(names, str):
        names = [names]
    verdicts = []
    for name in names:
        model = cat.get(name)
        verdict = ModelSignatures(name)
        published = next((a for a in model.artifacts if a.role == "signature"
                          and a.meta.get("by") != "zoo" and a.path), None)
        if published is not None:
            policy = SignaturePolicy.for_model(cat, model)
            policy.require = False  # report, never refuse: the files are already registered
            model.signature.pop("publisher", None)  # a fresh check, no reuse
            verdict.checks["publisher"] = check_publisher_signature(model, model.artifacts, policy)
        own = _zoo_signature(model)
        if own is not None:
            verdict.checks["zoo"], verdict.attested = _check_own(model, own, signer)
        if not verdict.checks:
            continue
        for by, check in verdict.checks.items():
            cat.record_signature(name, by, check.to_dict())
        verdicts.append(verdict)
    return verdicts


def _check_own(model: Model, own: Artifact, override: Signer | None) -> tuple[SignatureCheck, list[str]]:
    signer = override or Signer.from_dict(own.meta["signer"])
    folder = Path(own.path).parent
    files = {view: Path(a.meta.get("archive_path") or a.path) for view, a in _signed_artifacts(model)}
    statements = _statement_names(model)
    for view in statements:
        files[view] = folder / Path(view).name
    missing = [v for v in files if not files[v].exists()]
    if missing:
        return SignatureCheck("failed", "zoo", signer.method, error=(
            f"{', '.join(missing)} no longer on disk; sign again with `zoo sign {model.name}`")), []
    check = verify_files(files, own.path, signer, label=model.name, by="zoo")
    attested = []
    if check.verified:
        for view, (subject, _lineage) in statements.items():
            signed = json.loads(files[view].read_text())["predicate"]
            attested.append(_attests(subject, signed))
    return check, attested


def _attests(subject: str, predicate: Mapping[str, Any]) -> str:
    """One line saying what a signed lineage statement vouches for."""
    parents = ", ".join(f"{p.get('name') or p.get('role') or p.get('kind')} sha256:{(p.get('sha256') or '?')[:12]}"
                        for p in predicate.get("parents", []))
    figures = predicate.get("figures") or {}
    tools = predicate.get("tools") or {}
    how = predicate.get("settings", {}).get("converter") or predicate.get("kind")
    said = f"{subject}: {predicate.get('kind')} from {parents or 'nothing recorded'}"
    if predicate.get("kind") == "conversion":
        said += (f" by {how} ({', '.join(f'{k} {v}' for k, v in tools.items() if k not in ('python',))})"
                 f"; verified={figures.get('verified')}, max relative difference {figures.get('max_rel')}")
    elif figures:
        said += "; " + ", ".join(f"{k} {v}" for k, v in figures.items() if not isinstance(v, (dict, list)))
    return said


__all__ = ["ModelSignatures", "SignaturePolicy", "check_publisher_signature", "publisher_files", "sign",
           "verify_signatures"]
