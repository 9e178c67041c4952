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
from .integrity import MAX_MODEL_BYTES, implied_bytes
from .model_file import check_finite, spec_from_dict

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


def unpack(blob: bytes, source: str, base: nn.Module | None = None) -> tuple[dict, Reader]:
    """Check the header and checksum; returns the JSON meta (spec checked) and a reader at the first record.

    A compressed body is decompressed only as far as its spec's architecture can need: a file that
    would expand further (a decompression bomb) is refused.
    """
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
    read = _stream(body, flags & FLAG_LZMA, source)
    head = read(4)
    meta_bytes = read(struct.unpack("<I", head)[0] if len(head) == 4 else 0)
    try:
        meta = json.loads(meta_bytes)
        spec = spec_from_dict(meta["spec"], source)
    except (ValueError, RecursionError, KeyError, TypeError) as exc:
        raise NetcompressError(f"{source}: its header is not a readable spec ({type(exc).__name__}); the file is "
                               "damaged, re-create it") from None
    if spec.arch is None and base is None:
        spec.build()  # says: a user's own module needs its base (model=...)
    records_limit = 4096 + implied_bytes(lambda: spec.build(base))
    if records_limit > MAX_MODEL_BYTES:
        raise NetcompressError(f"{source}: its spec asks for {records_limit:,} bytes of weights, above the "
                               f"{MAX_MODEL_BYTES:,}-byte limit; the file is damaged or was edited")
    records = read(records_limit + 1)
    if len(records) > records_limit:
        raise NetcompressError(f"{source}: its records expand beyond what the spec's architecture can hold "
                               f"({records_limit:,} bytes); the file is damaged or crafted")
    return meta, Reader(records, source)


def _stream(body: bytes, compressed: bool, source: str):
    """read(n): the next n bytes of the (decompressed) body, never decompressing more than asked."""
    if not compressed:
        position = [0]

        def read_plain(n: int) -> bytes:
            out = body[position[0]:position[0] + n]
            position[0] += len(out)
            return out

        return read_plain
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
    pending = [body]

    def read_lzma(n: int) -> bytes:
        try:
            out = decompressor.decompress(pending[0], max_length=n)
        except lzma.LZMAError as exc:
            raise NetcompressError(f"{source}: its compressed body is damaged ({exc}); re-create it") from None
        pending[0] = b""
        return out

    return read_lzma


def decode_model(blob: bytes, source: str = "<bytes>", base: nn.Module | None = None, *, verify: bool = True) -> nn.Module:
    """The fp32 model a .ncq file holds, spec attached (its info records the quantization under "quantized")."""
    meta, r = unpack(blob, source, base)
    spec = spec_from_dict(meta["spec"], source).with_info(quantized=meta["quant"])
    model = spec.build(base)
    state = {name: decode_tensor(r, like, name) for name, like in model.state_dict().items()}
    if r.pos != len(r.buf):
        raise NetcompressError(f"{source}: {len(r.buf) - r.pos} bytes left over after the last tensor: the file "
                               "does not match its spec's architecture")
    model.load_state_dict(state, strict=True)
    if verify:
        check_finite(model, source)
    return model.eval()


def load_ncq(path: str | Path, base: nn.Module | None = None, *, verify: bool = True) -> nn.Module:
    """Decode a .ncq file into an ordinary fp32 model (on `base` for a user's own module)."""
    path = Path(path)
    if not path.is_file():
        raise NetcompressError(f"quantized model file {path} does not exist")
    return decode_model(path.read_bytes(), str(path), base, verify=verify)
