"""`auto`: a recipe planned to the time from measured batches, its candidates (a plain baseline, pretrained
students, a teacher used only where it beats them), and the choice with its evidence."""

import json
from dataclasses import replace

import pytest
import torch

import netcompress as nc
from netcompress.cli.auto import seconds_of
from netcompress.measure.latency import LatencyTarget
from netcompress.pipeline.auto import (AutoConfig, Candidates, Finalist, auto, best_student, evidence,
                                     largest_factor, lite0_depth, pace, recipe_text)
from netcompress.pipeline.recipe import load_recipe
from test_cli import run_cli


def test_durations_are_read_as_people_write_them():
    assert [seconds_of(t) for t in ("30m", "1.5h", "90s", "600", "2 min")] == [1800, 5400, 90, 600, 120]
    with pytest.raises(nc.NetcompressError, match="--time 'soon': give a duration such as 30m"):
        seconds_of("soon")


def test_a_config_outside_what_can_run_is_refused():
    for bad, match in ((dict(target_bytes=10), "target_bytes = 10"), (dict(target_bytes=10**5, time_s=5),
                                                                     "at least a minute"),
                       (dict(target_bytes=10**5, image_size=3), "image_size = 3")):
        with pytest.raises(nc.NetcompressError, match=match):
            AutoConfig(**bad)


def test_the_epochs_are_scaled_to_the_largest_factor_that_fits():
    costs = [(10.0, 100.0), (5.0, 50.0)]  # seconds = fixed + slope x factor, per stage
    assert largest_factor(costs, 200.0, 0.05) == 1.0
    assert largest_factor(costs, 90.0, 0.05) == pytest.approx(0.5, abs=1e-6)  # 15 + 150 f = 90
    assert largest_factor(costs, 20.0, 0.05) is None  # even the floor needs 22.5 s


def test_the_time_left_is_planned_at_the_pace_the_first_round_ran(tmp_path):
    planned = [{"stage": "teacher", "estimated_seconds": 300.0}, {"stage": "student", "estimated_seconds": 100.0},
               {"stage": "finalist", "estimated_seconds": 600.0}, {"stage": "decode", "estimated_seconds": 0.0}]
    assert pace(tmp_path, planned) == 1.0  # nothing ran yet: the estimates as they are
    for stage, wall in (("teacher", 200.0), ("student", 120.0), ("decode", 3.0)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "done.json").write_text(json.dumps({"wall_seconds": wall}))
    assert pace(tmp_path, planned) == pytest.approx(320 / 400)  # the unestimated decode is left out


def test_the_student_fits_the_budget_at_four_bits():
    big, small = lite0_depth(150_000, 10), lite0_depth(20_000, 10)
    assert big > small >= 2
    for depth, budget in ((big, 150_000), (small, 20_000)):
        with torch.device("meta"):
            fits = nc.create_model("efficientnet_lite0", blocks=depth, num_classes=10, pretrained=False)
            deeper = nc.create_model("efficientnet_lite0", blocks=depth + 1, num_classes=10, pretrained=False)
        assert sum(p.numel() for p in fits.parameters()) * 0.55 <= budget
        assert sum(p.numel() for p in deeper.parameters()) * 0.55 > budget  # the deepest that fits


