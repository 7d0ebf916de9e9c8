"""Real signing material made in the tests: elliptic-curve keys and a small X.509 CA (no files from outside)."""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path


@dataclass
class KeyPair:
    """An EC P-256 key pair written as PEM files."""

    private: Path
    public: Path

    @property
    def public_pem(self) -> str:
        return self.public.read_text()


def make_key(folder: Path, name: str = "key", password: bytes | None = None) -> KeyPair:
    """A fresh P-256 key pair in `folder` (the private key encrypted when `password` is given)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    private = folder / f"{name}.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          encryption))
    public = folder / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private, public)


@dataclass
class CertificateSigner:
    """A signing certificate issued by a test root CA: key, certificate and the root's PEM."""

    key: Path
    certificate: Path
    root: Path
    identity: str


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(folder: Path, name: str = "Test Root CA"):
    """A self-signed root CA: (its private key, its certificate), the certificate written as PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "root.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def issue(folder: Path, ca, identity: str = "release@acme.example", name: str = "signer",
          code_signing: bool = True) -> CertificateSigner:
    """A leaf certificate for `identity` (SubjectAltName e-mail) signed by `ca`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(f"{name} {identity}"))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(identity)]), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=code_signing, content_commitment=False,
                                            key_encipherment=not code_signing, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True))
    if code_signing:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                                        critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_path = folder / f"{name}.key.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path = folder / f"{name}.cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertificateSigner(key_path, cert_path, folder / "root.pem", identity)


# ---- a locally made Sigstore (keyless) bundle ---------------------------------------------------

