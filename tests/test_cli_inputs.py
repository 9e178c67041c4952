"""Command-line values checked as they are read: each bad one is one `error:` line and exit 2, on every verb."""

import contextlib
import io
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import netcompress as nc


def cli(*args, cache: Path | None = None) -> tuple[int, str, str]:
    """`netcompress ARGS` in this process: (exit code, stdout, stderr)."""
    from netcompress.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cache = sys.argv, os.environ.get("NETCOMPRESS_CACHE")
    sys.argv = ["netcompress", *map(str, args)]
    if cache is not None:
        os.environ["NETCOMPRESS_CACHE"] = str(cache)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old_argv
        if old_cache is None:
            os.environ.pop("NETCOMPRESS_CACHE", None)
        else:
            os.environ["NETCOMPRESS_CACHE"] = old_cache
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def model(tmp_path) -> Path:
    torch.manual_seed(0)
    return nc.save(nc.new_model("studentnet", ["a", "b", "c"], 16, widths=[8] * 8), tmp_path / "m.safetensors")


IMAGE_SIZE_VERBS = {
    "evaluate": lambda m, t: ["evaluate", m, "--data", t],
    "predict": lambda m, t: ["predict", m, "--data", t, "--out", t / "p.csv"],
    "summary": lambda m, t: ["summary", m, "--no-latency"],
    "summary of a name": lambda m, t: ["summary", "studentnet", "--no-latency"],
    "latency": lambda m, t: ["latency", m],
}


@pytest.mark.parametrize("size", [0, -3, 4097])
@pytest.mark.parametrize("verb", list(IMAGE_SIZE_VERBS))
def test_an_image_size_out_of_range_is_refused_by_every_verb(tmp_path, model, verb, size):
    code, _, err = cli(*IMAGE_SIZE_VERBS[verb](model, tmp_path), "--image-size", size, cache=tmp_path / "c")
    assert code == 2
    assert err == f"error: --image-size = {size} must lie in 8..4096 (leave it out for the model's own size)\n"


def test_a_valid_image_size_is_used(model):
    code, out, err = cli("summary", model, "--image-size", 32, "--no-latency", "--json")
    assert code == 0, err
    assert json.loads(out)["input_size"] == 32