def test_the_first_round_compares_and_the_second_trains_the_finalist(tmp_path, jpeg_dataset):
    cfg, c = AutoConfig(target_bytes=60_000, time_s=600), Candidates(40, 64, 6)
    path = tmp_path / "auto.toml"
    path.write_text(recipe_text(str(jpeg_dataset), cfg, c, 0.1))
    first = load_recipe(path)
    assert first.student.teach == "if-better" and first.teacher.epochs == first.student.epochs == 1  # fair
    assert [(v.model or "studentnet", v.model_args.get("blocks"), v.image_size, v.teacher)
            for v in first.student_variant] == [
        ("studentnet", None, 0, False), ("efficientnet_lite0", 6, 64, False),
        ("efficientnet_lite0", 6, 0, False)]  # at the data's own 40 px too: does upsampling pay?
    assert not first.quantize and not first.evaluate.test and first.student.views == 3  # no more views than epochs
    path.write_text(recipe_text(str(jpeg_dataset), cfg, c, 0.1, Finalist("efficientnet_lite0", {"blocks": 6}, 64, 12,
                                                                       "student-x/best.safetensors")))
    second = load_recipe(path)
    assert second.student == first.student and second.teacher == first.teacher  # the first round's stages stand
    assert second.student_variant[:3] == first.student_variant
    finalist = second.student_variant[3]
    assert (finalist.model_args, finalist.image_size, finalist.epochs, finalist.teacher, finalist.init) == (
        {"blocks": 6}, 64, 12, True, "student-x/best.safetensors")  # trained on from its first-round weights
    assert finalist.stage == "student-efficientnet_lite0-blocks6-64px-12epochs-continued"
    assert second.evaluate.budgets == [60_000] and [q.finetune_epochs for q in second.quantize] == [1, 1, 0]
    assert [(q.best, q.within_bytes) for q in second.quantize] == [(2, 60_000), (2, 60_000), (2, 0)]
    path.write_text(recipe_text(str(jpeg_dataset), cfg, replace(c, teacher=False), 0.1))  # short of time
    alone = load_recipe(path)
    assert alone.student.teach == "never" and alone.student.views == 0
    assert alone.student_variant == first.student_variant


def test_the_finalist_is_the_model_of_the_most_accurate_student(tmp_path, jpeg_dataset):
    path = tmp_path / "auto.toml"
    path.write_text(recipe_text(str(jpeg_dataset), AutoConfig(target_bytes=60_000), Candidates(40, 64, 6), 0.1))
    recipe = load_recipe(path)
    summary = {"artifacts": [{"name": "teacher", "stage": "teacher", "val_accuracy": 0.9, "file": "t.st"},
                             {"name": "plain", "stage": "student-plain", "val_accuracy": 0.5, "file": "p.st"},
                             {"name": "lite 64", "stage": "student-efficientnet_lite0-blocks6-64px-plain",
                              "val_accuracy": 0.6, "file": "l64.st"},
                             {"name": "lite 40", "stage": "student-efficientnet_lite0-blocks6-plain",
                              "val_accuracy": 0.55, "file": "l40.st"}]}
    best, finalist = best_student(summary, recipe)
    assert best["name"] == "lite 64" and finalist == Finalist("efficientnet_lite0", {"blocks": 6}, 64, 0, "l64.st")
    summary["artifacts"][1]["val_accuracy"] = 0.7  # the teacher never counts; the StudentNet may win
    assert best_student(summary, recipe)[1] == Finalist("studentnet", {}, 0, 0, "p.st")


def test_a_latency_budget_prunes_to_it_and_deploys_for_its_runtime(tmp_path, jpeg_dataset):
    cfg = AutoConfig(target_bytes=60_000, time_s=600, latency=LatencyTarget(0.2, "ort"))
    path = tmp_path / "auto.toml"
    path.write_text(recipe_text(str(jpeg_dataset), cfg, Candidates(40, 64, 6), 0.1,
                                Finalist("studentnet", {}, 0, 5)))
    recipe = load_recipe(path)
    (prune,) = recipe.prune
    assert (prune.target_latency_ms, prune.runtime, prune.batch, prune.finetune_epochs) == (0.2, "ort", 1, 1)
    assert recipe.deploy.run and recipe.deploy.targets == ["onnx"]  # the files ONNX Runtime runs as they are


