"""The command line as a user meets it: exit codes, messages, files (in this process, but for one real process)."""

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest


def run_cli(*args, cache: Path | None = None) -> tuple[int, str, str]:
    """Run `netcompress ARGS` in this process: (exit code, stdout, stderr). What a verb sets for the whole process
    (the decode cache's folder, torch's threads, --no-verify) is put back afterwards."""
    import torch

    from netcompress.cli import main

    def show(message, category, filename, lineno, file=None, line=None):  # as Python does, to today's stderr
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    out, err = io.StringIO(), io.StringIO()
    saved_env = {k: os.environ.get(k) for k in ("NETCOMPRESS_CACHE", "NETCOMPRESS_NO_VERIFY")}
    old_argv, old_threads, old_format = sys.argv, torch.get_num_threads(), warnings.formatwarning
    sys.argv = ["netcompress", *map(str, args)]
    if cache is not None:
        os.environ["NETCOMPRESS_CACHE"] = str(cache)
    code = 0
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.resetwarnings()  # a fresh process's filters: pytest's own record every warning silently
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = show
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv, warnings.formatwarning = old_argv, old_format
        torch.set_num_threads(old_threads)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return code, out.getvalue(), err.getvalue()


def netcompress(*args, cache: Path | None = None, check: bool = True,
                process: bool = False) -> subprocess.CompletedProcess:
    """`netcompress ARGS` in this process, or in a process of its own when `process`."""
    if process:
        env = dict(os.environ, NETCOMPRESS_CACHE=str(cache) if cache else os.environ.get("NETCOMPRESS_CACHE", "/tmp/nc"))
        proc = subprocess.run([sys.executable, "-m", "netcompress.cli", *map(str, args)], capture_output=True,
                              text=True, env=env)
    else:
        proc = subprocess.CompletedProcess(args, *run_cli(*args, cache=cache))
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_every_verb_has_help_with_an_example():
    from typer.main import get_command
    from typer.testing import CliRunner

    from netcompress.cli import app

    verbs = sorted(get_command(app).commands)
    assert len(verbs) == 21
    runner = CliRunner()
    for verb in verbs:
        result = runner.invoke(app, [verb, "--help"])
        assert result.exit_code == 0 and "Example: netcompress " + verb in " ".join(result.stdout.split()), verb


def test_choices_come_from_the_registries():
    """A codec, pruner, runtime or distillation loss registered after import is offered in its verbs' help."""
    from typer.testing import CliRunner

    import netcompress as nc
    from netcompress.cli import app
    from netcompress.train.distill import KDLoss, register_kd_loss

    runner = CliRunner()
    places = {"testcodec": [("quantize", "--codec")], "testpruner": [("prune", "--method")],
              "testkd": [("distill", "--method")],
              "testruntime": [("latency", "--runtime"), ("prune", "--runtime"), ("run", "--runtime")]}

    def offered(name: str) -> list[tuple[str, str]]:
        found = []
        for verb, option in places[name]:
            result = runner.invoke(app, [verb, "--help"], terminal_width=200)
            assert result.exit_code == 0, result.output
            text = " ".join(result.output.split())
            assert option in text, (verb, option)
            found += [(verb, option)] if name in text else []
        return found

    assert all(offered(name) == [] for name in places)  # not there before: the help is no fixed text

    @nc.register_codec
    class TestCodec(nc.Codec):
        name, kind = "testcodec", 250

    @nc.register_pruner
    class TestPruner(nc.Pruner):
        name = "testpruner"

    @nc.register_runtime
    class TestRuntime(nc.Runtime):
        name = "testruntime"

    @register_kd_loss
    class TestKD(KDLoss):
        name = "testkd"

    for name, where in places.items():
        assert offered(name) == where, name


