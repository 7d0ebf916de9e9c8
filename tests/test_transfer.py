"""Heads on cached features: the seed's loop, equality with training through the frozen base, saving."""
from __future__ import annotations

import numpy as np
import pytest

from zoo.errors import InputError


@pytest.fixture(scope="module")
def base_and_onnx(tmp_path_factory):
    """A frozen torch base and the same network exported to ONNX."""
    import torch

    from _transfer_helpers import export_mlp

    path = export_mlp(tmp_path_factory.mktemp("base") / "base.onnx", inputs=16, hidden=12, outputs=8)
    torch.manual_seed(0)  # export_mlp builds its net from seed 0: rebuild the same weights
    base = torch.nn.Sequential(
        torch.nn.Linear(16, 12), torch.nn.ReLU(), torch.nn.Linear(12, 8), torch.nn.ReLU()
    ).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    return base, path


@pytest.fixture
def blobs():
    """Three separable classes in 16 dimensions."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 16)) * 3
    y = rng.integers(0, 3, 300)
    x = (centers[y] + rng.standard_normal((300, 16))).astype(np.float32)
    return x, y


def test_head_on_cached_features_equals_head_through_the_frozen_base(base_and_onnx, blobs):
    import torch

    from _transfer_helpers import OrtExtractor
    from zoo import cache_features, fit_head
    from zoo.transfer import make_head

    base, path = base_and_onnx
    x, y = blobs
    features = cache_features(OrtExtractor(path), x, progress=False)
    with torch.no_grad():
        np.testing.assert_allclose(features, base(torch.from_numpy(x)).numpy(), atol=1e-5)
    kwargs = dict(epochs=6, batch_size=16, seed=3, patience=None)
    cached = fit_head(features, y, head=make_head(8, 3, (5,), seed=1), **kwargs)
    through = fit_head(x, y, base=base, head=make_head(8, 3, (5,), seed=1), **kwargs)
    for a, b in zip(cached.head.parameters(), through.head.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert [h["epoch"] for h in cached.history] == list(range(1, 7))
    assert cached.best_epoch == through.best_epoch
    for a, b in zip(cached.history, through.history):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["val_accuracy"] == b["val_accuracy"]
    # the base never changed
    fresh = base_and_onnx[0]
    assert all(not p.requires_grad for p in fresh.parameters())


def test_fit_head_learns_and_stops_early(blobs):
    from zoo import fit_head

    # few noisy rows and a hidden layer: the validation loss turns up after a few epochs
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 16))
    y = rng.integers(0, 3, 90)
    x = (centers[y] + rng.standard_normal((90, 16))).astype(np.float32)
    result = fit_head(x, y + 5, hidden=(64,), epochs=200, lr=0.01, patience=3, seed=0)
    assert result.classes == [5, 6, 7]
    assert result.val_accuracy > 0.8
    assert result.stopped_early and len(result.history) < 200
    assert len(result.history) == result.best_epoch + 3
    best = min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == best
    assert result.accuracy(x, y + 5) > 0.8
    assert set(np.unique(result.predict(x[:20]))) <= {5, 6, 7}


def test_fit_head_is_deterministic(blobs):
    import torch

    from zoo import fit_head

    x, y = blobs
    a = fit_head(x, y, epochs=3, seed=7)
    b = fit_head(x, y, epochs=3, seed=7)
    for p, q in zip(a.head.parameters(), b.head.parameters()):
        assert torch.equal(p, q)
    assert a.history == b.history


def test_the_validation_split_is_stratified_and_explicit_validation_works(blobs):
    from zoo import fit_head
    from zoo.transfer import _split

    x, y = blobs
    train, val = _split(y, 0.2, 0)
    assert not set(train) & set(val) and len(train) + len(val) == len(y)
    for c in range(3):
        share = np.mean(y[val] == c) - np.mean(y == c)
        assert abs(share) < 0.05
    result = fit_head(x[:200], y[:200], validation=(x[200:], y[200:]), epochs=3)
    assert len(result.history) == 3 and "val_accuracy" in result.history[0]


def test_bad_labels_are_input_errors(blobs):
    from zoo import fit_head

    x, y = blobs
    with pytest.raises(InputError, match="299 labels for 300 rows"):
        fit_head(x, y[:-1])
    with pytest.raises(InputError, match="single class"):
        fit_head(x, np.zeros(len(x), int))
    with pytest.raises(InputError, match="validation label 9"):
        fit_head(x, y, validation=(x[:5], np.array([0, 1, 2, 9, 0])))
    with pytest.raises(InputError, match="1-D"):
        fit_head(x, y.reshape(-1, 1).repeat(2, 1)[:300])


def test_save_model_registers_an_onnx_model_that_matches_torch(base_and_onnx, tmp_path):
    import onnxruntime as ort
    import torch

    from zoo.catalog import open_catalog
    from zoo.transfer import _compose, make_head, save_model

    base, _ = base_and_onnx
    model = _compose(base, make_head(8, 3))
    record = save_model(model, "mine.mlp", input_shape=[16], classes=["a", "b", "c"], layout="NC")
    assert record.source == "local" and record.framework == "onnx"
    artifact = record.artifact("model")
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    got = ort.InferenceSession(artifact.path).run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(torch.from_numpy(x)).numpy(), atol=1e-5)
    stored = open_catalog().get("mine.mlp")
    assert stored.meta["classes"] == ["a", "b", "c"] and stored.input.shape == [None, 16]
    from zoo.errors import DuplicateModelError

    with pytest.raises(DuplicateModelError):
        save_model(model, "mine.mlp", input_shape=[16])
    save_model(model, "mine.mlp", input_shape=[16], replace=True)
