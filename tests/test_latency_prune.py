"""Pruning to a latency target (NetAdapt) and the latency lookup table behind it."""

import time

import pytest

import netcompress as nc
from netcompress import PruneConfig, prune_iteratively
from netcompress.errors import NetcompressError
from netcompress.measure.latency import LatencyTarget
from netcompress.measure.latency_table import LatencyTable, layer_keys
from netcompress.pipeline.stages import choose_by_latency

WIDTHS = [8, 16, 16, 32, 32, 32, 32, 32]


def student(size=32):
    return nc.new_model("studentnet", ["soup", "rice", "bread"], size, widths=WIDTHS)


@pytest.mark.parametrize("runtime", ["ort", "torch"])
def test_the_table_predicts_from_measured_layers_and_keeps_them(tmp_path, runtime):
    table = LatencyTable(nc.LatencyConfig(runtime=runtime), cache_dir=tmp_path)
    model = student()
    keys = layer_keys(model, (1, 3, 32, 32))
    assert len(keys) == 1 + 7 * 2 + 1 and keys[0][:3] == ("conv", 3, 8) and keys[-1] == ("linear", 32, 3)
    predicted = table.predict(model, (1, 3, 32, 32))
    assert predicted > 0 and len(table.entries) == len(set(keys))
    stamp = table.path.stat().st_mtime_ns
    again = LatencyTable(nc.LatencyConfig(runtime=runtime), cache_dir=tmp_path)
    assert again.predict(model, (1, 3, 32, 32)) == predicted and table.path.stat().st_mtime_ns == stamp
    wider = nc.new_model("studentnet", ["soup", "rice", "bread"], 32, widths=[w * 4 for w in WIDTHS])
    assert again.predict(wider, (1, 3, 32, 32)) > predicted


def test_a_damaged_table_is_measured_again(tmp_path):
    table = LatencyTable(nc.LatencyConfig(), cache_dir=tmp_path)
    table.path.parent.mkdir(parents=True, exist_ok=True)
    table.path.write_text("{not json")
    assert LatencyTable(nc.LatencyConfig(), cache_dir=tmp_path).predict(student(), (1, 3, 32, 32)) > 0


def priced_by_macs(table, model, input_shape):
    """A table that prices a layer by its multiply-adds: the same on every machine, however busy."""
    cost = 0.0
    for kind, *shape in layer_keys(model, input_shape):
        if kind == "linear":
            cost += shape[0] * shape[1]
        else:
            c_in, c_out, kh, kw, sh, sw, *_, groups, h, w = shape
            cost += c_in // groups * c_out * kh * kw * (h // sh) * (w // sw)
    return cost * 1e-9


class _Macs(nc.Runtime):
    """A runtime whose calls take a second per billion multiply-adds: a millisecond or two for these nets."""

    name = "macs"

    def prepare(self, model, x, threads, workdir):
        seconds = priced_by_macs(None, model, tuple(x.shape))
        return lambda: time.sleep(seconds)


def test_pruning_to_a_latency_cuts_the_layers_the_table_prices(jpeg_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(LatencyTable, "predict", priced_by_macs)
    nc.register_runtime(_Macs)
    data = nc.ImageFolderData(jpeg_dataset, 32, progress=False)
    target = LatencyTarget(1e-4, runtime="macs")  # out of reach: the run prunes for its whole allowance of steps
    cfg = PruneConfig(method="l2", steps=1, latency=target, proposal_images=8)
    run = prune_iteratively(student(), cfg, data, nc.TrainConfig(epochs=1, batch_size=4), run_dir=tmp_path / "run",
                            progress=False)
    rows = run.rows
    assert 2 <= len(rows) <= 3 and rows[0]["step"] == 0  # steps = 1 planned, at most twice that
    assert all(b["params"] < a["params"] for a, b in zip(rows, rows[1:]))
    for row in rows[1:]:
        assert row["cut"]["removed"] >= 1 and row["rate"] is None and 0 < row["kept"] < 1
        assert row["target_latency"]["ms"] == 1e-4 and row["target_latency"]["predicted_ms"] > 0
        assert (tmp_path / "run" / f"step{row['step']}" / "proposal.json").exists()
    final = nc.load(tmp_path / "run" / rows[-1]["model_file"])
    info = nc.spec_of(final).info.pruned
    assert info.latency["ms"] == 1e-4 and len(info.cuts) == len(rows) - 1
    assert nc.spec_of(final).kwargs["widths"] != WIDTHS


def test_latency_pruning_needs_a_method_that_ranks_one_layer():
    with pytest.raises(NetcompressError, match="cannot prune to a latency target: use one of slim, l1, l2"):
        PruneConfig(method="magnitude", latency=LatencyTarget(0.1))
    with pytest.raises(NetcompressError, match="target latency = 0 ms must be positive"):
        LatencyTarget(0)
    with pytest.raises(NetcompressError, match="runtime = 'tpu'"):
        LatencyTarget(0.1, runtime="tpu")


def test_the_latency_budget_chooses_the_most_accurate_model_that_is_fast_enough():
    artifacts = [{"name": n, "file": n, "val_accuracy": acc} for n, acc in (("big", 0.7), ("mid", 0.6), ("small", 0.5))]
    measured = {"big": {"median_ms": 0.3, "p90_ms": 0.32}, "mid": {"median_ms": 0.11, "p90_ms": 0.12},
                "small": {"median_ms": None, "p90_ms": None}}
    target = LatencyTarget(0.12)
    choice = choose_by_latency(artifacts, target, measured)
    assert choice["chosen"] == "mid" and [t["fits"] for t in choice["tried"]] == [False, True, False]
    with pytest.raises(NetcompressError, match="no model runs within 0.05 ms on ort.*fastest is mid at 0.110 ms"):
        choose_by_latency(artifacts, LatencyTarget(0.05), measured)
