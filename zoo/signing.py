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
from typing import Any

from zoo.errors import SignatureError

METHODS = ("key", "certificate", "sigstore")
EXTRA = "provenance"  # pip install 'zoo[provenance]'
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle"
_IN_TOTO_PAYLOAD = "application/vnd.in-toto+json"
_PEM_KEY = re.compile(r"-----BEGIN PUBLIC KEY-----[A-Za-z0-9+/=\s]+-----END PUBLIC KEY-----")
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----")


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
        if self.method == "key":
            if not (self.public_key and _PEM_KEY.search(self.public_key)):
                raise SignatureError("a key signer needs a PEM public key (-----BEGIN PUBLIC KEY-----...); "
                                     "export it with `openssl ec -in key.pem -pubout`")
            _check_public_key(self.public_key)
        if self.method == "certificate":
            if not any(_PEM_CERT.search(c) for c in self.certificate_chain):
                raise SignatureError("a certificate signer needs the PEM certificate chain it must chain "
                                     "to (the root at least); zoo never falls back on the system's roots")
            for pem in self.certificate_chain:
                try:
                    _certificate(pem)
                except ValueError as exc:
                    raise SignatureError(f"a certificate of the signer's chain cannot be read ({exc})") from None
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

    @classmethod
    def for_private_key(cls, key: str | os.PathLike, password: str | None = None,
                        certificate: str | os.PathLike | None = None,
                        chain: list[str | os.PathLike] = ()) -> Signer:
        """The signer that verifies what `key` (with its `certificate`) signs: its public key, or the chain."""
        from cryptography.hazmat.primitives import serialization

        _check_chain(certificate, chain)
        if certificate:
            pems = [_read_text(c, "certificate chain") for c in chain]
            return cls("certificate", certificate_chain=[c for pem in pems for c in _PEM_CERT.findall(pem)])
        try:
            private = serialization.load_pem_private_key(Path(key).read_bytes(),
                                                         password.encode() if password else None)
        except (OSError, ValueError, TypeError) as exc:
            raise SignatureError(_key_problem(key, exc)) from None
        pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls("key", public_key=pem.decode())

    def id(self) -> str:
        """A short stable id, to tell whether a recorded check used this same signer."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:32]

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


def _check_public_key(pem: str) -> None:
    """A readable elliptic-curve public key, the only kind model-signing verifies."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"the signer's public key cannot be read ({exc}); give the PEM that "
                             "`openssl ec -in key.pem -pubout` prints") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"the signer's public key is not an elliptic-curve key ({type(key).__name__}); "
                             "OpenSSF model signatures are made with P-256, P-384 or P-521 keys")


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


def matching_view(files: Mapping[str, Path], signed: set[str]) -> str | None:
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
    signer_id: str | None = None  # `Signer.id()` of the signer it was checked against

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
                           bundle.sha256, signer_id=signer.id())
    kind = matching_view(files, bundle.paths)
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
    from zoo.atomic import atomic_path

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


__all__ = ["Bundle", "EXTRA", "METHODS", "SignatureCheck", "Signer", "key_fingerprint", "matching_view",
           "sign_files", "verify_files", "view_names"]
