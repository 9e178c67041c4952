"""A training run whose batches cannot fit in memory is refused before its first step, with the numbers."""

import numpy as np
import pytest
import torch
from PIL import Image

import netcompress as nc
from netcompress.train import memory


@pytest.fixture()
def data(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        for label in ("a", "b", "c"):
            (tmp_path / "d" / split / label).mkdir(parents=True)
            for k in range(12):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                    tmp_path / "d" / split / label / f"{k}.png")
    return nc.ImageFolderData(tmp_path / "d", 16, cache_dir=tmp_path / "cache", progress=False)


def test_training_at_4096_px_is_refused_with_the_memory_it_needs(data, monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 2**30)
    model = nc.new_model("studentnet", ["a", "b", "c"], 16)
    with pytest.raises(nc.NetcompressError, match=r"training at 4096 px with batches of 3\d needs about 2\d\d.\d GiB of "
                                                  r"memory for its activations alone and 8.0 GiB is available: use a "
                                                  r"smaller --image-size or --batch-size"):
        nc.fit(model, data, epochs=1, input_size=4096, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "state.pt").exists()


@pytest.mark.parametrize("size, batch, expected_gib", [(96, 64, 0.237), (4096, 36, 243.0), (4096, 1, 6.75)])
def test_activation_bytes_count_every_layer_output(size, batch, expected_gib):
    model = nc.new_model("studentnet", ["a", "b", "c"], 16)
    assert memory.activation_bytes(model, batch, 3, size) / 2**30 == pytest.approx(expected_gib, rel=0.01)


def test_a_model_that_cannot_run_on_the_meta_device_is_not_refused():
    class Numpy(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy())

    assert memory.activation_bytes(Numpy(), 2, 3, 8) is None
    memory.check_training_memory(Numpy(), 2, 3, 8, torch.device("cpu"))


def test_a_run_that_fits_is_not_refused(data, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 2**30)
    memory.check_training_memory(nc.new_model("studentnet", ["a", "b", "c"], 16), 64, 3, 96, torch.device("cpu"))
