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
