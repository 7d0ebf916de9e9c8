"""Cut-layer sweeps: one row per cut and depth, features cached once, the table and the PNG plot."""
from __future__ import annotations

import json

import numpy as np
import pytest

from zoo.errors import InputError
from zoo.options import TrainingConfig


@pytest.fixture
def digits_model():
    from helpers.transfer import register_digits_cnn

    return register_digits_cnn(train_epochs=3)


@pytest.fixture(scope="module")
def data():
    from zoo.demos.walkthrough import digits

    x, y = digits()
    return x[y >= 5][:150], y[y >= 5][:150]


def test_sweep_rows_table_and_plot(digits_model, data, tmp_path):
    from zoo import sweep

    x, y = data
    result = sweep(digits_model.name, x, y, layers=["pool1", "pool2", -2], unfreeze=[0, 1],
                   training=TrainingConfig(epochs=3, progress=False))
    result.plot(tmp_path / "sweep.png")
    got = [(r.layer, r.unfreeze, r.cached_at) for r in result.rows]
    # pool1 cannot fine-tune its top layer: conv1 is the first layer, nothing would stay frozen
    assert got == [("pool1", 0, "pool1"), ("pool2", 0, "pool2"), ("pool2", 1, "pool1"),
                   ("relu3", 0, "relu3"), ("relu3", 1, "flatten")]
    assert len(result.skipped) == 1 and "pool1 unfreeze=1" in result.skipped[0]
    assert [r.features for r in result.rows][:2] == [[16, 4, 4], [32, 2, 2]]
    # each row reports its head's best epoch, the one the head keeps
    assert all(r.val_accuracy == r.fit.history[r.best_epoch - 1]["val_accuracy"] and r.epochs == 3
               for r in result.rows)
    # pool2 with its top layer unfrozen caches at pool1, whose features were already cached
    assert result.rows[2].reused and not result.rows[0].reused
    assert result.best in result.rows
    lines = result.table().splitlines()
    assert lines[0].split()[:3] == ["layer", "unfreeze", "cached"] and len(lines) == 6
    # the head alone trains at unfreeze 0; the unfrozen block adds its weights
    assert "trains" in lines[0] and result.rows[2].trainable_parameters > result.rows[1].trainable_parameters > 0
    assert "pool1 (reused)" in lines[3]
    png = (tmp_path / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert json.loads(json.dumps(result.to_dict()))["rows"][0]["layer"] == "pool1"


def test_a_second_sweep_reuses_every_cut(digits_model, data):
    from zoo import sweep

    x, y = data
    first = sweep(digits_model.name, x, y, layers=["pool2", "relu3"], training=TrainingConfig(epochs=2, progress=False))
    second = sweep(digits_model.name, x, y, layers=["pool2", "relu3"],
                   training=TrainingConfig(epochs=2, progress=False))
    assert all(r.reused for r in second.rows)
    assert [r.val_accuracy for r in first.rows] == [r.val_accuracy for r in second.rows]


def test_sweep_with_validation_and_test_sets(digits_model, data):
    from zoo import sweep

    x, y = data
    result = sweep(digits_model.name, x[:60], y[:60], layers=["pool2"], validation=(x[60:100], y[60:100]),
                   test=(x[100:], y[100:]), training=TrainingConfig(epochs=2, progress=False))
    assert result.rows[0].test_accuracy is not None and "test acc" in result.table()


def test_bad_sweeps(digits_model, data):
    from zoo import sweep
    from zoo.errors import UnknownLayerError

    x, y = data
    with pytest.raises(InputError, match="labels for"):
        sweep(digits_model.name, x, y[:-1], layers=["pool2"], training=TrainingConfig(progress=False))
    with pytest.raises(InputError, match="no layers"):
        sweep(digits_model.name, x, y, layers=[], training=TrainingConfig(progress=False))
    with pytest.raises(UnknownLayerError, match="zoo layers"):
        sweep(digits_model.name, x, y, layers=["pool9"], training=TrainingConfig(progress=False))


def test_zoo_sweep_command(digits_model, data, tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli

    x, y = data
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    done = CliRunner().invoke(cli, ["sweep", digits_model.name, "-d", str(tmp_path / "x.npy"), "-y",
                                    str(tmp_path / "y.npy"), "-l", "pool2,relu3", "--unfreeze", "0,1",
                                    "--epochs", "2", "--plot", str(tmp_path / "p.png"), "-q"])
    assert done.exit_code == 0, done.output
    assert "best:" in done.stdout and (tmp_path / "p.png").is_file()
    assert len([line for line in done.stdout.splitlines() if line.startswith(("pool2", "relu3"))]) == 4
    bad = CliRunner().invoke(cli, ["sweep", digits_model.name, "-d", str(tmp_path / "x.npy"), "-y",
                                   str(tmp_path / "y.npy"), "-l", "pool2", "--unfreeze", "a"])
    assert bad.exit_code == 1 and "--unfreeze a is not a layer" in bad.output


def _row(layer, accuracy, loss, unfreeze=0, trainable=100, seconds=1.0, rows=1000):
    from zoo.layer_sweep import SweepRow

    return SweepRow(layer=layer, unfreeze=unfreeze, cached_at=layer, features=[8], val_accuracy=accuracy,
                    best_epoch=3, epochs=5, cache_seconds=0.0, train_seconds=seconds, reused=False,
                    val_loss=loss, val_rows=rows, trainable_parameters=trainable)


def test_ties_in_accuracy_go_to_the_lower_loss_then_the_cheaper_row():
    from zoo.layer_sweep import SweepResult

    def best(*rows):
        return SweepResult("m", rows=list(rows)).best.layer

    assert best(_row("a", 0.9, 0.5), _row("b", 0.9, 0.3), _row("c", 0.8, 0.1)) == "b"  # loss breaks the tie
    assert best(_row("a", 0.9, 0.3, unfreeze=1), _row("b", 0.9, 0.3)) == "b"  # frozen before unfrozen
    assert best(_row("a", 0.9, 0.3, trainable=500), _row("b", 0.9, 0.3, trainable=50)) == "b"  # fewer parameters
    assert best(_row("a", 0.9, 0.3, seconds=9.0), _row("b", 0.9, 0.3, seconds=2.0)) == "b"  # less time
    assert best(_row("a", 0.95, 0.9, unfreeze=1, trainable=10**6), _row("b", 0.9, 0.1)) == "a"  # accuracy first


def test_a_validation_set_too_small_to_tell_the_rows_apart_is_said_with_its_interval():
    from zoo.layer_sweep import SweepResult, wilson_interval

    low, high = wilson_interval(1.0, 10)  # 10 of 10 right: the Wilson interval, not [1, 1]
    assert low == pytest.approx(10 / (10 + 1.96**2), abs=1e-9) and high == 1.0
    low, high = wilson_interval(0.5, 100)
    assert (low, high) == (pytest.approx(0.4038, abs=1e-3), pytest.approx(0.5962, abs=1e-3))
    assert wilson_interval(0.0, 0) == (0.0, 1.0)

    small = SweepResult("m", rows=[_row("fc6", 0.9, 0.3, rows=20), _row("fc7", 0.8, 0.4, rows=20)])
    [warning] = small.warnings
    assert "validation set (20 rows) is too small to tell fc6 from fc7" in warning
    assert "95% interval of 70-97%" in warning and "val_fraction=" in warning  # Python's spelling here
    large = SweepResult("m", rows=[_row("fc6", 0.9, 0.3, rows=5000), _row("fc7", 0.8, 0.4, rows=5000)])
    assert large.warnings == [] and large.to_dict()["warnings"] == []
    assert SweepResult("m", rows=[_row("fc6", 0.9, 0.3, rows=5)]).warnings == []  # one row: nothing to tell apart


def test_the_sweep_command_says_when_it_cannot_tell_and_when_heads_did_not_converge(digits_model, data, tmp_path):
    from click.testing import CliRunner

    from zoo.cli import cli

    x, y = data
    np.save(tmp_path / "x.npy", x[:60])
    np.save(tmp_path / "y.npy", y[:60])
    args = ["sweep", digits_model.name, "-d", str(tmp_path / "x.npy"), "-y", str(tmp_path / "y.npy"),
            "-l", "pool1,pool2,relu3", "--epochs", "2", "--patience", "5", "--val-fraction", "0.1"]
    as_json = json.loads(CliRunner().invoke(cli, [*args, "--json"]).stdout)
    assert 5 <= as_json["rows"][0]["val_rows"] <= 8 and as_json["warnings"]  # a tenth of 60, stratified
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    notes = [line for line in text.stdout.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: {w}" for w in as_json["warnings"]]
    assert any("too small to tell" in n and "--val-fraction 0.3" in n for n in notes)  # CLI spelling here
    # 2 epochs on a falling loss: not converged, said once for the sweep, with the flag to raise
    assert any("heads were still improving at their last epoch" in n and "raise --epochs" in n for n in notes)
    quiet = CliRunner().invoke(cli, [*args, "-q"])
    assert "note:" not in quiet.stdout and "best:" in quiet.stdout
