"""Pruning to a latency target (NetAdapt) and the latency lookup table behind it."""

import time
from types import SimpleNamespace

import pytest

import netcompress as nc
from netcompress import PruneConfig, prune_iteratively
from netcompress.errors import NetcompressError
from netcompress.measure import cost
from netcompress.measure import latency as latency_module
from netcompress.measure.latency import LatencyTarget
from netcompress.measure.latency_table import LatencyTable, layer_keys
from netcompress.pipeline.artifact import Artifact
from netcompress.pipeline.budgets import choose_by_latency
from netcompress.schedule import latency_pruning
from netcompress.spec import copy_model

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
    wider_predicted = again.predict(wider, (1, 3, 32, 32))  # how much slower it is: a benchmark's question
    assert wider_predicted > 0 and len(again.entries) == len(set(keys) | set(layer_keys(wider, (1, 3, 32, 32))))
    kept = LatencyTable(nc.LatencyConfig(runtime=runtime), cache_dir=tmp_path)
    assert kept.predict(wider, (1, 3, 32, 32)) == wider_predicted  # only its new layers were measured, and kept


def test_a_damaged_table_is_measured_again(tmp_path):
    table = LatencyTable(nc.LatencyConfig(), cache_dir=tmp_path)
    table.path.parent.mkdir(parents=True, exist_ok=True)
    table.path.write_text("{not json")
    assert LatencyTable(nc.LatencyConfig(), cache_dir=tmp_path).predict(student(), (1, 3, 32, 32)) > 0


# A table that prices a layer by its multiply-adds, and the channels of one layer group (HEAVY, the input of
# block 5's depthwise conv) 400 times more: the price of a cut is known here, and the cut the table prices
# highest is not the one with the most multiply-adds (cnn.2.0's).
HEAVY, HEAVY_KEY, HEAVY_WEIGHT = "cnn.5.0", 9, 400
MS_PER_MAC = 1e-6  # a millisecond or so for these nets


def priced(table, model, input_shape):
    """Milliseconds of `model` by the table above: the same on every machine, however busy."""
    cost = 0.0
    keys = layer_keys(model, input_shape)
    assert keys[HEAVY_KEY][0] == "conv" and keys[HEAVY_KEY][-3] == keys[HEAVY_KEY][1]  # block 5's depthwise conv
    for i, (kind, *shape) in enumerate(keys):
        if kind == "linear":
            macs = shape[0] * shape[1]
        else:
            c_in, c_out, kh, kw, sh, sw, *_, groups, h, w = shape
            macs = c_in // groups * c_out * kh * kw * (h // sh) * (w // sw)
        cost += macs * (HEAVY_WEIGHT if i == HEAVY_KEY else 1)
    return cost * MS_PER_MAC


@pytest.fixture()
def priced_runtime(monkeypatch):
    """The runtime `priced`, whose calls take exactly the time the table prices: they return at once and move the
    clock that latency measurements read on by that much, so every measurement agrees with the table."""
    offset = [0.0]
    clock = time.perf_counter
    monkeypatch.setattr(latency_module, "time", SimpleNamespace(perf_counter=lambda: clock() + offset[0],
                                                                thread_time=time.thread_time))
    monkeypatch.setattr(LatencyTable, "predict", priced)

    @nc.register_runtime
    class Priced(nc.Runtime):
        name = "priced"

        def prepare(self, model, x, threads, workdir):
            seconds = priced(None, model, tuple(x.shape)) / 1000

            def call():
                offset[0] += seconds

            return call

    return "priced"


def prune_recording(monkeypatch, tmp_path, jpeg_dataset, accuracy=None):
    """Prune to a latency out of reach (the run prunes for its whole allowance of steps); per step, the model
    before the cut and the proposals it chose from, their accuracies set by `accuracy(proposal, reference)`
    instead of a brief fine-tuning when given (and then without timing each step's model on ort and torch for
    its row, which the choice of cut does not read)."""
    if accuracy is not None:
        monkeypatch.setattr(cost, "measure_latencies", lambda model: {key: None for key in cost.LATENCIES})
    seen = []
    measured = latency_pruning._measured
    tune_briefly = latency_pruning.Proposals.tune_briefly

    def record_measured(model, proposals, target):
        seen.append({"before": copy_model(model).cpu(), "proposals": measured(model, proposals, target)})
        return seen[-1]["proposals"]

    def record_tuned(self, proposals, reference):
        if accuracy is None:
            tune_briefly(self, proposals, reference)
        else:
            for p in proposals:
                p.accuracy = accuracy(p, reference)
        assert proposals == seen[-1]["proposals"]
        seen[-1]["reference"] = reference

    monkeypatch.setattr(latency_pruning, "_measured", record_measured)
    monkeypatch.setattr(latency_pruning.Proposals, "tune_briefly", record_tuned)
    data = nc.ImageFolderData(jpeg_dataset, 32, progress=False)
    target = LatencyTarget(1e-4, runtime="priced")
    cfg = PruneConfig(method="l2", steps=1, latency=target, proposal_images=8)
    run = prune_iteratively(student(), cfg, data, nc.TrainConfig(epochs=1, batch_size=4), run_dir=tmp_path / "run",
                            progress=False)
    return run.rows, seen


