import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import netcompress as nc
from netcompress.errors import NetcompressError
from netcompress.pipeline.artifact import DECODED, Artifact
from netcompress.pipeline.recipe import load_recipe
from netcompress.pipeline.budgets import choose, codec_losses, weigh_teacher
from netcompress.pipeline.plan import plan_recipe
from netcompress.pipeline.records import stage_wall_seconds
from netcompress.pipeline.report import write_report
from netcompress.pipeline.stages import run_recipe

TINY = """
seed = 0
[data]
root = "{root}"
image_size = 32
[teacher]
model = "studentnet"
epochs = 2
batch_size = 4
[student]
model = "studentnet"
epochs = {student_epochs}
batch_size = 4
[[prune]]
rate = 0.5
steps = 1
finetune_epochs = 1
[[prune]]
rate = 0.7
steps = 2
finetune_epochs = 1
distill = false
[[lowrank]]
energy = 0.7
finetune_epochs = 1
[compare_arch]
run = true
budget_params = 30000
epochs = 1
[[quantize]]
codec = "kbit"
bits = 4
entropy = true
"""


def write_recipe(tmp_path, root, student_epochs=2):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(root=root, student_epochs=student_epochs))
    return path


def run_cli(*args, cache):
    env = dict(os.environ, NETCOMPRESS_CACHE=str(cache))
    return subprocess.Popen([sys.executable, "-m", "netcompress.cli", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("text, message", [
    ("[student]\nepochs = -1", "[student] bad training settings: epochs = -1 (must be an integer >= 1)"),
    ("[student]\nepoch = 3", "[student] has no field 'epoch'; allowed: model, epochs"),
    ("[student]\nmethod = 'fitnets'", "[student] method = 'fitnets': choose one of logits, rkd"),
    ("[student]\ntemperature = inf", "temperature = inf must be a finite number > 0"),
    ("[student]\nmodel_args = {depth = 8}", "[student] model_args depth: studentnet takes"),
    ("[student]\nmodel = 'efficientnet_lite0'\nmodel_args = {depth = 8}", "model_args depth: efficientnet_lite0 "
     "takes blocks, head, input_scaling, pretrained"),
    ("[student]\nmodel_args = 8", "[student] model_args = 8 must be a dict"),
    ("[student]\nmodel = 'mobilenet_v9'", "unknown model 'mobilenet_v9'"),
    ("[[prune]]\nrate = 1.5", "[[prune]] rate = 1.5 must lie strictly between 0 and 1"),
    ("[[prune]]\nmethod = 'random'", "[[prune]] method = 'random': choose one of slim, l1, l2, taylor, magnitude"),
    ("[[prune]]\nfinetune_epochs = -3", "[[prune]] bad training settings: epochs = -3"),
    ("[data]\nimage_size = 'big'", "[data] image_size = 'big' must be an int"),
    ("[data]\nimage_size = 100000", "image_size = 100000 must lie in 8..4096"),
    ("seed = 'abc'", "seed = 'abc' must be an int"),
    ("seed = 1.7", "seed = 1.7 must be an int"),
    ("[optimizer]\nlr = 1", "unknown section(s) optimizer"),
    ("[student\n", "is not valid TOML"),
    ("[[quantize]]\ncodec = 'int4'", "[[quantize]] codec 'int4': choose one of fp16, int8-minmax"),
    ("[[quantize]]\ncodec = 'kbit'\nbits = 12", "[[quantize]] bits = 12: codec kbit takes 2 to 8 bits"),
    ("[[lowrank]]\nenergy = 0.5\nrank_ratio = 0.5", "exactly one of energy E (e.g. 0.9), rank_ratio R"),
    ("[[prune]]\nrate = 0.5\n[[prune]]\nrate = 0.5", "two [[prune]] tables describe the same run"),
    ("[[quantize]]\ncodec = 'fp16'\n[[quantize]]\ncodec = 'fp16'\nbest = 1", "two [[quantize]] tables describe the "
     "same run (fp16)"),
    ("[[quantize]]\ncodec = 'fp16'\nbest = -1", "best = -1, within_bytes = 0: use 0"),
])
def test_recipe_errors_name_the_field_and_what_is_allowed(tmp_path, text, message):
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(NetcompressError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_recipe(tmp_path / "r.toml")


def test_every_setting_that_changes_a_result_changes_the_stage_name(tmp_path):
    # a rerun after an edit must not reuse a stage made with other settings
    (tmp_path / "r.toml").write_text("[[prune]]\nrate = 0.5\n[[prune]]\nrate = 0.5\nlr = 3e-4\n"
                                     "[[prune]]\nrate = 0.5\nsource = 'teacher'\nprecise_bn = 512\n"
                                     "[[lowrank]]\nenergy = 0.5\nlr = 1e-4\nmin_saving = 0.2\n"
                                     "[[quantize]]\ncodec = 'kbit'\nbits = 4\nfinetune_epochs = 2\nfinetune_lr = 1e-4\n"
                                     "calibration = 64\nfinetune_average = 0.5")
    recipe = load_recipe(tmp_path / "r.toml")
    assert [p.stage for p in recipe.prune] == ["prune-slim-0.5-5steps-ft5", "prune-slim-0.5-5steps-ft5-lr0.0003",
                                               "prune-teacher-slim-0.5-5steps-ft5-precisebn512"]
    assert recipe.lowrank[0].stage == "lowrank-energy-0.5-ft3-lr0.0001-minsaving0.2"
    assert recipe.quantize[0].stage == "quantize-kbit-4bit-qat2-lr0.0001-avg0.5-calib64"


def one_epoch_recipe(path, root, more: str):
    """A recipe with a 1-epoch StudentNet teacher and student at 32 px, and `more` tables."""
    path.write_text(f"""
[data]
root = "{root}"
image_size = 32
[teacher]
model = "studentnet"
epochs = 1
batch_size = 4
[student]
model = "studentnet"
epochs = 1
batch_size = 4
{more}""")
    return path


@pytest.mark.slow
def test_a_rerun_refuses_a_stage_made_with_other_settings(jpeg_dataset, tmp_path):
    recipe = one_epoch_recipe(tmp_path / "r.toml", jpeg_dataset,
                              "[[quantize]]\ncodec = 'fp16'\n[[quantize]]\ncodec = 'int8-minmax'\nbest = 1\n"
                              "within_bytes = 100000\n[evaluate]\ntest = false\n")
    run = tmp_path / "run"
    first = run_recipe(load_recipe(recipe), run, torch.device("cpu"), progress=False)
    with pytest.raises(NetcompressError, match=r"run/student was made with other settings \(student.epochs: 1 -> 2\)"
                                               r".*write the run to a new --out, or delete"):
        run_recipe(load_recipe(recipe, ["student.epochs=2"]), run, torch.device("cpu"), progress=False)
    assert json.loads((run / "summary.json").read_text()) == first  # nothing half-written
    recipe.write_text(recipe.read_text() + "[[lowrank]]\nenergy = 0.5\nfinetune_epochs = 0\n")
    again = run_recipe(load_recipe(recipe), run, torch.device("cpu"), progress=False)  # a new source: fp16 again
    assert [a["name"] for a in again["artifacts"] if a["stage"] == "quantize-fp16"] == [
        "student (studentnet, distilled), fp16", "lowrank-energy-0.5-ft0, factorized, fp16"]


@pytest.mark.slow
def test_a_pruning_run_can_start_from_the_teacher(jpeg_dataset, tmp_path):
    recipe = one_epoch_recipe(tmp_path / "r.toml", jpeg_dataset, "[[prune]]\nsource = 'teacher'\nmethod = 'l2'\n"
                              "rate = 0.5\nsteps = 1\nfinetune_epochs = 1\nprecise_bn = 8\n[evaluate]\ntest = false\n")
    summary = run_recipe(load_recipe(recipe), tmp_path / "run", torch.device("cpu"), progress=False)
    stage = tmp_path / "run" / "prune-teacher-l2-0.5-1step-ft1-precisebn8"
    rows = json.loads((stage / "done.json").read_text())["rows"]
    teacher = next(a for a in summary["artifacts"] if a["stage"] == "teacher")
    assert rows[0]["val_accuracy"] == teacher["val_accuracy"] and rows[0]["params"] == teacher["params"]
    start, trained = nc.load(stage / "step0.safetensors"), nc.load(tmp_path / "run" / "teacher" / "best.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), trained.state_dict().values()))
    assert rows[1]["params"] < rows[0]["params"] / 3
    with pytest.raises(NetcompressError, match="source = 'ta' must be"):
        load_recipe(one_epoch_recipe(tmp_path / "bad.toml", jpeg_dataset, "[[prune]]\nsource = 'ta'\n"))


def test_the_student_takes_model_arguments(jpeg_dataset, tmp_path):
    recipe = one_epoch_recipe(tmp_path / "r.toml", jpeg_dataset, "[evaluate]\ntest = false\n")
    overrides = ["student.model=efficientnet_lite0", "student.model_args={blocks = 3, head = 16}"]
    summary = run_recipe(load_recipe(recipe, overrides), tmp_path / "run", torch.device("cpu"), progress=False)
    student = nc.load(tmp_path / "run" / "student" / "best.safetensors")
    assert nc.spec_of(student).kwargs["blocks"] == 3 and len(student.net._blocks) == 3
    assert "student (efficientnet_lite0 blocks=3 head=16, distilled)" in [a["name"] for a in summary["artifacts"]]


@pytest.mark.slow
def test_student_variants_share_the_teaching_and_the_codecs(jpeg_dataset, tmp_path):
    recipe = one_epoch_recipe(tmp_path / "r.toml", jpeg_dataset, "views = 2\n[[student_variant]]\n"
                              "model_args = {width_mult = 0.5}\n[[student_variant]]\nimage_size = 24\n"
                              "[[quantize]]\ncodec = 'fp16'\n[[quantize]]\ncodec = 'int8-minmax'\nbest = 1\n"
                              "within_bytes = 100000\n[evaluate]\ntest = false\n")
    run = tmp_path / "run"
    summary = run_recipe(load_recipe(recipe), run, torch.device("cpu"), progress=False)
    half = nc.load(run / "student-width_mult0.5" / "best.safetensors")
    assert nc.count_parameters(half) < nc.count_parameters(nc.load(run / "student" / "best.safetensors")) / 2
    assert not (run / "student-width_mult0.5" / "teacher_views.safetensors").exists()  # the student's are reused
    assert [a["name"] for a in summary["artifacts"] if a["stage"] == "quantize-fp16"] == [
        "student (studentnet, distilled), fp16", "student (studentnet width_mult=0.5, distilled), fp16",
        "student (studentnet, 24 px, distilled), fp16"]
    # best = 1 within 100,000 bytes: only the half-width student's 8-bit file fits (the others' are over 250 KB)
    assert [a["name"] for a in summary["artifacts"] if a["stage"] == "quantize-int8-minmax-best1-within100000"] == [
        "student (studentnet width_mult=0.5, distilled), int8-minmax"]
    # a student at its own input size: trained, validated and stored at 24 px, the same teaching
    small = nc.load(run / "student-24px" / "best.safetensors")
    assert nc.spec_of(small).input_size == 24
    at_24 = nc.evaluate(small, nc.ImageFolderData(jpeg_dataset, 24), "validation", device="cpu")["accuracy"]
    by_name = {a["name"]: a for a in summary["artifacts"]}
    assert by_name["student (studentnet, 24 px, distilled)"]["val_accuracy"] == pytest.approx(at_24, abs=1e-4)
    stored = nc.load(run / by_name["student (studentnet, 24 px, distilled), fp16"]["file"])
    assert nc.spec_of(stored).input_size == 24
    with pytest.raises(NetcompressError, match=r"\[\[student_variant\]\] model_args depth: studentnet takes"):
        load_recipe(recipe, ["student_variant.model_args={depth = 3}"])
    with pytest.raises(NetcompressError, match="model_args is empty"):
        load_recipe(recipe, ["student_variant.model_args={}"])


def test_a_teacher_teaches_only_where_it_beats_the_students_trained_without_it():
    def model(name, val):
        return Artifact.measured({"file_bytes": 1, "params": 1, "macs": 0, "val_accuracy": val}, name=name, stage="s",
                                 file=name)

    teacher, plains = model("teacher", 0.44), [model("plain a", 0.515), model("plain b", 0.40)]
    weak = weigh_teacher("if-better", teacher, plains)
    assert not weak["used"] and weak["best_plain"] == "plain a"
    assert weak["why"] == ("the teacher's validation accuracy 0.440 does not beat 0.515 of plain a, the best student "
                           "trained without it: every student learns from the labels alone")
    assert weigh_teacher("if-better", model("teacher", 0.6), plains)["used"]
    assert not weigh_teacher("if-better", model("teacher", 0.515), plains)["used"]  # a tie teaches nothing new
    assert weigh_teacher("always", teacher, plains) == {"used": True, "why": "teach = always"}
    within_noise = weigh_teacher("if-better", model("teacher", 0.53), plains, 750)  # 1 s.e. of 0.515 on 750: 0.018
    assert not within_noise["used"] and "by more than the noise of validation (±1.8 points)" in within_noise["why"]
    assert weigh_teacher("if-better", model("teacher", 0.54), plains, 750)["used"]


def test_a_stored_model_that_lost_more_than_a_few_points_is_flagged_in_the_report(tmp_path):
    def model(name, val, source=None, stage="student"):
        return Artifact.measured({"file_bytes": 1000, "params": 10, "macs": 0, "val_accuracy": val}, name=name,
                                 stage=stage, file=f"{name}.x", details={"source": source} if source else {}).to_dict()

    artifacts = [model("lite", 0.475), model("lite, int8-minmax", 0.315, "lite", "quantize-int8-minmax"),
                 model("lite, kbit-4bit", 0.46, "lite", "quantize-kbit-4bit")]
    assert codec_losses(artifacts) == [{"name": "lite, int8-minmax", "source": "lite", "val_accuracy": 0.315,
                                        "source_val_accuracy": 0.475, "drop_points": 16.0}]  # 1.5 points: not flagged
    (tmp_path / "summary.json").write_text(json.dumps({"artifacts": artifacts, "val_images": 400}))
    write_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "<h2>Flagged: lost to their codec</h2>" in html and html.count("<td>lite, int8-minmax</td>") == 2


@pytest.mark.slow
def test_teach_never_trains_no_teacher_and_the_student_is_its_plain_twin(jpeg_dataset, tmp_path):
    recipe = one_epoch_recipe(tmp_path / "r.toml", jpeg_dataset, "teach = 'never'\nviews = 0\n[[student_variant]]\n"
                              "teacher = false\n[[student_variant]]\nmodel_args = {width_mult = 0.5}\n"
                              "[[quantize]]\ncodec = 'fp16'\n[evaluate]\ntest = false\n")
    run = tmp_path / "run"
    summary = run_recipe(load_recipe(recipe), run, torch.device("cpu"), progress=False)
    assert not (run / "teacher").exists() and not (run / "student").exists()
    assert summary["teaching"] == {"used": False, "why": "teach = never: no teacher was trained"}
    assert [a["name"] for a in summary["artifacts"] if not a["stage"].startswith("quantize")] == [
        "student (studentnet, no teacher)", "student (studentnet width_mult=0.5, no teacher)"]
    plan = plan_recipe(load_recipe(recipe), tmp_path / "plan", measure=True)
    assert [s.name for s in plan.stages][:3] == ["decode", "student-plain", "student-width_mult0.5"]
    with pytest.raises(NetcompressError, match="teach = 'never' trains no teacher, and a \\[\\[prune\\]\\] table"):
        load_recipe(one_epoch_recipe(tmp_path / "r2.toml", jpeg_dataset, "teach = 'never'\n[[student_variant]]\n"
                                     "teacher = false\n[[prune]]\nsource = 'teacher'\n"))


@pytest.mark.slow
def test_a_student_variant_can_carry_on_from_a_students_weights(jpeg_dataset, tmp_path):
    recipe = one_epoch_recipe(tmp_path / "r.toml", jpeg_dataset, "lr = 1e-12\n[[student_variant]]\nepochs = 2\n"
                              "init = 'student/best.safetensors'\n[evaluate]\ntest = false\n")
    run = tmp_path / "run"
    summary = run_recipe(load_recipe(recipe), run, torch.device("cpu"), progress=False)
    assert "student (studentnet, 2 epochs more, distilled)" in {a["name"] for a in summary["artifacts"]}
    start = nc.load(run / "student" / "best.safetensors").state_dict()
    on = nc.load(run / "student-2epochs-continued" / "best.safetensors").state_dict()
    convs = [k for k, t in start.items() if t.dim() == 4]
    assert convs and all(torch.allclose(start[k], on[k], atol=1e-6) for k in convs)  # lr 1e-12: where it started
    with pytest.raises(NetcompressError, match="init = 'teacher/best.safetensors': its weights are not those of"):
        run_recipe(load_recipe(recipe, ["student_variant.init=teacher/best.safetensors",
                                        "student_variant.model_args={width_mult = 0.5}"]), tmp_path / "run2",
                   torch.device("cpu"), progress=False)


@pytest.mark.slow
def test_a_plain_student_is_the_baseline_the_teacher_must_beat(jpeg_dataset, tmp_path):
    recipe = one_epoch_recipe(tmp_path / "r.toml", jpeg_dataset, "teach = 'if-better'\n[[student_variant]]\n"
                              "teacher = false\n[[student_variant]]\nmodel = 'efficientnet_lite0'\n"
                              "model_args = {blocks = 2}\nteacher = false\n[[prune]]\nmethod = 'l2'\nrate = 0.5\n"
                              "steps = 1\nfinetune_epochs = 1\n[evaluate]\ntest = false\n")
    run = tmp_path / "run"
    summary = run_recipe(load_recipe(recipe), run, torch.device("cpu"), progress=False)
    teaching, by_stage = summary["teaching"], {a["stage"]: a for a in summary["artifacts"]}
    assert by_stage["student-plain"]["name"] == "student (studentnet, no teacher)"
    other = by_stage["student-efficientnet_lite0-blocks2-plain"]  # another model, its own arguments
    assert other["name"] == "student (efficientnet_lite0 blocks=2, no teacher)"
    best = max(by_stage["student-plain"], other, key=lambda a: a["val_accuracy"])
    assert teaching["best_plain"] == best["name"] and teaching["best_plain_val"] == best["val_accuracy"]
    assert teaching["used"] == (by_stage["teacher"]["val_accuracy"] > best["val_accuracy"])
    if teaching["used"]:
        assert by_stage["student"]["name"] == "student (studentnet, distilled)"
    else:  # the student is its plain twin, not trained twice
        assert "student" not in by_stage and not (run / "student").exists()
    assert (json.loads((run / "prune-l2-0.5-1step-ft1" / "done.json").read_text())["settings"].get("taught", True)
            == teaching["used"])
    write_report(run)
    assert "<h2>Teaching</h2>" in (run / "report.html").read_text()
    # a teacher no better than the plain student (the same training, so the same accuracy) teaches no one
    again = run_recipe(load_recipe(recipe, [f"teacher.file={run / 'student-plain' / 'best.safetensors'}"]),
                       tmp_path / "run2", torch.device("cpu"), progress=False)
    assert not again["teaching"]["used"] and "does not beat" in again["teaching"]["why"]
    # untaught, the student is its plain twin: not trained twice, and pruned from the twin's file
    assert not (tmp_path / "run2" / "student").exists()
    assert not [a for a in again["artifacts"] if a["stage"] == "student"]
    assert [a["name"] for a in again["artifacts"] if a["stage"] == "student-plain"] == [
        "student (studentnet, no teacher)"]
    assert any(a["stage"] == "prune-l2-0.5-1step-ft1" for a in again["artifacts"])
    with pytest.raises(NetcompressError, match="teach = 'if-better' compares the teacher with a student trained "
                                               "without one: add a"):
        load_recipe(recipe, ["student_variant.teacher=true", "student_variant.image_size=24"])
    with pytest.raises(NetcompressError, match="teach = 'sometimes': choose always or if-better"):
        load_recipe(recipe, ["student.teach=sometimes"])


@pytest.mark.slow
def test_a_field_added_since_a_stage_was_made_changes_nothing_at_its_default(jpeg_dataset, tmp_path):
    recipe = one_epoch_recipe(tmp_path / "r.toml", jpeg_dataset, "[[prune]]\nmethod = 'l2'\nrate = 0.5\nsteps = 1\n"
                              "finetune_epochs = 1\n[evaluate]\ntest = false\n")
    run = tmp_path / "run"
    first = run_recipe(load_recipe(recipe), run, torch.device("cpu"), progress=False)
    done = run / "prune-l2-0.5-1step-ft1" / "done.json"
    made = json.loads(done.read_text())
    for field in ("source", "precise_bn"):  # as a version before these fields recorded it
        del made["settings"]["prune"][field]
    done.write_text(json.dumps(made))
    again = run_recipe(load_recipe(recipe), run, torch.device("cpu"), progress=False)  # skipped, not refused

    def without_timings(result: dict) -> dict:  # a figure the machine was too busy for is measured again on a rerun
        artifacts = [{**a, "latency_ms": sorted(a["latency_ms"])} for a in result["artifacts"]]
        return {**{k: v for k, v in result.items() if k != "machine"}, "artifacts": artifacts}
    assert without_timings(again) == without_timings(first)


def test_overrides_from_the_command_line(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, "x"), ["student.epochs=7", "prune.finetune_epochs=3",
                                                       "data.root=../elsewhere/data"])
    assert recipe.student.epochs == 7 and [p.finetune_epochs for p in recipe.prune] == [3, 3]
    assert recipe.data.root == "../elsewhere/data"
    assert load_recipe(write_recipe(tmp_path, "x"), ["seed=3"]).seed == 3
    with pytest.raises(NetcompressError, match="seed"):
        load_recipe(write_recipe(tmp_path, "x"), ["seed=three"])
    with pytest.raises(NetcompressError, match="section.field=value or seed=N"):
        load_recipe(write_recipe(tmp_path, "x"), ["epochs=3"])


def test_stage_wall_seconds_of_a_run_resumed_over_several_calls(tmp_path):
    for stage, seconds in (("teacher", 120.5), ("student", 30.0)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "done.json").write_text(json.dumps({"artifacts": [], "wall_seconds": seconds}))
    (tmp_path / "deploy").mkdir()  # a stage that has not finished
    assert stage_wall_seconds(tmp_path) == {"student": 30.0, "teacher": 120.5}
    (tmp_path / "student" / "done.json").write_text("[1, 2]")
    with pytest.raises(NetcompressError, match="student.*delete"):
        stage_wall_seconds(tmp_path)


def test_budget_choice_and_an_impossible_budget():
    artifacts = [Artifact.measured({"file_bytes": size, "params": params, "macs": 0, "val_accuracy": acc},
                                   name=name, stage="s", file=name)
                 for name, size, params, acc in [("a", 500_000, 120_000, 0.7), ("b", 250_000, 60_000, 0.6),
                                                 ("c", 90_000, 20_000, 0.5)]]
    assert choose(artifacts, target_bytes=300_000)["chosen"] == "b"
    assert choose(artifacts, target_params=25_000)["chosen"] == "c"
    assert [t["fits"] for t in choose(artifacts, target_bytes=300_000)["tried"]] == [False, True, True]
    with pytest.raises(NetcompressError, match=r"no model meets the budget \(bytes <= 50,000\); the smallest is c: "
                                                "90,000 bytes"):
        choose(artifacts, target_bytes=50_000)


def test_artifacts_of_older_runs_read_as_records():
    older = {"name": "s, kbit-4bit", "stage": "quantize-kbit-4bit", "file": "q/00-best.ncq", "format": "ncq kbit-4bit",
             "params": 10, "macs": 20, "file_bytes": 30, "val_accuracy": 0.5, "latency_ms": "decoded to fp32",
             "step": 1}
    record = Artifact.from_dict(older)
    assert (record.format, record.precision, record.runtime, record.latency_ms) == ("ncq", "kbit-4bit", DECODED, {})
    assert record.details == {"step": 1} and record.candidate and record.label == "ncq kbit-4bit"
    assert Artifact.from_dict(record.to_dict()) == record


def test_every_model_is_timed_together_at_the_end_of_the_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from netcompress.pipeline import stages

    rounds = []

    def timed(models, cfg):  # the timing itself is measure/latency's business; here: who is timed with whom
        rounds.append((cfg.runtime, cfg.batch, sorted(models)))
        return {name: SimpleNamespace(median_ms=len(name) * cfg.batch, p90_ms=None, spread=0.0, note="")
                for name in models}

    monkeypatch.setattr(stages, "latency", timed)
    run = object.__new__(stages.Run)
    run.dir, run.progress = tmp_path, False
    nc.save(nc.new_model("studentnet", ["a", "b"], 16, widths=[8] * 8), tmp_path / "m.safetensors")
    made = {"ort@1": 99.0, "torch@1": 99.0, "torch@64": None}  # taken when each model was made, under other load

    def record(name, runtime="torch"):
        return Artifact(name=name, stage="s", file="m.safetensors", format="safetensors", precision="fp32",
                        runtime=runtime, file_bytes=1, params=1, macs=1, val_accuracy=0.5, latency_ms=made)

    artifacts = [record("big"), record("small"), record("small, 8-bit", DECODED)]
    timed_together = stages.with_latencies_measured_together(run, artifacts)
    assert rounds == [("ort", 1, ["big", "small"]), ("torch", 1, ["big", "small"]), ("torch", 64, ["big", "small"])]
    assert [a.latency_ms for a in timed_together] == [{"ort@1": 3, "torch@1": 3, "torch@64": 192},
                                                      {"ort@1": 5, "torch@1": 5, "torch@64": 320}, made]
    assert artifacts[0].latency_ms == made  # the argument is left as it was
    rounds.clear()
    assert stages.with_latencies_measured_together(run, artifacts) == timed_together and rounds == []  # kept


@pytest.mark.slow
def test_run_writes_every_stage_and_the_report_then_skips_on_rerun(jpeg_dataset, tmp_path):
    recipe, out, cache = write_recipe(tmp_path, jpeg_dataset), tmp_path / "run", tmp_path / "cache"
    proc = run_cli("run", recipe, "--out", out, "--target-bytes", 10**9, "--no-progress", "--json", cache=cache)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    names = [a["name"] for a in summary["artifacts"]]
    assert names[0].startswith("teacher") and names[1].startswith("student") and len(names) == 2 + 1 + 2 + 2 + 3 + 5
    lowrank = [a for a in summary["artifacts"] if a["stage"] == "lowrank-energy-0.7-ft1"]
    assert [a["name"] for a in lowrank] == ["lowrank-energy-0.7-ft1, factorized", "lowrank-energy-0.7-ft1, finetuned"]
    assert [a["candidate"] for a in lowrank] == [False, True]  # not fine-tuned: listed, never chosen
    assert [a["name"] for a in summary["artifacts"] if a["stage"].startswith("prune-")] == [
        "prune-slim-0.5-1step-ft1, step 1", "prune-slim-0.7-2steps-ft1-nodistill, step 1",
        "prune-slim-0.7-2steps-ft1-nodistill, step 2"]
    quantized = [a for a in summary["artifacts"] if a["stage"] == "quantize-kbit-4bit-lzma"]
    assert len(quantized) == 5 and all(a["file"].endswith(".ncq") for a in quantized)
    assert quantized[0]["file_bytes"] < summary["artifacts"][1]["file_bytes"] / 5
    assert summary["budget"]["chosen"] in names and set(summary["test"]) >= {names[0], names[1]}
    html = (out / "report.html").read_text()
    for section in ["Data", "Models", "Pruning", "Architecture comparison", "Size against accuracy", "Budget",
                    "Environment"]:
        assert f">{section}<" in html
    assert summary["splits"]["validation"]["images"] == summary["val_images"] and ">load during the run<" in html
    assert summary["machine"]["at_start"]["cores"] >= 1 and summary["machine"]["at_end"]["cpu"]
    timed = [a for a in summary["artifacts"]
             if isinstance(a.get("latency_ms"), dict) and a["latency_ms"].get("ort@1")]
    assert (">Latency against accuracy<" in html) == bool(timed)  # no plot when the machine was too busy to time
    assert html.count("data:image/png;base64,") == 3 + bool(timed)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/done.json")}
    assert len(stamps) == 7  # teacher, student, two pruning runs, one factorization, compare-arch, one codec
    metrics = {p: p.read_text() for p in out.glob("**/metrics.jsonl")}
    proc = run_cli("run", recipe, "--out", out, cache=cache)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/done.json")} == stamps
    assert "done earlier: skipped" in stderr and "epoch" not in stderr  # nothing trained again
    assert {p: p.read_text() for p in out.glob("**/metrics.jsonl")} == metrics


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_finished_stages(jpeg_dataset, tmp_path):
    recipe, out, cache = write_recipe(tmp_path, jpeg_dataset, student_epochs=40), tmp_path / "run", tmp_path / "c"
    proc = run_cli("run", recipe, "--out", out, "--no-progress", cache=cache)
    metrics = out / "student" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    teacher_done = (out / "teacher" / "done.json").stat().st_mtime_ns
    first_rows = metrics.read_text().splitlines()
    assert not (out / "student" / "done.json").exists()

    proc = run_cli("run", recipe, "--out", out, "--no-progress", cache=cache)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert (out / "teacher" / "done.json").stat().st_mtime_ns == teacher_done
    rows = [json.loads(r) for r in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 41))
    assert metrics.read_text().splitlines()[: len(first_rows) - 1] == first_rows[:-1]  # kept, not redone
    assert (out / "student" / "done.json").exists() and (out / "report.html").exists()


@pytest.mark.slow
def test_a_larger_teacher_and_cached_views(jpeg_dataset, tmp_path):
    """The teacher trains at 48 px, the student at 32 px from 2 cached mixed views of every image."""
    recipe = tmp_path / "views.toml"
    recipe.write_text(f"""
[data]
root = "{jpeg_dataset}"
image_size = 32
[teacher]
model = "studentnet"
image_size = 48
epochs = 1
batch_size = 4
[student]
model = "studentnet"
epochs = 2
batch_size = 4
temperature = 1.0
alpha = 1.0
views = 2
mixup = 0.5
cutmix = 1.0
[[prune]]
method = "l2"
rate = 0.5
steps = 1
finetune_epochs = 1
""")
    out = tmp_path / "run"
    proc = run_cli("run", recipe, "--out", out, "--no-progress", "--json", cache=tmp_path / "cache")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    artifacts = {a["stage"]: a for a in json.loads(stdout)["artifacts"]}
    import netcompress as nc

    assert nc.spec_of(nc.load(out / "teacher" / "best.safetensors")).input_size == 48
    student = nc.load(out / "student" / "best.safetensors")
    assert nc.spec_of(student).input_size == 32 and nc.spec_of(student).info.distilled_from["views"]["views"] == 2
    views = nc.TeacherViews.load(out / "student" / "teacher_views.safetensors")
    assert views.logits.shape == (12, 2, 3) and views.meta["image_size"] == 48
    assert artifacts["teacher"]["val_accuracy"] >= 0 and "prune-l2-0.5-1step-ft1" in artifacts


@pytest.mark.slow
def test_a_latency_budget_measures_every_candidate_and_reports_the_choice(jpeg_dataset, tmp_path):
    recipe = one_epoch_recipe(tmp_path / "fast.toml", jpeg_dataset,
                              "[[prune]]\nrate = 0.5\nsteps = 1\nfinetune_epochs = 1\n")
    out = tmp_path / "run"
    proc = run_cli("run", recipe, "--out", out, "--target-latency", 1000, "--runtime", "ort", "--no-progress",
                   "--json", cache=tmp_path / "cache")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    budget = summary["latency_budget"]
    assert budget["target"] == {"ms": 1000.0, "runtime": "ort", "batch": 1, "threads": 1}
    # the student, the slim step and the latency run's step 0 (already fast enough: nothing to cut)
    assert {t["name"] for t in budget["tried"]} == {a["name"] for a in summary["artifacts"] if a["stage"] != "teacher"}
    assert all(t["fits"] for t in budget["tried"] if t["median_ms"] is not None)
    assert budget["chosen"] in summary["test"]
    assert (out / "prune-latency-1000ms-ort-b1-t1-l2-5steps-ft5" / "done.json").exists()
    timed = json.loads((out / "latency" / "ort-b1-t1.json").read_text())  # the teacher too: the report's figures
    assert timed.keys() == {a["name"] for a in summary["artifacts"] if a["runtime"] != DECODED}
    assert all(timed[t["name"]]["median_ms"] == t["median_ms"] for t in budget["tried"])
    html = (out / "report.html").read_text()
    assert ">Latency budget<" in html and ">Latency against accuracy<" in html and "ms @1 ORT" in html


@pytest.mark.slow
def test_deployed_files_are_candidates_with_the_bytes_and_latency_of_the_file_that_runs(jpeg_dataset, tmp_path):
    recipe = load_recipe(one_epoch_recipe(tmp_path / "r.toml", jpeg_dataset,
                                          "[deploy]\nrun = true\ntargets = ['onnx']\ncalibration_images = 8\n"
                                          "batch = 4\n"))
    out = tmp_path / "run"
    summary = run_recipe(recipe, out, torch.device("cpu"), target_bytes=10**9, progress=False)
    deployed = [Artifact.from_dict(a) for a in summary["artifacts"] if a["stage"] == "deploy"]
    student = next(Artifact.from_dict(a) for a in summary["artifacts"] if a["stage"] == "student")
    assert {a.precision for a in deployed} == {"fp32", "int8 qdq", "int8 qoperator", "int8 qdq 7-bit weights"}
    for a in deployed:
        assert a.name.startswith(student.name + ", onnx ") and a.details["source"] == student.name
        assert a.file_bytes == (out / a.file).stat().st_size and a.file.startswith("deploy/00-student/")
        assert f"{a.runtime}@1" in a.latency_ms and f"{a.runtime}@4" in a.latency_ms
    verdicts = [a.details["deploy"] for a in deployed]
    assert verdicts.count("fastest within the drop") <= 1 and all(
        v in ("fastest within the drop", "", "no latency figure") or "points (limit 1)" in v for v in verdicts)
    timed = json.loads((out / "latency" / "ort-b1-t1.json").read_text())  # with the fp32 models, at the end
    assert {a.name for a in deployed if a.runtime == "ort"} <= timed.keys() and student.name in timed
    int8 = min((a for a in deployed if a.precision != "fp32"), key=lambda a: a.file_bytes)
    assert int8.file_bytes < student.file_bytes / 2  # int8 files are the small ones: a byte budget can pick them
    small = run_recipe(recipe, out, torch.device("cpu"), target_bytes=student.file_bytes // 2, progress=False)
    chosen = next(a for a in small["artifacts"] if a["name"] == small["budget"]["chosen"])
    assert chosen["stage"] == "deploy" and chosen["precision"] != "fp32"
    _, html_path = write_report(out)
    html = html_path.read_text()
    assert ">Deployment<" in html and "int8 qoperator" in html and (out / "deploy_latency_vs_accuracy.png").exists()
