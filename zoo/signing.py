"""OpenSSF Model Signing for a model's files: who must have signed, signing, verifying.

A signature is a Sigstore bundle (what the `model-signing` library and CLI write): a DSSE
envelope over an in-toto statement whose predicate lists every signed file by its path
relative to the signed folder, with its digest. zoo's models keep their files in several places
(``models/<name>/`` for fetched files, ``onnx/<name>/`` for the conversion, a user's own
folders), so signing and verifying go through a *view*: a temporary folder of symbolic links
named like the files, which the library hashes as if it were the folder the publisher signed.
A signature over a single file (its one resource named ``.``) is checked on the file itself.

Verification needs to know who must have signed (`Signer`): a public key, a certificate chain
(never the operating system's roots: any public CA would do) with an optional identity, or a
Sigstore identity and OIDC issuer. Only the library's public API is used: `signing.Config`,
`verifying.Config`, `hashing.Config`. `model-signing` is an optional dependency
(``pip install 'zoo[provenance]'``); everything else in zoo works without it.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import SignatureError
from zoo.records import DERIVED_ROLES

from zoo.records import Artifact

if TYPE_CHECKING:
    from zoo.records import Model

METHODS = ("key", "certificate", "sigstore")
EXTRA = "provenance"  # pip install 'zoo[provenance]'
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle"
_IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
_PEM_KEY = re.compile(r"-----BEGIN PUBLIC KEY-----[A-Za-z0-9+/=\s]+-----END PUBLIC KEY-----")
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")
# The Fulcio certificate extension holding the OIDC issuer (v2, then the deprecated v1).
_OIDC_ISSUER_OIDS = ("1.3.6.1.4.1.57264.1.8", "1.3.6.1.4.1.57264.1.1")


def _library():
    from zoo.errors import require

    return require("model_signing", EXTRA)


def key_fingerprint(public_key_pem: str | bytes) -> str:
    """sha256 of a public key's PEM (SubjectPublicKeyInfo): the hint model-signing puts in a bundle."""
    from cryptography.hazmat.primitives import serialization

    data = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    key = serialization.load_pem_public_key(data)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _short(digest: str | None) -> str:
    return f"sha256:{digest[:16]}" if digest else "sha256:?"


@dataclass
class Signer:
    """Who must have signed a model: its public key, its certificate chain, or its Sigstore identity.

    - ``key``: an elliptic-curve public key (PEM), the pair of the publisher's private key.
    - ``certificate``: the PEM certificates (root first or last) the signing certificate must chain
      to, and optionally the `identity` its subject must name (an e-mail, URI or DNS name in its
      SubjectAltName, or its common name).
    - ``sigstore``: keyless signing; the `identity` (e-mail or workflow URI) and OIDC `issuer` the
      Fulcio certificate must carry; `trust_config` is the JSON of a Sigstore ClientTrustConfig
      for a private instance (kept whole, so a shared catalog needs no file of the user's);
      without it, the public-good instance's trust root, fetched over TUF (so online).
    """

    method: str
    public_key: str | None = None
    certificate_chain: list[str] = field(default_factory=list)
    identity: str | None = None
    issuer: str | None = None
    trust_config: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SignatureError(f"signer method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.method == "key" and not (self.public_key and _PEM_KEY.search(self.public_key)):
            raise SignatureError("a key signer needs a PEM public key (-----BEGIN PUBLIC KEY-----...); "
                                 "export it with `openssl ec -in key.pem -pubout`")
        if self.method == "certificate" and not any(_PEM_CERT.search(c) for c in self.certificate_chain):
            raise SignatureError("a certificate signer needs the PEM certificate chain it must chain "
                                 "to (the root at least); zoo never falls back on the system's roots")
        if self.method == "sigstore" and not (self.identity and self.issuer):
            raise SignatureError("a Sigstore signer needs both an identity (e-mail or workflow URI) "
                                 "and the OIDC issuer that vouched for it")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signer:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "method" not in values:
            values["method"] = ("key" if values.get("public_key") else
                                "certificate" if values.get("certificate_chain") else "sigstore")
        if isinstance(values.get("certificate_chain"), str):
            values["certificate_chain"] = _PEM_CERT.findall(values["certificate_chain"])
        return cls(**values)

    @classmethod
    def from_files(cls, *, key: str | os.PathLike | None = None,
                   certificate_chain: str | os.PathLike | None = None, identity: str | None = None,
                   issuer: str | None = None, trust_config: str | os.PathLike | None = None) -> Signer:
        """The signer named by command-line options: a public key file, a chain file, or an identity."""
        given = [k for k, v in (("key", key), ("certificate", certificate_chain)) if v]
        if len(given) > 1:
            raise SignatureError("give one signer: a public key or a certificate chain, not both")
        if key:
            return cls("key", public_key=_read_text(key, "public key"))
        if certificate_chain:
            return cls("certificate", certificate_chain=_PEM_CERT.findall(
                _read_text(certificate_chain, "certificate chain")), identity=identity)
        if identity or issuer:
            return cls("sigstore", identity=identity, issuer=issuer,
                       trust_config=_read_text(trust_config, "Sigstore trust config") if trust_config else None)
        raise SignatureError("no signer given: name a public key, a certificate chain, or a "
                             "Sigstore identity and issuer")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, [])}

    def describe(self) -> str:
        """Who this signer is, in a few words (key fingerprint, certificate subject, identity)."""
        if self.method == "key":
            return f"key {_short(key_fingerprint(self.public_key))}"
        if self.method == "certificate":
            roots = [_subject(_certificate(pem)) for pem in self.certificate_chain]
            who = f"{self.identity} " if self.identity else ""
            return f"{who}certificate chaining to {', '.join(roots)}"
        return f"{self.identity} (via {self.issuer})"


