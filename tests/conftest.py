from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FOOD = SHARED / "food101_10"
COURSE_CKPT = SHARED / "hw7" / "student_custom_small.bin"


@pytest.fixture(scope="session")
def food_root() -> Path:
    if not FOOD.is_dir():
        pytest.skip(f"sample data not found at {FOOD}")
    return FOOD


@pytest.fixture(scope="session")
def course_ckpt() -> Path:
    if not COURSE_CKPT.exists():
        pytest.skip(f"course checkpoint not found at {COURSE_CKPT}")
    return COURSE_CKPT


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decode cache for the whole test session (each split is decoded once)."""
    return tmp_path_factory.mktemp("decode-cache")


@pytest.fixture()
def jpeg_dataset(tmp_path) -> Path:
    """A tiny Food-11-layout dataset of real JPEG files with 3 classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in [("training", 4), ("validation", 2), ("testing", 2)]:
        (tmp_path / split).mkdir()
        for label in range(3):
            for k in range(n):
                pixels = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / f"{label}_{k}.jpg", quality=90)
    (tmp_path / "classes.txt").write_text("0\tsoup\n1\trice\n2\tbread\n")
    return tmp_path


def _registries() -> list[dict]:
    """Every registry a test may add to: runtimes, codecs (by name and by record kind), pruners, distillation losses,
    model file formats (readers by suffix, exporters by name). Not the model registry: it fills itself on first use."""
    from netcompress.compress import codecs, pruners
    from netcompress.formats import load
    from netcompress.measure import latency
    from netcompress.train import distill

    return [latency._RUNTIMES, codecs._CODECS, codecs._BY_KIND, pruners._PRUNERS, distill._KD_LOSSES,
            load._READERS, load._EXPORTERS]


@pytest.fixture(autouse=True)
def restore_registries():
    """What a test registers (a runtime, codec, pruner, distillation loss or file format) is gone after it: each
    registry gets back the very entries it had before, in place (the modules keep their dict objects)."""
    registries = _registries()
    saved = [dict(registry) for registry in registries]
    yield
    for registry, entries in zip(registries, saved):
        registry.clear()
        registry.update(entries)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models and batches: fastest, and immune to a busy machine's
    oversubscription (use with pytestmark = pytest.mark.usefixtures("one_thread"))."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def course_student_32(course_ckpt):
    """A trained StudentNet at 32 px (the course's checkpoint): agreement on real photos means something only for
    a model whose predictions are not a constant."""
    from netcompress.formats.course import import_course_checkpoint

    return import_course_checkpoint(course_ckpt, input_size=32)


@pytest.fixture(scope="module")
def food_32(food_root, cache_dir):
    import netcompress as nc

    return nc.ImageFolderData(food_root, 32, cache_dir=cache_dir, progress=False)


@pytest.fixture(scope="module")
def food_32_photos(food_32):
    return food_32.split("validation").images[::5].float() / 255  # 150 real photos, every class