OIDC_ISSUER_OID = "1.3.6.1.4.1.57264.1.8"  # Fulcio's v2 issuer extension


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _statement(folder: Path) -> bytes:
    """The in-toto statement model-signing makes for `folder` (files serialization, sha256)."""
    import hashlib
    import json

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    resources = [{"name": p.relative_to(folder).as_posix(), "algorithm": "sha256",
                  "digest": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files]
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    return json.dumps({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": folder.name, "digest": {"sha256": root}}],
        "predicateType": "https://model_signing/signature/v1.0",
        "predicate": {"serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False},
                      "resources": resources},
    }).encode()


def _der_octets(data: bytes) -> bytes:
    """A DER OCTET STRING holding `data`."""
    n = len(data)
    length = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x04" + length + data


def _sct_list(log_key, log_id: bytes, issuer_public_key, tbs: bytes, when_ms: int) -> bytes:
    """An RFC 6962 SignedCertificateTimestampList with one precertificate SCT over `tbs`."""
    import hashlib
    import struct

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    issuer_key_hash = hashlib.sha256(issuer_public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
    entry = issuer_key_hash + len(tbs).to_bytes(3, "big") + tbs
    signed = struct.pack(f"!BBQH{len(entry)}sH", 0, 0, when_ms, 1, entry, 0)
    signature = log_key.sign(signed, ec.ECDSA(hashes.SHA256()))
    sct = (bytes([0]) + log_id + struct.pack("!Q", when_ms) + struct.pack("!H", 0)
           + bytes([4, 3]) + struct.pack("!H", len(signature)) + signature)
    items = struct.pack("!H", len(sct)) + sct
    return struct.pack("!H", len(items)) + items


def sigstore_bundle(folder: Path, out: Path, trust_config: Path, *, identity: str, issuer: str) -> None:
    """Sign `folder` the keyless way, entirely locally, as Sigstore's public instance would.

    A "Fulcio" CA made here issues a ten-minute certificate for `identity` (from OIDC `issuer`)
    carrying an SCT from a "CT log" key of ours; a "Rekor" key of ours signs the transparency
    log entry (a one-leaf Merkle tree, its checkpoint and inclusion promise). Writes the bundle
    to `out` and, to `trust_config`, the ClientTrustConfig that names these CA and logs, so
    sigstore-python verifies the bundle offline, every step included.
    """
    import datetime
    import hashlib
    import json

    import rfc8785
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key, ca_cert = make_ca(out.parent / "fulcio", "Local Fulcio")
    log_key = ec.generate_private_key(ec.SECP256R1())  # stands for both the Rekor and the CT log
    log_der = log_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    log_id = hashlib.sha256(log_der).digest()
    signing_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    serial = x509.random_serial_number()

    def leaf(extra: list) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(x509.Name([]))
                   .issuer_name(ca_cert.subject).public_key(signing_key.public_key()).serial_number(serial)
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(minutes=10))
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=False, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(signing_key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False)
                   .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(identity)]), critical=True)
                   .add_extension(x509.UnrecognizedExtension(  # OIDC issuer, v1 (raw) and v2 (UTF8String)
                       x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1"), issuer.encode()), critical=False)
                   .add_extension(x509.UnrecognizedExtension(
                       x509.ObjectIdentifier(OIDC_ISSUER_OID), b"\x0c" + bytes([len(issuer)]) + issuer.encode()),
                       critical=False))
        for extension in extra:
            builder = builder.add_extension(extension, critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    precert = leaf([])
    scts = _sct_list(log_key, log_id, ca_key.public_key(), precert.tbs_certificate_bytes,
                     int(now.timestamp() * 1000))
    cert = leaf([x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2"),
                                            _der_octets(scts))])
    assert cert.tbs_precertificate_bytes == precert.tbs_certificate_bytes

    payload = _statement(folder)
    payload_type = "application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(payload_type), payload_type.encode(), len(payload), payload)
    signature = signing_key.sign(pae, ec.ECDSA(hashes.SHA256()))
    envelope = {"payload": _b64(payload), "payloadType": payload_type,
                "signatures": [{"sig": _b64(signature), "keyid": ""}]}
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    body = rfc8785.dumps({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
        "envelopeHash": {"algorithm": "sha256",
                         "value": hashlib.sha256(json.dumps(envelope).encode()).hexdigest()},
        "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
        "signatures": [{"signature": _b64(signature), "verifier": _b64(cert_pem)}]}})
    root_hash = hashlib.sha256(b"\x00" + body).digest()  # a one-leaf Merkle tree
    integrated = int(now.timestamp())
    note = f"local-rekor - 1\n1\n{_b64(root_hash)}\n"
    note_signature = log_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
    checkpoint = note + "\n" + f"\u2014 local-rekor {_b64(log_id[:4] + note_signature)}\n"
    promise = log_key.sign(rfc8785.dumps({"body": _b64(body), "integratedTime": integrated,
                                          "logID": log_id.hex(), "logIndex": 0}),
                           ec.ECDSA(hashes.SHA256()))
    entry = {
        "logIndex": "0", "logId": {"keyId": _b64(log_id)},
        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
        "integratedTime": str(integrated),
        "inclusionPromise": {"signedEntryTimestamp": _b64(promise)},
        "inclusionProof": {"logIndex": "0", "rootHash": _b64(root_hash), "treeSize": "1", "hashes": [],
                           "checkpoint": {"envelope": checkpoint}},
        "canonicalizedBody": _b64(body),
    }
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"certificate": {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))},
                                 "tlogEntries": [entry]},
        "dsseEnvelope": envelope,
    }
    out.write_text(json.dumps(bundle))
    since = {"start": (now - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    log = {"baseUrl": "https://rekor.invalid", "hashAlgorithm": "SHA2_256",
           "publicKey": {"rawBytes": _b64(log_der), "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": since},
           "logId": {"keyId": _b64(log_id)}}
    trust = {
        "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
        "trustedRoot": {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log], "ctlogs": [log],
            "certificateAuthorities": [{
                "subject": {"organization": "local", "commonName": "Local Fulcio"},
                "uri": "https://fulcio.invalid",
                "certChain": {"certificates": [{"rawBytes": _b64(ca_cert.public_bytes(serialization.Encoding.DER))}]},
                "validFor": since}],
            "timestampAuthorities": []},
        "signingConfig": {"mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                          "caUrls": [], "oidcUrls": [], "rekorTlogUrls": [], "tsaUrls": [],
                          "rekorTlogConfig": {"selector": "ANY"}, "tsaConfig": {"selector": "ANY"}},
    }
    trust_config.write_text(json.dumps(trust))
