"""Signature verification of a 100 MB model vs hashing it alone (issue 24: <= 1.2x).

A Caffe pair (deploy.prototxt + a 100 MB caffemodel) is signed the way a publisher does it
(model-signing on the folder, an EC P-256 key). Timed in one process, interleaved:

- verify: `zoo.signing.verify_files`, what `zoo fetch` and `zoo verify --signatures` run (parse
  the bundle, check the ECDSA signature and the statement, hash every file through a view);
- hash:   `zoo.hashes.file_sha256` of each file, what `zoo verify` (re-hash) costs;
- model-signing's own `verifying.Config().verify` on the folder, for reference.

Importing model-signing (and sigstore) is a one-time cost per process, printed apart.

Run: .venv/bin/python bench/bench_signing.py [--mb 100] [--repeats 5]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import interleaved  # bench/ is the script's folder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the caffemodel")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from helpers.formats import LENET_PROTOTXT, write_caffemodel
    from helpers.signing import make_key

    import model_signing

    from zoo.hashes import file_sha256
    from zoo.signing import Signer, verify_files

    with tempfile.TemporaryDirectory(prefix="zoo-bench-signing-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "lenet"
        folder.mkdir()
        floats = args.mb * (1 << 20) // 4 // 4
        weights = write_caffemodel(folder / "lenet.caffemodel",
                                   [(f"ip{i}", "InnerProduct", [[floats]]) for i in range(4)])
        graph = folder / "deploy.prototxt"
        graph.write_text(LENET_PROTOTXT.read_text())
        key = make_key(tmp / "keys")
        model_signing.signing.Config().use_elliptic_key_signer(private_key=key.private).sign(folder, tmp / "model.sig")
        files = {"deploy.prototxt": graph, "lenet.caffemodel": weights}
        signer = Signer("key", public_key=key.public_pem)
        assert verify_files(files, tmp / "model.sig", signer).verified
        size = sum(p.stat().st_size for p in files.values()) / (1 << 20)

        def verify() -> None:
            check = verify_files(files, tmp / "model.sig", signer)
            assert check.verified, check.error

        def hash_only() -> None:
            for path in files.values():
                file_sha256(path)

        def library() -> None:
            model_signing.verifying.Config().use_elliptic_key_verifier(public_key=key.public).verify(
                folder, tmp / "model.sig")

        times = interleaved({"verify": verify, "hash": hash_only, "library": library}, args.repeats)
        ratio = times["verify"] / times["hash"]
        print(f"model: {size:.0f} MB in 2 files (Caffe pair), EC P-256 signature, files serialization, sha256")
        print(f"hash alone (zoo.hashes.file_sha256):         {times['hash'] * 1000:8.1f} ms "
              f"({size / times['hash']:.0f} MB/s)")
        print(f"verify (zoo.signing.verify_files):           {times['verify'] * 1000:8.1f} ms")
        print(f"model-signing verify on the folder:          {times['library'] * 1000:8.1f} ms")
        print(f"ratio verify / hash = {ratio:.3f} (goal <= 1.2); "
              f"model-signing alone / hash = {times['library'] / times['hash']:.3f}")

    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import model_signing.verifying, model_signing.signing"], check=True)
    with_import = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - started
    print(f"one-time import of model-signing (a fresh process, once per command): "
          f"{(with_import - bare) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
