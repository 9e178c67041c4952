"""Every layout users keep runs end to end, and a run refuses before its first epoch what would stop it later."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import netcompress as nc
from netcompress.data.folder import ImageFolderData
from netcompress.errors import NetcompressError
from netcompress.pipeline.plan import check_recipe, plan_recipe
from netcompress.pipeline.recipe import load_recipe
from netcompress.pipeline.stages import run_recipe

CLASSES = ("apple", "bread", "cake")


def images(folder, names, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + sum(map(ord, str(folder))))
    for name in names:
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / name)


def class_folders(root, per_class):
    for c in CLASSES:
        images(root / c, [f"{i}.png" for i in range(per_class)])


def make_layout(root, layout: str):
    """A small dataset in one of the layouts users keep (3 classes)."""
    if layout == "food11":  # flat files <label>_<k>.jpg, an unlabeled testing folder
        for split, n in (("training", 12), ("validation", 3)):
            images(root / split, [f"{c}_{k}.jpg" for c in range(3) for k in range(n)])
        images(root / "testing", [f"{k:04d}.jpg" for k in range(6)])
    elif layout == "classes":  # one folder per class, no split folders
        class_folders(root, 15)
    else:
        for split in layout.split("/"):
            class_folders(root / split, 12 if split == "train" else 3)
    return root


# what each layout's splits come from: a folder, or carved off training (or the one folder of classes)
LAYOUTS = {
    "train/val": {"training": "the rest of", "validation": "val/", "testing": "carved from training"},
    "train/test": {"training": "the rest of", "validation": "carved from training", "testing": "test/"},
    "train/val/test": {"training": "train/", "validation": "val/", "testing": "test/"},
    "classes": {"training": "the rest of", "validation": "carved from all", "testing": "carved from all"},
    "food11": {"training": "training/", "validation": "validation/", "testing": "testing/"},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_describes_where_each_split_comes_from(tmp_path, layout):
    data = ImageFolderData(make_layout(tmp_path / "d", layout), 16, cache_dir=tmp_path / "c", progress=False)
    described = data.describe()
    assert list(described) == ["training", "validation", "testing"] and data.problems() == []
    for split, origin in LAYOUTS[layout].items():
        assert origin in described[split]["from"], (split, described[split])
        assert described[split]["images"] == len(data.split(split)), split  # the listing's count is what decodes
    train = {x.numpy().tobytes() for x in data.split("training").images}
    for split in ("validation", "testing"):
        assert not train & {x.numpy().tobytes() for x in data.split(split).images}, split


def test_test_from_validation_reports_on_the_validation_images_and_records_it(tmp_path):
    root = make_layout(tmp_path / "d", "train/val")
    data = ImageFolderData(root, 16, test_from="val", cache_dir=tmp_path / "c", progress=False)
    assert data.split("testing").images.equal(data.split("validation").images)
    assert len(data.split("training")) == 36 and data.provenance == {"test_from": "validation"}
    assert "test = validation" in data.describe()["testing"]["from"]
    again = ImageFolderData.options_from(data.provenance)
    assert again["test_from"] == "validation" and again["val_fraction"] == 0.1
    carved = ImageFolderData(root, 16, test_fraction=0.25, seed=3, cache_dir=tmp_path / "c", progress=False)
    assert ImageFolderData.options_from(carved.provenance) == {"val_fraction": 0.1, "test_fraction": 0.25, "seed": 3,
                                                                "test_from": "training"}
    with pytest.raises(NetcompressError, match="test_from = 'train_set': choose one of training, validation"):
        ImageFolderData(root, 16, test_from="train_set")


@pytest.mark.parametrize("make, problem", [
    (lambda r: class_folders(r / "val", 3), "has no training split: add a training/train folder"),
    (lambda r: (class_folders(r / "train", 1), class_folders(r / "val", 2)),
     "holds 3 labeled image(s): too few to carve a testing split"),
    (lambda r: (r / "train").mkdir(), "train holds no images"),
    (lambda r: (class_folders(r / "train", 6), images(r / "train" / "durian" / "more", ["a.jpg"])),
     "train/durian holds no images (.bmp, .gif, .jpeg, .jpg, .png, .tif, .tiff, .webp): its images sit in "
     "durian/more; move them up into durian/"),
    (lambda r: (class_folders(r / "train", 6), images(r / "test" / "durian", ["a.jpg"])),
     "class(es) durian have no training image"),
])
def test_small_and_odd_folders_are_one_clear_problem_each(tmp_path, make, problem):
    make(tmp_path)
    found = ImageFolderData(tmp_path, 16, progress=False).problems()
    assert len(found) == 1 and problem in found[0], found


def test_data_one_level_too_high_names_the_dataset_folder_inside(tmp_path):
    make_layout(tmp_path / "food", "train/val/test")
    (found,) = ImageFolderData(tmp_path, 16, progress=False).problems()
    assert "looks one level too high" in found and f"--data {tmp_path / 'food'}" in found


def test_a_carve_that_leaves_a_split_empty_is_a_clear_error_not_a_traceback(tmp_path):
    class_folders(tmp_path / "train", 1)
    class_folders(tmp_path / "val", 1)
    data = ImageFolderData(tmp_path, 16, cache_dir=tmp_path / "c", progress=False)
    with pytest.raises(NetcompressError, match="too few to carve a testing split .* use --test-from validation"):
        data.split("testing")


DEMO_AT_TINY_SIZE = ["data.image_size=32", "teacher.epochs=1", "teacher.batch_size=8", "student.epochs=1",
                     "student.batch_size=8", "prune.finetune_epochs=1", "lowrank.finetune_epochs=1"]


def tiny_demo(root, *more):
    return load_recipe("recipes/demo.toml", [f"data.root={root}", *DEMO_AT_TINY_SIZE, *more])


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_demo_recipe_runs_end_to_end_on_every_layout(tmp_path, layout):
    root = make_layout(tmp_path / "d", layout)
    summary = run_recipe(tiny_demo(root), tmp_path / "run", nc_device(), target_bytes=300_000,
                         cache_dir=tmp_path / "c", progress=False)
    assert summary["budget"]["chosen"]
    labeled_test = layout != "food11"  # Food-11's testing files carry no labels: no test accuracy, no error
    assert bool(summary["test"]) == labeled_test
    student = nc.load(tmp_path / "run" / "student" / "best.safetensors")
    carved = set(LAYOUTS[layout]) - {"training"} - {s for s, o in LAYOUTS[layout].items() if o.endswith("/")}
    assert set((nc.spec_of(student).info.data or {}).get("carved", {})) == carved


def nc_device():
    import torch

    return torch.device("cpu")


def test_a_train_val_run_can_report_test_on_validation_and_says_so(tmp_path):
    root = make_layout(tmp_path / "d", "train/val")
    plan = check_recipe(tiny_demo(root, "data.test_from=validation"), tmp_path / "run", cache_dir=tmp_path / "c")
    assert "test = validation" in plan.splits["testing"]["from"]
    assert any("chosen on the same images" in note for note in plan.notes)


def refused(tmp_path, recipe, **targets):
    """The run's refusal, checked to come before any stage: the run folder holds no stage's files."""
    with pytest.raises(NetcompressError) as exc:
        run_recipe(recipe, tmp_path / "run", nc_device(), cache_dir=tmp_path / "c", progress=False, **targets)
    run = tmp_path / "run"
    assert not run.exists() or not any(p.name == "done.json" or p.suffix == ".safetensors" for p in run.rglob("*"))
    assert "nothing was run" in str(exc.value)
    return str(exc.value)


def test_preflight_refuses_a_missing_split_before_any_stage(tmp_path):
    class_folders(tmp_path / "d" / "val", 3)
    assert "has no training split" in refused(tmp_path, tiny_demo(tmp_path / "d"))


def test_preflight_refuses_an_output_under_a_file(tmp_path):
    make_layout(tmp_path / "d", "train/val")
    (tmp_path / "run").write_text("a file where the run folder should be")
    assert "is a file; a run needs a folder there" in refused(tmp_path, tiny_demo(tmp_path / "d"))


def test_preflight_refuses_a_budget_below_the_smallest_model_the_recipe_makes(tmp_path):
    make_layout(tmp_path / "d", "train/val")
    message = refused(tmp_path, tiny_demo(tmp_path / "d"), target_bytes=1000)
    assert "--target-bytes 1,000: the smallest model this recipe makes is about" in message
    plan = plan_recipe(tiny_demo(tmp_path / "d"), tmp_path / "run", target_bytes=300_000)
    assert not plan.problems and plan.smallest["bytes"] < 300_000


def test_preflight_refuses_a_missing_teacher_file(tmp_path):
    make_layout(tmp_path / "d", "train/val")
    message = refused(tmp_path, tiny_demo(tmp_path / "d", f"teacher.file={tmp_path / 'gone.safetensors'}"))
    assert "teacher file" in message and "gone.safetensors does not exist" in message


def test_preflight_reports_every_problem_at_once(tmp_path):
    class_folders(tmp_path / "d" / "val", 3)
    (tmp_path / "run").write_text("")
    message = refused(tmp_path, tiny_demo(tmp_path / "d", "teacher.file=gone.safetensors"), target_bytes=10)
    assert "4 problem(s)" in message
    assert all(p in message for p in ("has no training split", "is a file", "gone.safetensors does not exist",
                                      "--target-bytes 10: the smallest model"))


def netcompress(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "netcompress.cli", *map(str, args)], capture_output=True, text=True,
                          env=env)


@pytest.mark.slow
def test_run_check_prints_the_plan_and_trains_nothing(tmp_path):
    root = make_layout(tmp_path / "d", "train/val")
    proc = netcompress("run", "recipes/demo.toml", "--check", "--out", tmp_path / "run", "--target-bytes", 300000,
                       *[x for s in [f"data.root={root}", *DEMO_AT_TINY_SIZE] for x in ("--set", s)],
                       "--cache-dir", tmp_path / "c", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    for text in ("carved from training", "teacher", "prune-slim-0.63", "fp32 models together", "estimated",
                 "smallest model it can make", "no problems found"):
        assert text in proc.stdout, text
    assert not (tmp_path / "run").exists()


def test_train_verb_reports_its_problems_together_before_training(tmp_path):
    class_folders(tmp_path / "d" / "val", 3)
    (tmp_path / "out").write_text("")
    proc = netcompress("train", "--model", "studentnet", "--data", tmp_path / "d", "--out", tmp_path / "out",
                       "--image-size", 16, "--epochs", 1, "--no-progress")
    assert proc.returncode == 2 and "2 problem(s)" in proc.stderr, proc.stderr
    assert "has no training split" in proc.stderr and "is a file" in proc.stderr



def test_preflight_refuses_a_runtime_that_is_not_installed_and_a_budget_that_is_no_number(tmp_path):
    from netcompress.measure.latency import LatencyTarget, Runtime

    class Missing(Runtime):
        name = "missing-runtime"
        install = "pip install missing-runtime"

        def available(self):
            return False

    nc.register_runtime(Missing)
    make_layout(tmp_path / "d", "train/val")
    plan = plan_recipe(tiny_demo(tmp_path / "d"), tmp_path / "run", target_bytes=0,
                       target_latency=LatencyTarget(0.1, "missing-runtime"))
    assert any("runtime missing-runtime is not installed: pip install missing-runtime" in p for p in plan.problems)
    assert any("--target-bytes 0: a budget must be a positive number" in p for p in plan.problems)