def test_missing_data_folder_is_one_clear_line(tmp_path):
    proc = netcompress("train", "--model", "studentnet", "--data", tmp_path / "nowhere", "--out", tmp_path / "run",
                       cache=tmp_path, check=False, process=True)  # a real process: its exit code and stderr
    assert proc.returncode == 2
    assert "nowhere does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_corrupt_jpeg_is_one_clear_line(jpeg_dataset, tmp_path):
    (jpeg_dataset / "validation" / "2_0.jpg").write_bytes(b"\xff\xd8\xff broken")
    proc = netcompress("train", "--model", "studentnet", "--data", jpeg_dataset, "--image-size", 32, "--epochs", 1,
                       "--out", tmp_path / "run", cache=tmp_path / "c", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "2_0.jpg: unreadable or corrupt image" in proc.stderr and "--skip-bad" in proc.stderr


def test_unknown_model_is_one_clear_line(jpeg_dataset, tmp_path):
    proc = netcompress("train", "--model", "resnet-18", "--data", jpeg_dataset, "--out", tmp_path / "r",
                       cache=tmp_path / "c", check=False)
    assert proc.returncode == 2 and "unknown model 'resnet-18'" in proc.stderr


def test_train_evaluate_predict_on_a_tiny_dataset(jpeg_dataset, tmp_path):
    run = tmp_path / "run"
    netcompress("train", "--model", "studentnet", "--data", jpeg_dataset, "--image-size", 32, "--epochs", 2,
                "--batch-size", 4, "--out", run, "--no-progress", cache=tmp_path / "c")
    model = run / "best.safetensors"
    assert model.exists() and len((run / "metrics.jsonl").read_text().splitlines()) == 2
    result = json.loads(netcompress("evaluate", model, "--data", jpeg_dataset, "--split", "validation", "--out-dir",
                                    tmp_path / "eval", "--json", cache=tmp_path / "c").stdout)
    assert result["images"] == 6 and len(result["confusion"]) == 3 and sum(map(sum, result["confusion"])) == 6
    assert (tmp_path / "eval" / "confusion-validation.png").read_bytes()[:4] == b"\x89PNG"
    netcompress("predict", model, "--data", jpeg_dataset, "--out", tmp_path / "pred.csv", cache=tmp_path / "c")
    rows = list(csv.reader(open(tmp_path / "pred.csv")))
    assert rows[0] == ["Id", "label"] and [r[0] for r in rows[1:]] == [str(i) for i in range(6)]
    assert all(0 <= int(r[1]) < 3 for r in rows[1:])


def test_summary_of_the_course_checkpoint(course_ckpt):
    totals = json.loads(netcompress("summary", course_ckpt, "--image-size", 256, "--no-latency", "--json").stdout)
    assert totals["parameters"] == 256_779 and totals["file_bytes"] == 1_047_430
    assert totals["input_size"] == 256 and totals["macs"] > 100_000_000
    unknown = netcompress("summary", course_ckpt, "--no-latency", check=False)  # the file records no input size
    assert unknown.returncode == 2 and "does not record the input size" in unknown.stderr and "--image-size" in unknown.stderr


def test_summary_table_lists_layers():
    out = netcompress("summary", "studentnet9", "--image-size", 64, "--no-latency").stdout
    assert "224,011" in out and "Conv2d" in out


def test_latency_of_two_files_side_by_side(course_ckpt, tmp_path):
    import netcompress as nc

    small = nc.new_model("studentnet", ["a", "b"], 32, widths=[8, 16, 16, 32, 32, 32, 32, 32])
    nc.save(small, tmp_path / "small.safetensors")
    nc.export_onnx(small, tmp_path / "small.onnx")
    out = json.loads(netcompress("latency", tmp_path / "small.safetensors", tmp_path / "small.onnx", "--rounds", 3,
                                 "--seconds", 0.05, "--max-spread", 100, "--json").stdout)
    assert [r["model"] for r in out["rows"]] == [str(tmp_path / "small.safetensors"), str(tmp_path / "small.onnx")]
    assert all(r["runtime"] == "ort" and r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] for r in out["rows"])
    missing = netcompress("latency", course_ckpt, check=False)  # the file records no input size
    assert missing.returncode == 2 and "--image-size" in missing.stderr
    wrong = netcompress("latency", tmp_path / "small.onnx", "--runtime", "torch", check=False)
    assert wrong.returncode == 2 and "ort or openvino" in wrong.stderr


@pytest.mark.slow  # every installed runtime, ExecuTorch's lowering included: about a minute
def test_latency_on_every_runtime_a_file_runs_on(tmp_path):
    import netcompress as nc

    small = nc.new_model("studentnet", ["a", "b"], 32, widths=[8, 16, 16, 32, 32, 32, 32, 32])
    nc.save(small, tmp_path / "small.safetensors")
    nc.export_onnx(small, tmp_path / "small.onnx")
    every = json.loads(netcompress("latency", tmp_path / "small.safetensors", tmp_path / "small.onnx", "--runtime",
                                   "all", "--rounds", 3, "--seconds", 0.05, "--max-spread", 100, "--json").stdout)
    installed = nc.list_runtimes(installed=True)
    onnx_runtimes = [r for r in installed if r in ("ort", "openvino")]
    assert sorted((r["model"], r["runtime"]) for r in every["rows"]) == sorted(
        [(str(tmp_path / "small.safetensors"), r) for r in installed]
        + [(str(tmp_path / "small.onnx"), r) for r in onnx_runtimes])
    assert every["fastest"][str(tmp_path / "small.onnx")] in onnx_runtimes


def test_predict_with_the_course_checkpoint(course_ckpt, food_root, cache_dir, tmp_path):
    netcompress("predict", course_ckpt, "--data", food_root, "--image-size", 64, "--out", tmp_path / "p.csv",
                cache=cache_dir)
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert len(rows) == 1 + 1250 and all(0 <= int(r[1]) < 11 for r in rows[1:])


