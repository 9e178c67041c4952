"""Two CPU processes with gloo under torchrun, on a small real subset of the sample data."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import netcompress as nc
from netcompress.train.distributed import strip_nproc

WORKER = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import save_file
    import netcompress as nc
    from netcompress.train.distributed import init_from_env

    data, out = sys.argv[1], sys.argv[2]
    world, device = init_from_env(torch.device("cpu"))
    folder = nc.ImageFolderData(data, 32, progress=False)
    torch.manual_seed(0)
    net = nc.new_model("studentnet", folder.class_names, 32, widths=[8, 16, 16, 32, 32, 32, 32, 32])
    last = {}  # the weights each rank trained, after its last step
    nc.fit(net, folder, nc.TrainConfig(epochs=2, batch_size=8), run_dir=out, device=device, progress=False,
           world=world, after_step=lambda model: last.update(model.state_dict()))
    save_file({k: v.contiguous() for k, v in last.items()}, f"{out}/rank{world.rank}.safetensors")
""")


@pytest.fixture()
def real_subset(food_root, tmp_path):
    """A few real photos per class, linked (not copied) into a Food-11 layout."""
    root = tmp_path / "subset"
    for split, per_class in [("training", 5), ("validation", 2)]:
        (root / split).mkdir(parents=True)
        for label in range(10):
            for k in range(per_class):
                name = f"{label}_{k}.jpg"
                os.symlink(food_root / split / name, root / split / name)
    os.symlink(food_root / "classes.txt", root / "classes.txt")
    return root


@pytest.mark.slow
def test_two_gloo_processes_keep_identical_parameters(real_subset, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"
    env = dict(os.environ, NETCOMPRESS_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(real_subset), str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0 if "running" not in k and "num_batches" not in k)
    model = nc.load(out / "best.safetensors")  # written once, by rank 0, and loadable
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one writer: no duplicated epochs


@pytest.mark.slow
def test_cli_nproc_launches_torchrun(real_subset, tmp_path):
    env = dict(os.environ, NETCOMPRESS_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "netcompress.cli", "train", "--model", "studentnet", "--data",
                           str(real_subset), "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--nproc", "2",
                           "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("epoch   1") == 1  # only rank 0 reports
    assert (tmp_path / "run" / "best.safetensors").exists()


def test_strip_nproc():
    assert strip_nproc(["train", "--nproc", "2", "--epochs", "3"]) == ["train", "--epochs", "3"]
    assert strip_nproc(["train", "--nproc=4"]) == ["train"]
