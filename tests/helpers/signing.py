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
