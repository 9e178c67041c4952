"""Numbers as netcompress writes them: floats that came from float32 read as the float32 they are, budgets name
only the limits given, stage names read as words."""

import json

import numpy as np
import pytest

from netcompress.errors import NetcompressError
from netcompress.files import json_text
from netcompress.pipeline.artifact import Artifact
from netcompress.pipeline.budgets import choose
from netcompress.pipeline.recipe import PruneSection


@pytest.mark.parametrize("value, written", [
    (float(np.float32(0.436)), "0.436"),
    (float(np.float32(1 / 3)), "0.33333334"),
    (0.1, "0.1"),  # not a float32: every digit kept
    (1733312345.123, "1733312345.123"),
    (5e-4, "0.0005"),
    (2.0, "2.0"),
    (7, "7"),
    (True, "true"),
])
def test_json_text_writes_float32_values_short_and_keeps_other_floats(value, written):
    assert json_text({"v": [value]}, indent=None) == f'{{"v": [{written}]}}'
    assert json.loads(json_text(value)) == pytest.approx(value, rel=1e-7)


def test_json_text_changes_nothing_it_is_given():
    row = {"acc": float(np.float32(0.436)), "rows": [{"x": float(np.float32(0.1))}]}
    before = json.dumps(row)
    json_text(row)
    assert json.dumps(row) == before


def _artifact(name, file_bytes, params):
    return Artifact(name=name, stage="s", file=f"{name}.safetensors", format="safetensors", precision="fp32",
                    runtime="torch", file_bytes=file_bytes, params=params, macs=1, val_accuracy=0.5)


@pytest.mark.parametrize("target_bytes, target_params, limits", [
    (10, None, "bytes <= 10"),
    (None, 10, "params <= 10"),
    (10, 20, "bytes <= 10 and params <= 20"),
])
def test_a_budget_error_names_only_the_limits_given(target_bytes, target_params, limits):
    with pytest.raises(NetcompressError) as err:
        choose([_artifact("a", 1000, 1000)], target_bytes, target_params)
    assert f"no model meets the budget ({limits});" in str(err.value) and "None" not in str(err.value)


@pytest.mark.parametrize("fields, stage", [
    ({"method": "l2", "rate": 0.5, "steps": 1, "finetune_epochs": 1}, "prune-l2-0.5-1step-ft1"),
    ({"method": "l2", "rate": 0.5, "steps": 3, "finetune_epochs": 1}, "prune-l2-0.5-3steps-ft1"),
    ({"method": "l2", "target_latency_ms": 1000.0, "steps": 5}, "prune-latency-1000ms-ort-b1-t1-l2-5steps-ft5"),
    ({"method": "l2", "target_latency_ms": 0.12, "steps": 1}, "prune-latency-0.12ms-ort-b1-t1-l2-1step-ft5"),
])
def test_stage_names_read_as_words(fields, stage):
    assert PruneSection(**fields).stage == stage


def _source(file: str) -> Artifact:
    return _artifact("m", 1, 1).replace(file=file)


@pytest.mark.parametrize("i, file, name", [
    (0, "student/best.safetensors", "00-student-best.ncq"),
    (2, "prune-l2-0.5-3steps-ft5/step1.safetensors", "02-prune-l2-0.5-3steps-ft5-step1.ncq"),
    (3, "prune-slim-0.7-2steps-ft1/step1.safetensors", "03-prune-slim-0.7-2steps-ft1-step1.ncq"),
    (4, "compare-arch/depthwise/best.safetensors", "04-compare-arch-depthwise-best.ncq"),
    (5, "/elsewhere/models/teacher.safetensors", "05-models-teacher.ncq"),
])
def test_codec_files_are_named_after_their_source_model(i, file, name):
    from netcompress.pipeline.stages import codec_file_name

    assert codec_file_name(i, _source(file)) == name


def test_a_stage_record_writes_results_short_and_its_settings_exact(tmp_path):
    from netcompress.pipeline.stages import Run

    run = object.__new__(Run)  # a run folder alone: the stage's record is all this reads and writes
    run.dir, run.progress = tmp_path, False
    settings = {"lr": float(np.float32(0.436))}
    run.stage("s", lambda out: {"artifacts": [], "val_accuracy": float(np.float32(0.436))}, settings)
    text = (tmp_path / "s" / "done.json").read_text()
    assert '"val_accuracy": 0.436,' in text and '"lr": 0.4359999895095825' in text
    run.stage("s", lambda out: pytest.fail("made again"), settings)  # same settings: skipped