def test_with_a_latency_the_choice_holds_both_budgets_and_its_baseline_too():
    def artifact(name, stage, nbytes, val, source=None):
        return {"name": name, "stage": stage, "file": f"{name}.x", "file_bytes": nbytes, "val_accuracy": val,
                "details": {"source": source} if source else {}}

    summary = {"artifacts": [artifact("plain", "student-plain", 90_000, 0.60),
                             artifact("lite", "student-lite", 80_000, 0.75),
                             artifact("lite int8", "deploy", 70_000, 0.70, source="lite")],
               "budget": {"chosen": "lite"}, "val_images": 400,
               "latency_budget": {"chosen": "lite int8", "tried": [
                   {"name": "plain", "median_ms": 0.1, "fits": True},
                   {"name": "lite", "median_ms": 0.5, "fits": False},
                   {"name": "lite int8", "median_ms": 0.18, "fits": True}]}}
    found = evidence(summary, 100_000)
    assert found["chosen"]["name"] == "lite int8" and found["chosen"]["latency_ms"] == 0.18
    assert found["baseline"]["name"] == "plain"
    assert [c["name"] for c in found["candidates"]] == ["lite int8", "plain"]  # "lite" is too slow
    del summary["latency_budget"]
    assert evidence(summary, 100_000)["chosen"]["name"] == "lite"


@pytest.mark.slow
def test_auto_runs_within_the_time_and_says_why_the_winner_won(jpeg_dataset, tmp_path):
    out = tmp_path / "auto"
    record = auto(jpeg_dataset, out, AutoConfig(target_bytes=60_000, time_s=240), device="cpu", progress=False)
    assert (out / "auto.toml").exists() and (out / "report.html").exists()
    assert record["plan"]["estimated_seconds"] <= 240 and record["wall_seconds"] >= record["plan"]["planning_seconds"] > 0
    chosen = record["chosen"]
    assert chosen["file_bytes"] <= 60_000 and chosen["test_accuracy"] is not None
    assert chosen["val_accuracy"] == max(c["val_accuracy"] for c in record["candidates"])
    assert record["baseline"] is None or record["baseline"]["val_accuracy"] <= chosen["val_accuracy"]
    assert record["validation"]["images"] == 6 and record["validation"]["standard_error"] > 0
    assert "beat" in record["teaching"]["why"]
    finalist = record["finalist"]  # the model of the first round's best student, given the time left
    assert finalist["from"] in {a["name"] for a in json.loads((out / "summary.json").read_text())["artifacts"]}
    assert finalist["epochs"] == 0 or finalist["epochs"] > 1
    assert json.loads((out / "auto.json").read_text())["chosen"] == chosen
    # the same command again resumes the plan (nothing is trained again); other settings are refused
    code, _, err = run_cli("auto", jpeg_dataset, "--target-bytes", 60_000, "--time", "4m", "--out", out,
                           "--device", "cpu", "--no-progress")
    assert code == 0, err
    code, _, err = run_cli("auto", jpeg_dataset, "--target-bytes", 50_000, "--out", out)
    assert code == 2 and "holds an auto run planned with" in err


@pytest.mark.slow
def test_auto_with_a_latency_budget_chooses_a_file_that_runs_within_it(jpeg_dataset, tmp_path):
    out = tmp_path / "auto"
    code, text, err = run_cli("auto", jpeg_dataset, "--target-bytes", 2_000_000, "--target-latency", 50,
                              "--runtime", "ort", "--time", "15m", "--out", out, "--device", "cpu", "--no-progress",
                              "--json")
    assert code == 0, err
    record = json.loads(text)
    chosen = record["chosen"]
    assert chosen["file_bytes"] <= 2_000_000 and chosen["latency_ms"] <= 50 and chosen["test_accuracy"] is not None
    assert all(c["latency_ms"] <= 50 for c in record["candidates"])
    stages = {s["stage"] for s in record["plan"]["stages"]}
    assert "deploy" in stages and any(s.startswith("prune-latency") for s in stages)
    assert any(out.glob("deploy/*/*.onnx")) or any(out.glob("deploy/**/*.onnx"))