def _read_text(path: str | os.PathLike, what: str) -> str:
    try:
        return Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SignatureError(f"cannot read the {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _certificate(pem_or_der: str | bytes):
    from cryptography import x509

    if isinstance(pem_or_der, str):
        return x509.load_pem_x509_certificate(pem_or_der.encode())
    return x509.load_der_x509_certificate(pem_or_der)


def _subject(certificate) -> str:
    from cryptography.x509.oid import NameOID

    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={names[0].value}" if names else certificate.subject.rfc4514_string() or "(no subject)"


def _identities(certificate) -> list[str]:
    """The names a certificate vouches for: SubjectAltName e-mails, URIs, DNS names, then its CN."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    found: list[str] = []
    try:
        alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName):
            found += [str(v) for v in alt.get_values_for_type(kind)]
    except x509.ExtensionNotFound:
        pass
    found += [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return found


# ---- bundles ----------------------------------------------------------------------------------

@dataclass
class Bundle:
    """What a signature file says before anything is verified: who signed (claimed) and what."""

    path: Path
    sha256: str
    method: str  # "key", "certificate" or "sigstore" (a certificate with a transparency log entry)
    key_hint: str | None  # key bundles: sha256 of the signer's public key PEM
    certificates: list[bytes]  # DER, the signing certificate first
    statement: dict[str, Any]
    resources: dict[str, str]  # file (or shard) name -> "algo:hex"
    serialization: dict[str, Any]

    @property
    def paths(self) -> set[str]:
        """The files the signature covers (shards "path:start:end" folded to their path)."""
        if self.serialization.get("method") == "shards":
            return {name.rsplit(":", 2)[0] for name in self.resources}
        return set(self.resources)

    def claimed_signer(self) -> str:
        """Who the bundle says signed it (unverified until `verify_files` says so)."""
        if self.certificates:
            leaf = _certificate(self.certificates[0])
            names = _identities(leaf)
            issuer = _subject_of_issuer(leaf)
            who = names[0] if names else _subject(leaf)
            return f"{who} (certificate issued by {issuer})"
        return f"key {_short(self.key_hint)}"

    @classmethod
    def read(cls, path: str | os.PathLike) -> Bundle:
        """Parse a signature file; SignatureError says what is wrong with it."""
        path = Path(path)
        try:
            raw = path.read_bytes()
            data = json.loads(raw)
            material = data["verificationMaterial"]
            envelope = data["dsseEnvelope"]
            if envelope.get("payloadType") != _IN_TOTO_PAYLOAD:
                raise ValueError(f"its payload is {envelope.get('payloadType')!r}, not an in-toto statement")
            statement = json.loads(base64.b64decode(envelope["payload"]))
            predicate = statement["predicate"]
            resources = {r["name"]: f"{r['algorithm']}:{r['digest']}" for r in predicate["resources"]}
            serialization = dict(predicate["serialization"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else f"{exc.__class__.__name__}: {exc}"
            raise SignatureError(f"{path} is not an OpenSSF model signature (a Sigstore bundle over an "
                                 f"in-toto statement): {detail}") from None
        if not str(data.get("mediaType", "")).startswith(BUNDLE_MEDIA_TYPE):
            raise SignatureError(f"{path} has media type {data.get('mediaType')!r}; expected a Sigstore "
                                 "bundle (application/vnd.dev.sigstore.bundle...)")
        chain = material.get("x509CertificateChain", {}).get("certificates", [])
        single = material.get("certificate")
        certificates = [base64.b64decode(c["rawBytes"]) for c in chain]
        if single:
            certificates = [base64.b64decode(single["rawBytes"])]
        method = ("sigstore" if material.get("tlogEntries") or single
                  else "certificate" if certificates else "key")
        hint = (material.get("publicKey") or {}).get("hint")
        return cls(path, hashlib.sha256(raw).hexdigest(), method, hint, certificates, statement,
                   resources, serialization)


def _subject_of_issuer(certificate) -> str:
    from cryptography.x509.oid import NameOID

    names = certificate.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={names[0].value}" if names else certificate.issuer.rfc4514_string()


# ---- views: the model's files as one folder ---------------------------------------------------

def view_names(files: Mapping[str, Path]) -> set[str]:
    """The relative names a folder made of `files` holds (a folder contributes its files)."""
    names: set[str] = set()
    for name, path in files.items():
        if Path(path).is_dir():
            names |= {f"{name}/{p.relative_to(path).as_posix()}" for p in Path(path).rglob("*")
                      if p.is_file()}
        else:
            names.add(name)
    return names


def _folder_names(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _matching_view(files: Mapping[str, Path], signed: set[str]) -> str | None:
    """Which view of `files` the signed names describe: "file", "folder", "links", or None."""
    paths = list(files.values())
    if signed == {"."}:
        return "file" if len(paths) == 1 and Path(paths[0]).is_file() else None
    if len(paths) == 1 and Path(paths[0]).is_dir() and _folder_names(Path(paths[0])) == signed:
        return "folder"
    return "links" if view_names(files) == signed else None


@contextlib.contextmanager
def _view(files: Mapping[str, Path], kind: str, label: str) -> Iterator[Path]:
    """A path the library can hash as the signed model: the file, the folder, or a folder of links."""
    if kind in ("file", "folder"):
        yield Path(next(iter(files.values())))
        return
    with tempfile.TemporaryDirectory(prefix="zoo-view-") as tmp:
        # The library names the signed model after the folder: make it the model's name.
        root = Path(tmp) / (re.sub(r"[^\w.+=@-]", "_", label) or "model")
        root.mkdir()
        for name, path in files.items():
            path = Path(path).absolute()
            if path.is_dir():  # the library does not descend into linked folders: link each file
                for inner in sorted(p for p in path.rglob("*") if p.is_file()):
                    link = root / name / inner.relative_to(path)
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(inner)
            else:
                link = root / name  # zoo-made files sit under "zoo/" in a signed model
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path)
        yield root


def _hashing_config(serialization: Mapping[str, Any]):
    """The library's hashing configuration for a signature's serialization, links allowed."""
    hashing = _library().hashing
    method = serialization.get("method")
    algorithm = serialization.get("hash_type", "sha256")
    if method == "files":
        config = hashing.Config().use_file_serialization(hashing_algorithm=algorithm, allow_symlinks=True)
    elif method == "shards":
        config = hashing.Config().use_shard_serialization(
            hashing_algorithm=algorithm, shard_size=int(serialization["shard_size"]), allow_symlinks=True)
    else:
        raise SignatureError(f"the signature uses serialization {method!r}, which model-signing "
                             "does not describe (files or shards)")
    return config.set_allow_symlinks(True)


# ---- results ----------------------------------------------------------------------------------

@dataclass
class SignatureCheck:
    """The outcome of checking one signature against a model's files."""

    status: str  # "verified" or "failed"
    by: str = "publisher"  # whose signature: the "publisher" (from the index) or "zoo" (zoo sign)
    method: str | None = None
    signed_by: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # signed name -> "algo:hex"
    bundle_sha256: str | None = None
    checked_at: float = field(default_factory=time.time)
    error: str | None = None
    signer_id: str | None = None  # `signer_id` of the signer it was checked against

    @property
    def verified(self) -> bool:
        return self.status == "verified"

    def summary(self) -> str:
        """One line: "signed by key sha256:..., verified" or "signature FAILED: why"."""
        if self.verified:
            return f"signed by {self.signed_by}, verified"
        return f"signature FAILED: {self.error}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignatureCheck:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _differences(bundle: Bundle, files: Mapping[str, Path], kind: str) -> list[str]:
    """Which signed files changed, by their sha256 (only for sha256 file signatures)."""
    from zoo.hashes import file_hash

    if bundle.serialization.get("method") != "files" or bundle.serialization.get("hash_type") != "sha256":
        return []
    if kind == "file":
        targets = {".": Path(next(iter(files.values())))}
    elif kind == "folder":
        folder = Path(next(iter(files.values())))
        targets = {name: folder / name for name in bundle.resources}
    else:
        targets = {}
        for name, path in files.items():
            if Path(path).is_dir():
                targets.update({f"{name}/{p.relative_to(path).as_posix()}": p
                                for p in Path(path).rglob("*") if p.is_file()})
            else:
                targets[name] = Path(path)
    changed = []
    for name, signed in sorted(bundle.resources.items()):
        actual = f"sha256:{file_hash(targets[name])}" if name in targets else None
        if actual != signed:
            shown = next(iter(files)) if name == "." else name
            changed.append(f"{shown} (signed {signed[:23]}..., now {actual[:23] if actual else 'missing'}...)")
    return changed


def verify_files(files: Mapping[str, str | os.PathLike], bundle_path: str | os.PathLike, signer: Signer,
                 *, label: str = "model", by: str = "publisher") -> SignatureCheck:
    """Check that `bundle_path` signs exactly `files` (name -> path) and that `signer` made it.

    Returns a `SignatureCheck`, "failed" with the reason on one line when the signature does not
    cover these files, does not match their bytes, or was made by someone else. Hashing the
    files is the whole cost; the signature itself is one ECDSA check (`bench/bench_signing.py`).
    """
    files = {name: Path(path) for name, path in files.items()}
    try:
        bundle = Bundle.read(bundle_path)
    except SignatureError as exc:
        return SignatureCheck("failed", by, error=str(exc))
    check = SignatureCheck("failed", by, signer.method, bundle.claimed_signer(), dict(bundle.resources),
                           bundle.sha256)
    kind = _matching_view(files, bundle.paths)
    if kind is None:
        signed = ", ".join(sorted(bundle.paths)[:6]) or "nothing"
        have = ", ".join(sorted(view_names(files))[:6]) or "nothing"
        check.error = f"the signature covers {signed}, but the model's files are {have}"
        return check
    mismatch = _method_mismatch(bundle, signer)
    if mismatch:
        check.error = mismatch
        return check
    model_signing = _library()
    config = _verifying_config(model_signing, signer)
    try:
        config.set_hashing_config(_hashing_config(bundle.serialization))
        # The library prints warnings (an old bundle format) on stdout, where --json goes.
        with _view(files, kind, label) as path, contextlib.redirect_stdout(io.StringIO()):
            config.verify(path, bundle.path)
    except SignatureError as exc:
        check.error = str(exc)
        return check
    except Exception as exc:  # the library raises ValueError, cryptography and OpenSSL errors
        message = _one_line(exc)
        if message.startswith("Signature mismatch"):  # the statement verified, the bytes did not
            changed = _differences(bundle, files, kind)
            message = ("signed files changed since they were signed: " + "; ".join(changed)
                       if changed else message)
        elif exc.__class__.__name__ == "X509StoreContextError":
            roots = ", ".join(_subject(_certificate(pem)) for pem in signer.certificate_chain)
            message = (f"the signing certificate ({bundle.claimed_signer()}) does not chain to the "
                       f"required {roots} ({message})")
        elif exc.__class__.__name__ == "InvalidSignature":
            message = f"the signature was not made by {signer.describe()} (invalid ECDSA signature)"
        check.error = message
        return check
    check.status = "verified"
    check.signed_by = _verified_signer(bundle, signer)
    return check


def _method_mismatch(bundle: Bundle, signer: Signer) -> str | None:
    """Refuse early, with a clear reason, a bundle that cannot have been made by `signer`."""
    if bundle.method != signer.method:
        return (f"the signature was made with a {bundle.method} ({bundle.claimed_signer()}), but "
                f"{signer.describe()} is required")
    if signer.method == "key" and bundle.key_hint:
        expected = key_fingerprint(signer.public_key)
        if bundle.key_hint != expected:
            return (f"signed by key {_short(bundle.key_hint)}, not by the required key "
                    f"{_short(expected)}")
    if signer.method == "certificate" and signer.identity and bundle.certificates:
        names = _identities(_certificate(bundle.certificates[0]))
        if signer.identity not in names:
            return (f"signed by a certificate for {', '.join(names) or 'no name'}, not for the "
                    f"required identity {signer.identity}")
    return None


def _verifying_config(model_signing, signer: Signer):
    config = model_signing.verifying.Config()
    if signer.method == "key":
        with tempfile.TemporaryDirectory(prefix="zoo-key-") as tmp:
            key = Path(tmp) / "key.pub"
            key.write_text(signer.public_key)
            return config.use_elliptic_key_verifier(public_key=key)  # read in the constructor
    if signer.method == "certificate":
        with tempfile.TemporaryDirectory(prefix="zoo-chain-") as tmp:
            chain = Path(tmp) / "chain.pem"
            chain.write_text("\n".join(signer.certificate_chain))
            return config.use_certificate_verifier(certificate_chain=[chain])
    try:
        with tempfile.TemporaryDirectory(prefix="zoo-trust-") as tmp:
            trust = None
            if signer.trust_config:
                trust = Path(tmp) / "trust_config.json"
                trust.write_text(signer.trust_config)
            return config.use_sigstore_verifier(identity=signer.identity, oidc_issuer=signer.issuer,
                                                trust_config=trust)  # read in the constructor
    except Exception as exc:  # the public trust root is fetched over TUF
        raise SignatureError(f"cannot set up Sigstore verification ({_one_line(exc)}); offline or for "
                             "a private instance, pin its trust configuration (--signer-trust-config)") from None


def _verified_signer(bundle: Bundle, signer: Signer) -> str:
    if signer.method == "key":
        return f"key {_short(key_fingerprint(signer.public_key))}"
    if signer.method == "sigstore":
        return f"{signer.identity} (Sigstore, {signer.issuer})"
    return bundle.claimed_signer()


# ---- signing ----------------------------------------------------------------------------------

def sign_files(files: Mapping[str, str | os.PathLike], out: str | os.PathLike, *,
               key: str | os.PathLike, password: str | None = None,
               certificate: str | os.PathLike | None = None,
               chain: list[str | os.PathLike] = (), label: str = "model") -> Bundle:
    """Sign `files` (name -> path) with an elliptic-curve private key (and its certificate).

    The bundle goes to `out` atomically; it verifies with the `model-signing` CLI too, on a
    folder holding the files under these names. Returns the parsed bundle.
    """
    from zoo.cache import atomic_path

    model_signing = _library()
    files = {name: Path(path) for name, path in files.items()}
    config = model_signing.signing.Config()
    _check_chain(certificate, chain)
    try:
        if certificate:
            config.use_certificate_signer(private_key=Path(key), signing_certificate=Path(certificate),
                                          certificate_chain=[Path(c) for c in chain])
        else:
            # Typed `str` by the library, but handed to cryptography, which wants bytes.
            config.use_elliptic_key_signer(private_key=Path(key),
                                           password=password.encode() if password else None)
    except (OSError, ValueError, TypeError, AttributeError) as exc:  # an RSA key: AttributeError
        raise SignatureError(_key_problem(key, exc)) from None
    hashing = model_signing.hashing.Config().use_file_serialization(allow_symlinks=True)
    config.set_hashing_config(hashing.set_allow_symlinks(True))
    kind = "file" if list(files) == ["."] else "links"
    with _view(files, kind, label) as path, atomic_path(out) as tmp:
        config.sign(path, tmp)
    return Bundle.read(out)


def _check_chain(certificate: str | os.PathLike | None, chain: list[str | os.PathLike]) -> None:
    if certificate and not chain:
        raise SignatureError("signing with a certificate needs its chain (the issuing CA's "
                             "certificates, PEM): give it with --cert-chain")


def _key_problem(key: str | os.PathLike, exc: BaseException) -> str:
    text = _one_line(exc)
    if isinstance(exc, OSError):
        return f"cannot read the signing key {key}: {exc.strerror or text}"
    if "password" in text.lower() or "decrypt" in text.lower():
        return (f"the signing key {key} is encrypted and the password is missing or wrong; give it "
                "with --key-password or $ZOO_KEY_PASSWORD")
    return (f"the signing key {key} cannot sign ({text}); model-signing signs with an elliptic-curve "
            "key (P-256, P-384 or P-521) in PEM: `openssl ecparam -name prime256v1 -genkey -noout "
            "-out key.pem`")


# ---- a cataloged model's signatures ------------------------------------------------------------

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


def signer_id(signer: Signer) -> str:
    """A short stable id of a signer, to tell whether a recorded check used the same one."""
    return hashlib.sha256(json.dumps(signer.to_dict(), sort_keys=True).encode()).hexdigest()[:32]


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
    return next((v for v in views if _matching_view(v, signed)), views[0])


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
                f"`zoo source add {policy.source} URL --no-require-signature`")
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
        check.signer_id = signer_id(signer)
    if not check.verified and policy.require:
        raise SignatureError(
            f"{model.name}: {check.summary()}; source {policy.source!r} requires a verified "
            "signature (--require-signature), so nothing was registered")
    return check


