"""Property-based fuzzing of every file format netcompress reads: truncations, bit flips, crafted specs.

Whatever the bytes, loading either gives a model or raises NetcompressError: never another
exception, never a hang. Files with checksums (.safetensors, .ncq, .onnx) never load changed weights
silently: a flipped file that loads computes exactly what the original did. The course's .bin and
.pkl carry no checksum; for them only the first property holds. The default run tries a few
examples per format; the slow set tries 200.
"""

import functools
import json
import os
import pickle
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netcompress as nc
from netcompress.formats.course import save_course_pkl
from netcompress.pipeline.recipe import load_recipe

SLOW = os.environ.get("NETCOMPRESS_FUZZ_EXAMPLES")
FAST = settings(max_examples=int(SLOW or 12), deadline=None, suppress_health_check=list(HealthCheck))
X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@functools.lru_cache(maxsize=1)
def originals():
    """Each format's bytes and what the model computes on X (built once; kept out of hypothesis's reports)."""
    folder = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    model = nc.new_model("studentnet", [str(i) for i in range(11)], 32, widths=[8, 8, 16, 16, 16, 16, 16, 16])
    files = {
        "safetensors": nc.save(model, folder / "m.safetensors"),
        "ncq": nc.quantize(model, codec="kbit", bits=4).save(folder / "m.ncq"),
        "ncq-lzma": nc.quantize(model, codec="kbit", bits=4, entropy=True).save(folder / "z.ncq"),
        "onnx": nc.export_onnx(model, folder / "m.onnx"),
        "pkl": save_course_pkl(model, folder / "m.pkl", 8, 3),
        "bin": folder / "m.bin",
    }
    torch.save(model.state_dict(), files["bin"], _use_new_zipfile_serialization=False)
    with torch.no_grad():
        reference = {name: nc.load(path, input_size=32)(X) for name, path in files.items()}
    return {name: (path.read_bytes(), reference[name]) for name, path in files.items()}


CHECKSUMMED = ("safetensors", "ncq", "ncq-lzma", "onnx")
SUFFIX = {"ncq-lzma": ".ncq"}


def load_bytes(tmp_path, name: str, blob: bytes):
    path = tmp_path / f"fuzz{SUFFIX.get(name, '.' + name)}"
    path.write_bytes(blob)
    try:
        return nc.load(path, input_size=32)
    except nc.NetcompressError:
        return None


@pytest.mark.parametrize("name", ["safetensors", "ncq", "ncq-lzma", "onnx", "pkl", "bin"])
@FAST
@given(data=st.data())
def test_truncated_and_flipped_files(tmp_path_factory, name, data):
    blob, reference = originals()[name]
    tmp = tmp_path_factory.mktemp("f")
    if data.draw(st.booleans(), label="truncate"):
        changed = blob[:data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:
        changed = bytearray(blob)
        for position in data.draw(st.lists(st.integers(0, len(blob) * 8 - 1), min_size=1, max_size=8), label="bits"):
            changed[position // 8] ^= 1 << (position % 8)
        changed = bytes(changed)
    model = load_bytes(tmp, name, changed)
    if model is not None and name in CHECKSUMMED:
        with torch.no_grad():
            assert torch.equal(model(X), reference), "a damaged file loaded with other weights"


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=4), max_leaves=12)
SPEC_FIELDS = ("arch", "kwargs", "class_names", "input_size", "channels", "overrides", "info", "preprocessing",
               "sparse", "format", "format_version")


@FAST
@given(field=st.sampled_from(SPEC_FIELDS), value=JSON_VALUES, reseal=st.booleans())
def test_crafted_specs(tmp_path_factory, field, value, reseal):
    """Any value in any spec field, with or without a recomputed checksum: a model or one clear error."""
    from netcompress.formats.integrity import digest
    from safetensors.torch import load as load_tensors

    blob, _ = originals()["safetensors"]
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = json.loads(header["__metadata__"]["netcompress"])
    meta[field] = value
    if reseal:
        meta["checksum"] = digest(meta, load_tensors(blob))
    header["__metadata__"]["netcompress"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    load_bytes(tmp_path_factory.mktemp("s"), "safetensors", struct.pack("<Q", len(new)) + new + blob[8 + n:])


@FAST
@given(obj=st.recursive(st.integers() | st.text(max_size=5) | st.binary(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                    max_size=3), max_leaves=8),
       protocol=st.integers(2, 5))
def test_arbitrary_pickles(tmp_path_factory, obj, protocol):
    load_bytes(tmp_path_factory.mktemp("p"), "pkl", pickle.dumps(obj, protocol=protocol))


@FAST
@given(text=st.text(max_size=200))
def test_arbitrary_recipes(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("r") / "r.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_recipe(path)
    except nc.NetcompressError:
        pass


@pytest.mark.slow
def test_two_hundred_examples_per_format():
    """The same properties with 200 examples per format (NETCOMPRESS_FUZZ_EXAMPLES=200)."""
    import subprocess
    import sys

    env = dict(os.environ, NETCOMPRESS_FUZZ_EXAMPLES="200", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-m", "not slow"],
                          env=env, capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-3000:]
