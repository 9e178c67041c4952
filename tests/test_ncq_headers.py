"""Crafted and damaged .ncq files: each is refused in one line naming the file, quickly, and without decoding
(or building) more than its own spec's tensors declare."""

import dataclasses
import json
import lzma
import struct
import time
import zlib

import pytest
import torch

import netcompress as nc
from netcompress.formats import ncq


def _meta(model) -> dict:
    return {"netcompress": nc.__version__, "spec": dataclasses.asdict(nc.spec_of(model)),
            "quant": nc.QuantConfig("fp16").storage()}


def _small():
    torch.manual_seed(0)
    return nc.new_model("studentnet", ["a", "b", "c"], 32, widths=[8] * 8)


def _records(model) -> bytes:
    blob = nc.quantize(model, codec="fp16").data
    body = blob[ncq.HEADER.size:]
    return body[4 + struct.unpack("<I", body[:4])[0]:]


def pack(meta: dict, records: bytes, compressed: bool = False, head_bytes: int | None = None) -> bytes:
    head = json.dumps(meta).encode()
    body = struct.pack("<I", len(head) if head_bytes is None else head_bytes) + head + records
    if compressed:
        body = lzma.compress(body, format=lzma.FORMAT_RAW, filters=ncq.LZMA_FILTERS)
    return ncq.HEADER.pack(ncq.MAGIC, ncq.VERSION, int(compressed), len(body), zlib.crc32(body)) + body


def edited(edit):
    def make():
        model = _small()
        meta = _meta(model)
        edit(meta)
        return pack(meta, _records(model))
    return make


def vit_h_14(records: bytes, compressed: bool = False):
    def make():
        meta = _meta(_small())
        meta["spec"].update(arch="vit_h_14", kwargs={"num_classes": 3}, overrides={}, input_size=224)
        return pack(meta, records, compressed)
    return make


def _override(name: str, desc: dict):
    return lambda m: m["spec"]["overrides"].update({name: desc})


CASES = [
    ("no quant", edited(lambda m: m.pop("quant")), "its header has no quant object"),
    ("quant a list", edited(lambda m: m.update(quant=[1])), "its header has no quant object"),
    ("no spec", edited(lambda m: m.pop("spec")), "its header has no spec object"),
    ("header a list", lambda: pack([1, 2], b""), "its header has no spec object"),
    ("width_mult a string", edited(lambda m: m["spec"]["kwargs"].update(width_mult="2")),
     r"spec field kwargs.width_mult = '2' must be a number"),
    ("bias a number", edited(lambda m: m["spec"]["kwargs"].update(bias=3)),
     r"spec field kwargs.bias = 3 must be true or false"),
    ("bias a string", edited(lambda m: m["spec"]["kwargs"].update(bias="yes")),
     r"spec field kwargs.bias = 'yes' must be true or false"),
    ("a Linear with a bogus argument", edited(_override("cnn.0.0", {
        "type": "Linear", "in_features": 4, "out_features": 3, "bogus": 1})),
     r"overrides.cnn.0.0 gives a Linear arguments it does not take: bogus"),
    ("a Conv2d without kernel_size", edited(_override("cnn.0.0", {
        "type": "Conv2d", "in_channels": 3, "out_channels": 8})),
     r"overrides.cnn.0.0 describes a Conv2d without kernel_size"),
    ("an unknown layer type", edited(_override("cnn.0.0", {"type": "LSTM"})),
     r"overrides.cnn.0.0.type = 'LSTM' is not one of Conv2d, BatchNorm2d, Linear"),
    ("a Conv2d of impossible arguments", edited(_override("cnn.0.0", {
        "type": "Conv2d", "in_channels": 3, "out_channels": 8, "kernel_size": "x"})),
     r"its spec describes no buildable network"),
    ("an override of a layer the architecture lacks", edited(_override("nothing", {
        "type": "Linear", "in_features": 4, "out_features": 3})), r"overrides layer 'nothing', which the"),
    ("an LZMA body that ends after the header", lambda: pack(_meta(_small()), b"", compressed=True),
     "quantized data ends early"),
    ("a body that ends inside the length", lambda: ncq.HEADER.pack(ncq.MAGIC, 1, 0, 2, zlib.crc32(b"ab")) + b"ab",
     "its body ends before its header"),
    ("a spec length of 4 GiB, plain", lambda: pack(_meta(_small()), b"", head_bytes=0xFFFFFFFF),
     r"its header claims 4,294,967,295 bytes of spec"),
    ("a spec length of 4 GiB, LZMA", lambda: pack(_meta(_small()), b"\0" * 100_000, True, 0xFFFFFFFF),
     r"its header claims 4,294,967,295 bytes of spec"),
    ("a body length of 4 GiB", lambda: ncq.HEADER.pack(ncq.MAGIC, 1, 0, 0xFFFFFFFF, 0) + b"\0" * 1000,
     r"truncated or has trailing bytes \(1000 of 4,294,967,295"),
    ("records past the spec's tensors (an LZMA bomb)",
     lambda: pack(_meta(_small()), _records(_small()) + b"\0" * 5_000_000, compressed=True),
     r"its records expand beyond what the spec's architecture holds \(4,096\+ bytes left over"),
    ("vit_h_14 with no records", vit_h_14(b""), "quantized data ends early"),
    ("vit_h_14 with a record of an unknown kind", vit_h_14(b"\xee" * 64, compressed=True),
     "has unknown record kind 238"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_crafted_ncq_is_refused_in_one_line_naming_the_file(tmp_path, make, message):
    path = tmp_path / "m.ncq"
    path.write_bytes(make())
    t0 = time.perf_counter()
    with pytest.raises(nc.NetcompressError, match=message) as err:
        nc.load(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert time.perf_counter() - t0 < 5  # nothing of vit_h_14's 2.5 GB was built


def test_a_model_that_cannot_fit_in_memory_is_refused_with_the_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(ncq, "available_memory", lambda: 2**30)
    path = tmp_path / "big.ncq"
    path.write_bytes(vit_h_14(b"\0" * 1000, compressed=True)())
    with pytest.raises(nc.NetcompressError, match=r"big.ncq: decoding its vit_h_14 needs about 4.7 GiB of memory "
                                                  r"and 1.0 GiB is available"):
        nc.load(path)


@pytest.mark.parametrize("compressed", [False, True])
def test_a_sound_ncq_still_decodes_to_the_same_weights(tmp_path, compressed):
    model = _small()
    path = tmp_path / "m.ncq"
    path.write_bytes(pack(_meta(model), _records(model), compressed))
    back = nc.load(path)
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-2), name