def test_import_then_export_course(course_ckpt, tmp_path):
    netcompress("import-course", course_ckpt, "--image-size", 256, "--pool-after", "0,1,2,3", "--out",
                tmp_path / "c.safetensors")
    netcompress("export-course", tmp_path / "c.safetensors", "--out", tmp_path / "c.bin")
    import torch

    a = torch.load(course_ckpt, map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "c.bin", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_refuses_a_model_for_other_classes(course_ckpt, food_root, cache_dir):
    proc = netcompress("evaluate", course_ckpt, "--data", food_root, "--image-size", 64, cache=cache_dir, check=False)
    assert proc.returncode == 2 and "predicts 11 classes but" in proc.stderr


@pytest.mark.slow
def test_prune_then_plot(jpeg_dataset, tmp_path):
    cache = tmp_path / "c"
    netcompress("train", "--model", "studentnet", "--data", jpeg_dataset, "--image-size", 32, "--epochs", 1,
                "--batch-size", 4, "--out", tmp_path / "t", "--no-progress", cache=cache)
    for rate, batchnorm in ((0.5, ()), (0.7, ("--recalibrate", 0, "--precise-bn", 8))):
        out = json.loads(netcompress("prune", tmp_path / "t" / "best.safetensors", "--data", jpeg_dataset, "--rate",
                                     rate, "--steps", 1, "--finetune-epochs", 1, "--batch-size", 4, "--out",
                                     tmp_path / f"p{rate}", *batchnorm, "--no-progress", "--json", cache=cache).stdout)
        assert [r["step"] for r in out["rows"]] == [0, 1] and out["rows"][1]["params"] < out["rows"][0]["params"]
    assert json.loads((tmp_path / "p0.7" / "step1" / "run.json").read_text())["config"]["precise_bn"] == 8
    netcompress("plot-pruning", tmp_path / "p0.5", tmp_path / "p0.7", "--out", tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_prune_rate_out_of_range_is_one_clear_line(jpeg_dataset, tmp_path):
    import netcompress as nc

    model = nc.save(nc.new_model("studentnet", ["soup", "rice", "bread"], 32), tmp_path / "m.safetensors")
    proc = netcompress("prune", model, "--data", jpeg_dataset, "--rate", 1.2, "--out", tmp_path / "p",
                       cache=tmp_path / "c", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "rate = 1.2 must lie strictly between 0 and 1" in proc.stderr and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_prune_writes_progress_to_stderr_and_json_to_stdout(jpeg_dataset, tmp_path):
    import netcompress as nc

    model = nc.save(nc.new_model("studentnet", ["soup", "rice", "bread"], 32), tmp_path / "m.safetensors")
    proc = netcompress("prune", model, "--data", jpeg_dataset, "--rate", 0.5, "--steps", 1, "--finetune-epochs", 1,
                       "--batch-size", 4, "--out", tmp_path / "p", "--json", cache=tmp_path / "c")
    assert [r["step"] for r in json.loads(proc.stdout)["rows"]] == [0, 1]  # stdout is JSON only
    assert "step 1:" in proc.stderr


def test_distill_from_cached_views_at_a_larger_teacher_size(jpeg_dataset, tmp_path):
    cache = tmp_path / "c"
    netcompress("train", "--model", "studentnet", "--data", jpeg_dataset, "--image-size", 40, "--epochs", 1,
                "--batch-size", 4, "--out", tmp_path / "t", "--no-progress", cache=cache)
    out = json.loads(netcompress("distill", "--teacher", tmp_path / "t" / "best.safetensors", "--data", jpeg_dataset,
                                 "--image-size", 32, "--views", 3, "--mixup", 0.4, "--cutmix", 1.0, "-T", 1,
                                 "--alpha", 1, "--epochs", 2, "--batch-size", 4, "--out", tmp_path / "s", "--json",
                                 "--no-progress", cache=cache).stdout)
    import netcompress as nc

    views = nc.TeacherViews.load(tmp_path / "s" / "teacher_views.safetensors")
    assert views.logits.shape == (12, 3, 3) and views.meta["image_size"] == 40
    assert nc.spec_of(nc.load(out["model_file"])).input_size == 32


def test_train_a_truncated_pretrained_lite(jpeg_dataset, tmp_path):
    import netcompress as nc

    common = ("--model", "efficientnet_lite0", "--data", jpeg_dataset, "--image-size", 32, "--epochs", 1,
              "--batch-size", 4, "--no-progress")
    netcompress("train", *common, "--blocks", 2, "--head", 8, "--out", tmp_path / "t", cache=tmp_path / "c")
    model = nc.load(tmp_path / "t" / "best.safetensors")
    assert nc.spec_of(model).kwargs["blocks"] == 2 and model.net._conv_head.out_channels == 8
    proc = netcompress("train", *common, "--blocks", 40, "--out", tmp_path / "bad", cache=tmp_path / "c", check=False)
    assert proc.returncode == 2 and "blocks = 40: keep 1..16" in proc.stderr and "Traceback" not in proc.stderr
