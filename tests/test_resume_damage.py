"""Resuming from a run folder whose state files are damaged or foreign: each is refused in one line naming the
file and what to delete, never a traceback, and a record naming a model file that is gone is not trusted."""

import json
from dataclasses import asdict

import pytest
import torch

from netcompress.errors import NetcompressError
from netcompress.pipeline.records import read_done
from netcompress.pipeline.stages import Run
from netcompress.train.checkpoint import resume
from netcompress.train.config import TrainConfig


def _training():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": 1,
             "best_accuracy": 0.5, "best_epoch": 1, "history": [{"epoch": 1, "train_loss": 1.0}]}
    return net, opt, sched, state


INFO = {"config": json.loads(json.dumps(asdict(TrainConfig())))}


@pytest.mark.parametrize("state, run_json, message", [
    (lambda s: 3, INFO, r"state.pt is damaged \(TypeError\); delete it"),
    (lambda s: [1, 2], INFO, r"state.pt is damaged"),
    (lambda s: {**s, "history": [{"loss": 1.0}]}, INFO, r"state.pt holds no readable history"),
    (lambda s: {**s, "history": 7}, INFO, r"state.pt holds no readable history"),
    (lambda s: {**s, "history": [{"epoch": "one"}]}, INFO, r"state.pt holds no readable history"),
    (lambda s: {**s, "epoch": "x"}, INFO, r"state.pt is damaged \(ValueError\)"),
    (lambda s: s, [1], r"run.json is not the settings object netcompress writes \(a JSON list\); delete"),
    (lambda s: s, 5, r"run.json is not the settings object .*\(a JSON int\)"),
    (lambda s: s, {"config": "x"}, r"run.json is not the settings object .*\(its config is a str\)"),
])
def test_a_damaged_training_state_is_refused_in_one_line(tmp_path, state, run_json, message):
    net, opt, sched, good = _training()
    (tmp_path / "run.json").write_text(json.dumps(run_json))
    torch.save(state(good), tmp_path / "state.pt")
    with pytest.raises(NetcompressError, match=message) as err:
        resume(tmp_path, INFO, net, opt, sched, torch.device("cpu"))
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_a_sound_training_state_resumes_after_its_epoch(tmp_path):
    net, opt, sched, good = _training()
    (tmp_path / "run.json").write_text(json.dumps(INFO))
    torch.save(good, tmp_path / "state.pt")
    assert resume(tmp_path, INFO, net, opt, sched, torch.device("cpu"))[0] == 2


def _artifact(file: str) -> dict:
    return {"name": "student", "stage": "student", "file": file, "format": "safetensors", "precision": "fp32",
            "runtime": "torch", "file_bytes": 10, "params": 1, "macs": 1, "val_accuracy": 0.5}


@pytest.mark.parametrize("text, message", [
    ("{not json", r"done.json is damaged \(JSONDecodeError, not JSON\); delete .*teacher to make that stage"),
    (b"\xff\xfe\x00garbage", r"done.json is damaged \(\w+, not JSON\)"),
    ("[1, 2]", r"done.json holds a JSON list, not the object netcompress writes"),
    ("7", r"done.json holds a JSON int"),
    ("{}", r"done.json lists no artifacts"),
    (json.dumps({"artifacts": [5]}), r"done.json: artifact 1 is not a model record"),
    (json.dumps({"artifacts": [{"name": "x"}]}), r"done.json: artifact 1 is not a model record"),
    (json.dumps({"model_file": "RUN/teacher/gone.safetensors", "artifacts": []}),
     r"done.json names the model file '.*gone.safetensors', which is missing; delete .*teacher"),
    (json.dumps({"artifacts": [_artifact("teacher/gone.safetensors")]}),
     r"names the model file 'teacher/gone.safetensors', which is missing"),
])
def test_a_damaged_or_foreign_stage_record_is_refused(tmp_path, text, message):
    done = tmp_path / "teacher" / "done.json"
    done.parent.mkdir()
    text = text.replace("RUN", str(tmp_path)) if isinstance(text, str) else text
    done.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(NetcompressError, match=message) as err:
        read_done(done, tmp_path)
    assert "\n" not in str(err.value)


def test_a_sound_stage_record_is_read(tmp_path):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "best.safetensors").write_bytes(b"x")
    record = {"model_file": str(tmp_path / "teacher" / "best.safetensors"),
              "artifacts": [_artifact("teacher/best.safetensors")]}
    (tmp_path / "teacher" / "done.json").write_text(json.dumps(record))
    assert read_done(tmp_path / "teacher" / "done.json", tmp_path) == record


def test_a_run_does_not_skip_a_stage_whose_model_file_is_gone(tmp_path):
    run = object.__new__(Run)  # a run folder alone: the stage's record is all this reads
    run.dir, run.progress = tmp_path, False
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "done.json").write_text(json.dumps(
        {"model_file": str(tmp_path / "teacher" / "best.safetensors"), "artifacts": [], "settings": {}}))
    with pytest.raises(NetcompressError, match="which is missing; delete"):
        run.stage("teacher", lambda out: pytest.fail("the stage ran"), {})


def test_a_latency_table_with_foreign_entries_measures_those_again(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import netcompress as nc
    from netcompress.measure.latency import LatencyTarget
    from netcompress.pipeline import stages
    from netcompress.pipeline.artifact import Artifact
    from netcompress.pipeline.stages import measure_together

    measured = []

    def timed(models, _cfg):  # the runtime's measurement itself is latency's own tests' business
        measured.extend(models)
        return {name: SimpleNamespace(median_ms=1.0, p90_ms=1.1, spread=0.1, note="") for name in models}

    monkeypatch.setattr(stages, "latency", timed)

    run = object.__new__(Run)
    run.dir, run.progress = tmp_path, False
    nc.save(nc.new_model("studentnet", ["a", "b"], 16, widths=[8] * 8), tmp_path / "m.safetensors")
    kept = {"median_ms": 1.5, "p90_ms": 2.0, "spread": 0.3, "note": ""}
    artifacts = [Artifact(name=n, stage="s", file="m.safetensors", format="safetensors", precision="fp32",
                          runtime="torch", file_bytes=1, params=1, macs=1, val_accuracy=0.5) for n in ("m", "kept")]
    target = LatencyTarget(1000.0, "torch")
    table = tmp_path / "latency" / "torch-b1-t1.json"
    table.parent.mkdir()
    table.write_text(json.dumps({"m": 5, "kept": kept}))
    found = measure_together(run, artifacts, target.config, tries=1)
    assert measured == ["m"] and found["kept"] == kept and found["m"]["median_ms"] == 1.0
