"""OpenSSF model signatures (issue 24, items 1 and 2): verified on fetch, made by `zoo sign`, checked by `zoo verify`.

Signatures are made in the tests with the `model-signing` library, as a publisher would
(keys and an X.509 CA generated here), served with the models by a real HTTP server on
127.0.0.1, and checked on both catalog backends.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.signing import issue, make_ca, make_key

import zoo
from zoo.catalog import open_catalog
from zoo.errors import IndexFormatError, MissingDependencyError, SignatureError
from zoo.index import FORMAT
from zoo.signatures import sign, verify_signatures
from zoo.signing import Signer

pytestmark = pytest.mark.usefixtures("catalog_env")

pytest.importorskip("model_signing", reason="zoo[provenance] is not installed")


def _publisher_sign(files: dict[str, bytes], folder: Path, *, key=None, cert=None, single=False) -> bytes:
    """Sign `files` the way a publisher does: lay them out in a folder, run model-signing on it."""
    import model_signing

    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    config = model_signing.signing.Config()
    if cert is not None:
        config.use_certificate_signer(private_key=cert.key, signing_certificate=cert.certificate,
                                      certificate_chain=[cert.root])
    else:
        config.use_elliptic_key_signer(private_key=key.private)
    target = folder / next(iter(files)) if single else folder
    out = folder.parent / f"{folder.name}.sig"
    config.sign(target, out)
    return out.read_bytes()


def _entry(server, name: str, files: dict[str, bytes], signature: bytes | None = None,
           signer: dict | None = None) -> dict:
    import hashlib

    roles = iter(["model", "labels", "other"])
    listed = []
    for filename, data in files.items():
        server.add(f"/{name}/{filename}", data)
        listed.append({"role": next(roles), "filename": filename, "url": server.url(f"/{name}/{filename}"),
                       "sha256": hashlib.sha256(data).hexdigest()})
    entry = {"name": name, "framework": "onnx", "files": listed}
    if signature is not None:
        server.add(f"/{name}/model.sig", signature)
        entry["signature"] = {"url": server.url(f"/{name}/model.sig"), **(signer or {})}
    return entry


def _serve_index(server, *entries: dict) -> str:
    server.add("/zoo.json", json.dumps({"format": FORMAT, "name": "acme", "models": list(entries)}).encode(),
               content_type="application/json")
    return server.url("/zoo.json")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    ca = make_ca(folder / "ca")
    return {"publisher": make_key(folder, "publisher"), "other": make_key(folder, "other"),
            "ca": ca, "cert": issue(folder / "ca", ca), "other_ca": make_ca(folder / "other-ca", "Other CA")}


@pytest.fixture
def model_bytes(light) -> dict[str, bytes]:
    return {"tiny.onnx": light["onnx"].read_bytes(), "labels.txt": b"cat\ndog\n"}


def test_a_key_signed_model_verifies_on_fetch(fault_server, keys, model_bytes, tmp_path):
    signature = _publisher_sign(model_bytes, tmp_path / "tiny", key=keys["publisher"])
    url = _serve_index(fault_server, _entry(fault_server, "tiny", model_bytes, signature,
                                            {"public_key": keys["publisher"].public_pem}))
    zoo.add_source("acme", url)
    zoo.fetch("tiny")
    model = zoo.info("tiny")
    check = model.signature["publisher"]
    assert model.signature_status == "verified" and check["status"] == "verified"
    assert check["signed_by"].startswith("key sha256:") and set(check["files"]) == set(model_bytes)
    assert model.artifact("signature").path and model.is_local
    # A second fetch finds everything cached and re-uses the check of that very bundle.
    zoo.fetch("tiny")
    again = zoo.info("tiny").signature["publisher"]
    assert again["status"] == "verified" and again["checked_at"] >= check["checked_at"]
    (verdict,) = verify_signatures("tiny")
    assert verdict.ok and verdict.checks["publisher"].verified


def test_wrong_key_is_recorded_or_refused_under_the_policy(fault_server, keys, model_bytes, tmp_path):
    signature = _publisher_sign(model_bytes, tmp_path / "tiny", key=keys["other"])
    url = _serve_index(fault_server, _entry(fault_server, "tiny", model_bytes, signature,
                                            {"public_key": keys["other"].public_pem}))
    # The user pins the publisher's real key; the index names another one.
    zoo.add_source("acme", url, signer=Signer.from_files(key=keys["publisher"].public))
    zoo.fetch("tiny")  # no policy: registered, the failure recorded
    model = zoo.info("tiny")
    assert model.is_local and model.signature_status == "failed"
    assert "not by the required key" in model.signature["publisher"]["error"]
    assert not verify_signatures("tiny")[0].ok

    zoo.remove("tiny")
    zoo.sync_sources("acme", force=True)
    zoo.add_source("acme", url, require_signature=True)  # keeps the pinned key
    (source,) = [s for s in zoo.list_sources() if s.name == "acme"]
    assert source.require_signature and source.signer["method"] == "key"
    with pytest.raises(SignatureError, match="nothing was registered"):
        zoo.fetch("tiny")
    refused = zoo.info("tiny")
    assert not any(a.path for a in refused.artifacts) and refused.signature == {}


def test_a_tampered_file_is_refused(fault_server, keys, model_bytes, tmp_path):
    """The attacker swaps the file and its checksum in the index, but cannot re-sign."""
    signature = _publisher_sign(model_bytes, tmp_path / "tiny", key=keys["publisher"])
    tampered = dict(model_bytes, **{"labels.txt": b"cat\nEVIL\n"})
    url = _serve_index(fault_server, _entry(fault_server, "tiny", tampered, signature,
                                            {"public_key": keys["publisher"].public_pem}))
    zoo.add_source("acme", url, require_signature=True)
    with pytest.raises(SignatureError) as caught:
        zoo.fetch("tiny")
    assert "labels.txt" in str(caught.value) and "changed since they were signed" in str(caught.value)
    assert not any(a.path for a in zoo.info("tiny").artifacts)


def test_missing_signature_under_the_policy(fault_server, model_bytes, zoo_cmd):
    url = _serve_index(fault_server, _entry(fault_server, "tiny", model_bytes))
    zoo.add_source("acme", url, require_signature=True)
    run = subprocess.run([*zoo_cmd, "fetch", "tiny"], capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1 and "unsigned" in run.stderr and "--require-signature" in run.stderr
    assert not zoo.info("tiny").is_local
    info = subprocess.run([*zoo_cmd, "info", "tiny"], capture_output=True, text=True)
    assert "signature:      unsigned" in info.stdout


def test_certificate_signatures(fault_server, keys, model_bytes, tmp_path):
    cert = keys["cert"]
    signature = _publisher_sign(model_bytes, tmp_path / "tiny", cert=cert)
    root = cert.root.read_text()
    good = _entry(fault_server, "tiny", model_bytes, signature,
                  {"certificate_chain": [root], "identity": cert.identity})
    url = _serve_index(fault_server, good)
    zoo.add_source("acme", url)
    zoo.fetch("tiny")
    check = zoo.info("tiny").signature["publisher"]
    assert check["status"] == "verified" and cert.identity in check["signed_by"]
    assert "Test Root CA" in check["signed_by"]

    # Pinned: another identity, then another CA. Both fail, each saying why.
    zoo.add_source("acme", url, signer=Signer("certificate", certificate_chain=[root], identity="x@evil.example"))
    (verdict,) = verify_signatures("tiny")
    assert "not for the required identity x@evil.example" in verdict.checks["publisher"].error
    other_root = (keys["cert"].root.parent.parent / "other-ca" / "root.pem").read_text()
    zoo.add_source("acme", url, signer=Signer("certificate", certificate_chain=[other_root]))
    (verdict,) = verify_signatures("tiny")
    assert "does not chain to the required CN=Other CA" in verdict.checks["publisher"].error
    assert zoo.info("tiny").signature_status == "failed"


def test_keyless_sigstore_signatures_verify_offline_with_a_local_instance(fault_server, model_bytes, tmp_path):
    """The Sigstore path end to end: certificate chain, SCT, identity and issuer, transparency log
    entry (inclusion proof, checkpoint, promise) and DSSE signature, against a trust root made here."""
    from helpers.signing import sigstore_bundle

    folder = tmp_path / "tiny"
    folder.mkdir()
    for name, data in model_bytes.items():
        (folder / name).write_bytes(data)
    identity, issuer = "release@acme.example", "https://accounts.acme.example"
    sigstore_bundle(folder, tmp_path / "tiny.sig", tmp_path / "trust.json", identity=identity, issuer=issuer)
    url = _serve_index(fault_server, _entry(fault_server, "tiny", model_bytes, (tmp_path / "tiny.sig").read_bytes(),
                                            {"identity": identity, "issuer": issuer}))
    pinned = Signer.from_files(identity=identity, issuer=issuer, trust_config=tmp_path / "trust.json")
    zoo.add_source("acme", url, require_signature=True, signer=pinned)
    zoo.fetch("tiny")
    check = zoo.info("tiny").signature["publisher"]
    assert check["status"] == "verified" and check["method"] == "sigstore"
    assert check["signed_by"] == f"{identity} (Sigstore, {issuer})"
    # The same bundle, required from someone else: refused by the identity policy.
    zoo.add_source("acme", url, signer=Signer.from_files(identity="ops@acme.example", issuer=issuer,
                                                         trust_config=tmp_path / "trust.json"))
    (verdict,) = verify_signatures("tiny")
    assert "SANs do not match ops@acme.example" in verdict.checks["publisher"].error


def test_a_single_file_signature(fault_server, keys, light, tmp_path):
    files = {"tiny.onnx": light["onnx"].read_bytes()}
    signature = _publisher_sign(files, tmp_path / "tiny", key=keys["publisher"], single=True)
    url = _serve_index(fault_server, _entry(fault_server, "tiny", files, signature,
                                            {"public_key": keys["publisher"].public_pem}))
    zoo.add_source("acme", url, require_signature=True)
    zoo.fetch("tiny")
    assert zoo.info("tiny").signature["publisher"]["files"] == {".": pytest.approx(
        zoo.info("tiny").signature["publisher"]["files"]["."])}
    assert zoo.info("tiny").signature_status == "verified"


def test_a_sync_that_changes_the_signature_forgets_the_check(fault_server, keys, model_bytes, tmp_path):
    signature = _publisher_sign(model_bytes, tmp_path / "tiny", key=keys["publisher"])
    entry = _entry(fault_server, "tiny", model_bytes, signature, {"public_key": keys["publisher"].public_pem})
    url = _serve_index(fault_server, entry)
    zoo.add_source("acme", url)
    zoo.fetch("tiny")
    assert zoo.info("tiny").signature_status == "verified"
    zoo.sync_sources("acme", force=True)  # same index: the check stays
    assert zoo.info("tiny").signature_status == "verified"
    entry["signature"]["public_key"] = keys["other"].public_pem
    _serve_index(fault_server, entry)
    zoo.sync_sources("acme")
    assert zoo.info("tiny").signature == {} and zoo.info("tiny").signature_status is None


def test_index_signature_fields_are_validated():
    from zoo.index import parse_index

    def index(**signature):
        return {"format": FORMAT, "name": "x", "models": [{
            "name": "m", "framework": "onnx", "signature": signature,
            "files": [{"role": "model", "filename": "m.onnx", "url": "https://x.example/m.onnx"}]}]}

    with pytest.raises(IndexFormatError, match=r"signature.public_key' does not name a signer"):
        parse_index(index(url="https://x.example/m.sig", public_key="not a key"), source="x")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_public = rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(IndexFormatError, match="not an elliptic-curve key"):
        parse_index(index(url="https://x.example/m.sig", public_key=rsa_public), source="x")
    with pytest.raises(IndexFormatError, match=r"signature.url' is missing"):
        parse_index(index(public_key="x"), source="x")
    with pytest.raises(IndexFormatError, match=r"signature.filename.*same place"):
        parse_index(index(url="https://x.example/m.sig", filename="M.onnx"), source="x")
    bad_role = {"format": FORMAT, "name": "x", "models": [{"name": "m", "framework": "onnx", "files": [
        {"role": "signature", "filename": "m.sig", "url": "https://x.example/m.sig"}]}]}
    with pytest.raises(IndexFormatError, match="entry's 'signature' field"):
        parse_index(bad_role, source="x")
    (model,) = parse_index(index(url="https://x.example/m.sig", identity="a@b.example",
                                 issuer="https://accounts.example"), source="x")
    assert model.artifact("signature").meta["signer"] == {
        "method": "sigstore", "identity": "a@b.example", "issuer": "https://accounts.example"}
    from zoo.index import dump_index

    assert dump_index([model], name="x")["models"][0]["signature"] == {
        "url": "https://x.example/m.sig", "identity": "a@b.example", "issuer": "https://accounts.example"}


# ---- zoo sign / zoo verify --signatures -------------------------------------------------------

@pytest.fixture
def converted(light, tmp_path):
    """A local ONNX model, converted (checked against onnxruntime), ready to sign."""
    path = tmp_path / "mine" / "tiny.onnx"
    path.parent.mkdir()
    shutil.copy(light["onnx"], path)
    zoo.add(path)
    zoo.convert("tiny")
    return path


def test_zoo_sign_attests_the_conversion(converted, keys, zoo_cmd):
    check = sign("tiny", key=keys["publisher"].private)
    assert check.verified and check.by == "zoo"
    assert set(check.files) == {"tiny.onnx", "zoo/tiny.onnx", "zoo/tiny.onnx.lineage.json"}
    model = zoo.info("tiny")
    assert model.signature["zoo"]["status"] == "verified" and model.artifact("signature").meta["by"] == "zoo"
    statement = json.loads((Path(model.artifact("signature").path).parent / "tiny.onnx.lineage.json").read_text())
    assert statement["subject"][0]["digest"]["sha256"] == model.artifact("onnx").sha256
    predicate = statement["predicate"]
    assert predicate["kind"] == "conversion" and predicate["figures"]["verified"] is True
    assert predicate["parents"][0]["sha256"] == model.artifact("model").sha256
    assert {"zoo", "onnx"} <= set(predicate["tools"])

    run = subprocess.run([*zoo_cmd, "verify", "--signatures"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "tiny (zoo): signed by key sha256:" in run.stdout and "attests zoo/tiny.onnx: conversion from" in run.stdout

    # Another key is not the signer; a tampered conversion does not verify.
    wrong = subprocess.run([*zoo_cmd, "verify", "--signatures", "--key", str(keys["other"].public)],
                           capture_output=True, text=True)
    assert wrong.returncode == 1 and "not by the required key" in wrong.stdout
    onnx_file = Path(model.artifact("onnx").path)
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    (verdict,) = verify_signatures("tiny")
    assert not verdict.ok and "zoo/tiny.onnx" in verdict.checks["zoo"].error
    assert zoo.info("tiny").signature_status == "failed"


def test_zoo_sign_with_a_certificate_and_bad_keys(converted, keys, tmp_path):
    cert = keys["cert"]
    check = sign("tiny", key=cert.key, certificate=cert.certificate, chain=[cert.root])
    assert check.verified and cert.identity in check.signed_by
    with pytest.raises(SignatureError, match="needs its chain"):
        sign("tiny", key=cert.key, certificate=cert.certificate)
    encrypted = make_key(tmp_path, "locked", password=b"s3cret")
    with pytest.raises(SignatureError, match="password is missing or wrong"):
        sign("tiny", key=encrypted.private)
    assert sign("tiny", key=encrypted.private, password="s3cret").verified
    rsa = tmp_path / "rsa.pem"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys

    rsa.write_bytes(rsa_keys.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(SignatureError, match="elliptic-curve"):
        sign("tiny", key=rsa)


def test_without_the_library_zoo_says_the_pip_command(converted, keys, monkeypatch):
    monkeypatch.setitem(sys.modules, "model_signing", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'zoo\[provenance\]'"):
        sign("tiny", key=keys["publisher"].private)


def test_fetch_without_the_library(fault_server, keys, model_bytes, tmp_path, monkeypatch, caplog):
    """No model-signing: a signed model is fetched with a warning, unless its source requires a check."""
    signature = _publisher_sign(model_bytes, tmp_path / "tiny", key=keys["publisher"])
    url = _serve_index(fault_server, _entry(fault_server, "tiny", model_bytes, signature,
                                            {"public_key": keys["publisher"].public_pem}))
    zoo.add_source("acme", url, require_signature=True)
    monkeypatch.setitem(sys.modules, "model_signing", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'zoo\[provenance\]'"):
        zoo.fetch("tiny")
    assert not zoo.info("tiny").is_local
    zoo.add_source("acme", url, require_signature=False)
    with caplog.at_level("WARNING", logger="zoo.download"):
        zoo.fetch("tiny")
    assert "publishes a signature that was not checked" in caplog.text
    assert zoo.info("tiny").is_local and zoo.info("tiny").signature == {}


def test_a_catalog_from_before_signatures_is_upgraded(catalog_url):
    """Revision 0003 -> 0004 (Alembic, on each backend): sources get the policy columns, models
    the signature columns; rows written before keep their data and read as unsigned, no policy."""
    from sqlalchemy import create_engine, inspect

    from zoo.catalog import SCHEMA_HEAD, Catalog
    from zoo.migrations import upgrade

    engine = create_engine(catalog_url)
    with engine.begin() as connection:
        upgrade(connection, "0003")
        connection.exec_driver_sql("INSERT INTO sources (name, url) VALUES ('acme', 'https://acme.example/zoo.json')")
        connection.exec_driver_sql(
            "INSERT INTO models (name, framework, source, tags, input_spec, metrics, meta, removed_upstream) "
            "VALUES ('old', 'onnx', 'acme', '[]', '{}', '{}', '{}', false)")
    cat = Catalog(catalog_url, builtins=False)
    columns = {t: {c["name"] for c in inspect(engine).get_columns(t)} for t in ("models", "sources")}
    assert {"signature", "signature_status"} <= columns["models"]
    assert {"require_signature", "signer"} <= columns["sources"]
    (source,) = cat.sources()
    assert source.require_signature is False and source.signer is None
    model = cat.get("old")
    assert model.signature == {} and model.signature_status is None
    cat.add_source("acme", source.url, require_signature=True,
                   signer={"method": "key", "public_key": "-----BEGIN PUBLIC KEY-----x-----END PUBLIC KEY-----"})
    cat.record_signature("old", "publisher", {"status": "verified", "signed_by": "key sha256:ab"})
    assert cat.get("old").signature_status == "verified" and cat.get_source("acme").require_signature
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == SCHEMA_HEAD
        status = connection.exec_driver_sql("SELECT signature_status FROM models WHERE name = 'old'").scalar()
    assert status == "verified"
    cat.close()
    engine.dispose()