def _reuse(previous: Mapping[str, Any] | None, signature: Artifact, signer: Signer,
           artifacts: list[Artifact]) -> SignatureCheck | None:
    """The previous check, refreshed, when it verified this very bundle for these very bytes."""
    if not previous or previous.get("status") != "verified":
        return None
    if previous.get("bundle_sha256") != signature.sha256 or previous.get("signer_id") != signer_id(signer):
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
    ``meta["by"] = "zoo"``) and the check made right after signing. `certificate` and `chain`
    sign with an X.509 certificate instead of a bare key.

    >>> zoo.sign("bvlc_alexnet", key="release.pem").summary()        # doctest: +SKIP
    'signed by key sha256:1f0c..., verified'
    """
    from zoo.cache import signatures_folder, write_atomic
    from zoo.catalog import open_catalog
    from zoo.hashes import file_sha256

    cat = open_catalog(catalog)
    model = cat.get(name)
    named = _signed_artifacts(model)
    if not named:
        raise SignatureError(f"{name} has no file on disk to sign; fetch it (`zoo fetch {name}`) or "
                             "add it first")
    folder = signatures_folder(name, cache_dir)
    files = {view: Path(a.meta.get("archive_path") or a.path) for view, a in named}
    for view, (subject, lineage) in _statement_names(model).items():
        path = folder / Path(view).name
        write_atomic(path, json.dumps(lineage.statement(subject), indent=1, sort_keys=True))
        files[view] = path
    signer = _own_signer(key, password, certificate, chain)
    bundle_path = folder / ZOO_SIGNATURE
    sign_files(files, bundle_path, key=key, password=password, certificate=certificate, chain=chain,
               label=name)
    check = verify_files(files, bundle_path, signer, label=name, by="zoo")
    check.signer_id = signer_id(signer)
    if not check.verified:  # a key and a certificate that do not belong together, for one
        raise SignatureError(f"{name}: the signature just made does not verify: {check.error}")
    artifact = Artifact(role="signature", filename=ZOO_SIGNATURE, path=str(bundle_path),
                        size=bundle_path.stat().st_size, sha256=file_sha256(bundle_path),
                        meta={"by": "zoo", "signer": signer.to_dict(), "covers": sorted(files)})
    with cat.batch():
        cat.put_artifact(name, artifact)
        cat.record_signature(name, "zoo", check.to_dict())
    return check


def _own_signer(key: str | os.PathLike, password: str | None, certificate: str | os.PathLike | None,
                chain: list[str | os.PathLike]) -> Signer:
    """The signer that verifies what `key` (and `certificate`) sign: its public key, or the chain."""
    from cryptography.hazmat.primitives import serialization

    _check_chain(certificate, chain)
    if certificate:
        pems = [_read_text(c, "certificate chain") for c in chain]
        return Signer("certificate", certificate_chain=[c for pem in pems for c in _PEM_CERT.findall(pem)])
    try:
        private = serialization.load_pem_private_key(Path(key).read_bytes(),
                                                     password.encode() if password else None)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(_key_problem(key, exc)) from None
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return Signer("key", public_key=pem.decode())


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
    was made. Each check is recorded (`zoo info` shows it). Models with no signature on disk
    are left out.
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
    check.signer_id = signer_id(signer)
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


__all__ = ["Bundle", "METHODS", "ModelSignatures", "SignatureCheck", "SignaturePolicy", "Signer",
           "sign", "verify_signatures",
           "check_publisher_signature", "key_fingerprint", "publisher_files", "sign_files",
           "signer_id", "verify_files", "view_names"]
