"""The compact quantized model file (`.ncq`): a checksummed container of codec records.

Layout (little-endian), deterministic for a given model and config:

    magic b"\\x89NCQ" | version u8 | flags u8 (bit 0: body is lzma-compressed) | body length u32 |
    CRC32 of the stored body u32 | body

    body = JSON length u32 | JSON {netcompress version, spec, quant config} | one record per
    state_dict entry, in the order the rebuilt model lists them (names and shapes come from the
    spec, so none are stored)

Records are written and read by the codecs (compress/codecs.py). Decoding gives an ordinary fp32
model with the file's spec attached.
"""

from __future__ import annotations

import json
import lzma
import struct
import zlib
from pathlib import Path

import torch.nn as nn

from ..compress.codecs import Reader, decode_tensor
from ..errors import NetcompressError
from .model_file import spec_from_dict

MAGIC = b"\x89NCQ"
VERSION = 1
HEADER = struct.Struct("<4sBBII")  # magic, version, flags, body length, crc32
FLAG_LZMA = 1
# Raw LZMA2 stream: no container header (the .ncq header already has length and checksum).
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def pack(meta: dict, records: list[bytes], entropy: bool) -> bytes:
    """The whole file: header, then the JSON `meta` and the records, LZMA-compressed when `entropy`.

    LZMA rather than zlib: on ten StudentNet files (two models, five codecs) LZMA was smaller in
    seven, by up to 3%, and at most 0.7% larger in the others; k-bit codes are near their entropy
    already, so either saves only 1-11%.
    """
    head = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    body = b"".join([struct.pack("<I", len(head)), head, *records])
    flags = 0
    if entropy:
        body = lzma.compress(body, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
        flags |= FLAG_LZMA
    return HEADER.pack(MAGIC, VERSION, flags, len(body), zlib.crc32(body)) + body


def unpack(blob: bytes, source: str) -> tuple[dict, Reader]:
    """Check the header and checksum; returns the JSON meta and a reader at the first record."""
    if len(blob) < HEADER.size or blob[:4] != MAGIC:
        raise NetcompressError(f"{source} is not a netcompress quantized file (.ncq); make one with "
                               "`netcompress quantize MODEL --out FILE.ncq`")
    _, version, flags, length, crc = HEADER.unpack_from(blob)
    if version > VERSION:
        raise NetcompressError(f"{source}: .ncq version {version} is newer than this netcompress reads ({VERSION}); "
                               "upgrade netcompress")
    body = blob[HEADER.size:]
    if len(body) != length:
        raise NetcompressError(f"{source}: file is truncated or has trailing bytes ({len(body)} of {length} "
                               "body bytes); re-create it with `netcompress quantize`")
    if zlib.crc32(body) != crc:
        raise NetcompressError(f"{source}: checksum mismatch, the file is corrupted; re-create it with "
                               "`netcompress quantize`")
    if flags & FLAG_LZMA:
        body = lzma.decompress(body, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    r = Reader(body, source)
    meta = json.loads(r.take(struct.unpack("<I", r.take(4))[0]))
    return meta, r


def decode_model(blob: bytes, source: str = "<bytes>", base: nn.Module | None = None) -> nn.Module:
    """The fp32 model a .ncq file holds, spec attached (its info records the quantization under "quantized")."""
    meta, r = unpack(blob, source)
    spec = spec_from_dict(meta["spec"], source)
    spec = spec.with_info(quantized=meta["quant"])
    model = spec.build(base)
    state = {name: decode_tensor(r, like, name) for name, like in model.state_dict().items()}
    if r.pos != len(r.buf):
        raise NetcompressError(f"{source}: {len(r.buf) - r.pos} bytes left over after the last tensor: the file "
                               "does not match its spec's architecture")
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_ncq(path: str | Path, base: nn.Module | None = None) -> nn.Module:
    """Decode a .ncq file into an ordinary fp32 model (on `base` for a user's own module)."""
    path = Path(path)
    if not path.exists():
        raise NetcompressError(f"quantized model file {path} does not exist")
    return decode_model(path.read_bytes(), str(path), base)