def check_choices(rows, seen, run_dir):
    """Each step cuts the proposal that saves the most priced latency per point of accuracy lost; the proposals'
    savings are the table's."""
    assert 2 <= len(rows) <= 3 and rows[0]["step"] == 0 and len(seen) == len(rows) - 1  # at most twice steps = 1
    shape = (1, 3, 32, 32)
    for row, step in zip(rows[1:], seen):
        before = priced(None, step["before"], shape)
        for p in step["proposals"]:
            assert p.saved_ms == pytest.approx(before - priced(None, p.model, shape), rel=0.01, abs=1e-3)
            assert p.saved_ms > 0.02 * before  # the rest were not measurably faster, and were dropped
        best = max(step["proposals"],
                   key=lambda p: p.saved_ms / max(step["reference"] - p.accuracy, latency_pruning.ACCURACY_FLOOR))
        assert row["cut"] == {"layer": best.layer, "removed": best.remove}
        tuned = nc.load(run_dir / row["model_file"])
        assert row["target_latency"]["median_ms"] == pytest.approx(priced(None, tuned, shape), rel=0.01)
    return [(row["cut"]["layer"], row["cut"]["removed"]) for row in rows[1:]]


def test_pruning_to_a_latency_cuts_the_layers_the_table_prices(jpeg_dataset, tmp_path, monkeypatch, priced_runtime):
    # the cut the table prices highest loses half a point of accuracy, the others none (below ACCURACY_FLOOR, 0.2
    # points, all count as 0.2): it saves 4 to 8 times as much latency, so each step cuts it, by as much as it may
    rows, seen = prune_recording(monkeypatch, tmp_path, jpeg_dataset,
                                 accuracy=lambda p, reference: reference - (0.005 if p.layer == HEAVY else 0.0))
    assert all(len(step["proposals"]) >= 2 for step in seen)  # a choice each time
    # HEAVY has 32 channels, then 16; a step removes at most half (MAX_CUT)
    assert check_choices(rows, seen, tmp_path / "run") == [(HEAVY, 16), (HEAVY, 8)]
    assert all(b["params"] < a["params"] for a, b in zip(rows, rows[1:]))
    for row in rows[1:]:
        assert row["rate"] is None and 0 < row["kept"] < 1
        assert row["target_latency"]["ms"] == 1e-4 and row["target_latency"]["predicted_ms"] > 0
        assert (tmp_path / "run" / f"step{row['step']}" / "proposal.json").exists()
    final = nc.load(tmp_path / "run" / rows[-1]["model_file"])
    info = nc.spec_of(final).info.pruned
    assert info.latency["ms"] == 1e-4 and len(info.cuts) == len(rows) - 1
    assert nc.spec_of(final).kwargs["widths"] == [8, 16, 16, 32, 8, 32, 32, 32]  # block 4 feeds HEAVY


def test_a_cut_that_costs_accuracy_must_save_latency_in_proportion(jpeg_dataset, tmp_path, monkeypatch,
                                                                   priced_runtime):
    # the cut the table prices highest loses half the accuracy: 8x the latency for 250x the loss is no bargain
    rows, seen = prune_recording(monkeypatch, tmp_path, jpeg_dataset,
                                 accuracy=lambda p, reference: reference - (0.5 if p.layer == HEAVY else 0.0))
    assert len(seen[0]["proposals"]) >= 2 and HEAVY in [p.layer for p in seen[0]["proposals"]]
    # the next highest priced: the cut of most multiply-adds (cnn.1.0's 8 channels may not be cut)
    assert check_choices(rows, seen, tmp_path / "run")[0] == ("cnn.2.0", 8)


@pytest.mark.slow
def test_pruning_to_a_latency_weighs_the_briefly_fine_tuned_accuracy(jpeg_dataset, tmp_path, monkeypatch,
                                                                      priced_runtime):
    rows, seen = prune_recording(monkeypatch, tmp_path, jpeg_dataset)
    check_choices(rows, seen, tmp_path / "run")
    assert all(0 <= p.accuracy <= 1 for step in seen for p in step["proposals"])


def test_latency_pruning_needs_a_method_that_ranks_one_layer():
    with pytest.raises(NetcompressError, match="cannot prune to a latency target: use one of slim, l1, l2"):
        PruneConfig(method="magnitude", latency=LatencyTarget(0.1))
    with pytest.raises(NetcompressError, match="target latency = 0 ms must be positive"):
        LatencyTarget(0)
    with pytest.raises(NetcompressError, match="runtime = 'tpu'"):
        LatencyTarget(0.1, runtime="tpu")


def test_the_latency_budget_chooses_the_most_accurate_model_that_is_fast_enough():
    artifacts = [Artifact.measured({"file_bytes": 1, "params": 1, "macs": 1, "val_accuracy": acc}, name=n, stage="s", file=n)
                 for n, acc in (("big", 0.7), ("mid", 0.6), ("small", 0.5))]
    measured = {"big": {"median_ms": 0.3, "p90_ms": 0.32}, "mid": {"median_ms": 0.11, "p90_ms": 0.12},
                "small": {"median_ms": None, "p90_ms": None}}
    target = LatencyTarget(0.12)
    choice = choose_by_latency(artifacts, target, measured)
    assert choice["chosen"] == "mid" and [t["fits"] for t in choice["tried"]] == [False, True, False]
    with pytest.raises(NetcompressError, match="no model runs within 0.05 ms on ort.*fastest is mid at 0.110 ms"):
        choose_by_latency(artifacts, LatencyTarget(0.05), measured)
