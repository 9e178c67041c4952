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

import torch
import torch.nn as nn

from ..compress.codecs import Reader, decode_tensor
from ..errors import NetcompressError
from ..process import available_memory
from .integrity import MAX_MODEL_BYTES
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


MAX_HEAD_BYTES = 16 * 1024**2  # the JSON spec: a pruned ResNet-152's overrides take under 100 kB


def unpack(blob: bytes, source: str, base: nn.Module | None = None) -> tuple[dict, Reader, nn.Module]:
    """Check the header and checksum; returns the JSON meta (spec and quant checked), a reader at the first record
    and the architecture on the meta device (shapes, no storage), to decode against.

    A compressed body is decompressed only as far as the spec's tensors can need: a file that would expand
    further (a decompression bomb) is refused, and nothing real is built before its records are read.
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
        raise NetcompressError(f"{source}: file is truncated or has trailing bytes ({len(body)} of {length:,} "
                               "body bytes); re-create it with `netcompress quantize`")
    if zlib.crc32(body) != crc:
        raise NetcompressError(f"{source}: checksum mismatch, the file is corrupted; re-create it with "
                               "`netcompress quantize`")
    read = _stream(body, flags & FLAG_LZMA, source)
    head = read(4)
    if len(head) < 4:
        raise NetcompressError(f"{source}: its body ends before its header; the file is damaged, re-create it")
    head_bytes = struct.unpack("<I", head)[0]
    if head_bytes > MAX_HEAD_BYTES:
        raise NetcompressError(f"{source}: its header claims {head_bytes:,} bytes of spec (at most "
                               f"{MAX_HEAD_BYTES:,}); the file is damaged or crafted, re-create it")
    meta = _read_meta(read(head_bytes), source)
    spec = spec_from_dict(meta["spec"], source)
    if spec.arch is None and base is None:
        spec.build()  # says: a user's own module needs its base (model=...)
    shapes = _on_meta_device(spec, base, source)
    records_limit = 4096 + sum(t.numel() * t.element_size() for t in shapes.state_dict().values())
    return meta, _StreamReader(read, source, records_limit), shapes


def _read_meta(head: bytes, source: str) -> dict:
    try:
        meta = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise NetcompressError(f"{source}: its header is not a readable spec ({type(exc).__name__}); the file is "
                               "damaged, re-create it") from None
    for key in ("spec", "quant"):
        if not isinstance(meta, dict) or not isinstance(meta.get(key), dict):
            raise NetcompressError(f"{source}: its header has no {key} object; the file is damaged or was not made "
                                   "by `netcompress quantize`, re-create it")
    return meta


def _on_meta_device(spec, base: nn.Module | None, source: str) -> nn.Module:
    """The spec's architecture with shapes only, its weights' bytes checked against MAX_MODEL_BYTES."""
    try:
        with torch.device("meta"):
            shapes = spec.build(base)
    except NetcompressError as exc:
        raise NetcompressError(f"{source}: {exc}") from None
    except Exception as exc:  # constructors raise many types for impossible arguments
        raise NetcompressError(f"{source}: its spec describes no buildable network ({type(exc).__name__}: {exc}); "
                               "the file is damaged or was edited") from None
    n = sum(t.numel() * t.element_size() for t in (*shapes.parameters(), *shapes.buffers()))
    if n > MAX_MODEL_BYTES:
        raise NetcompressError(f"{source}: its spec asks for {n:,} bytes of weights, above the "
                               f"{MAX_MODEL_BYTES:,}-byte limit; the file is damaged or was edited")
    return shapes


def _check_memory(shapes: nn.Module, spec, source: str) -> None:
    """Decoding holds the decoded tensors and the model at once: refuse, with the numbers, what cannot fit."""
    need = 2 * sum(t.numel() * t.element_size() for t in (*shapes.parameters(), *shapes.buffers()))
    free = available_memory()
    if free is not None and need > free:
        raise NetcompressError(f"{source}: decoding its {spec.arch or 'model'} needs about {need / 2**30:,.1f} GiB of "
                               f"memory and {free / 2**30:,.1f} GiB is available; free some memory or decode it on a "
                               "larger machine")


class _StreamReader(Reader):
    """A Reader that decompresses only what the records ask for, never past `limit` bytes in all."""

    def __init__(self, read, source: str, limit: int):
        super().__init__(b"", source)
        self.read, self.limit = read, limit

    def take(self, n: int) -> bytes:
        if self.pos + n > self.limit:
            raise NetcompressError(f"{self.source}: its records expand beyond what the spec's architecture can hold "
                                   f"({self.limit:,} bytes); the file is damaged or crafted")
        out = self.read(n)
        if len(out) < n:
            raise NetcompressError(f"{self.source}: quantized data ends early (damaged file); re-create it with "
                                   "`netcompress quantize`")
        self.pos += n
        return out

    def left_over(self) -> int:
        """Bytes after the last record (counted up to 4096)."""
        return len(self.read(4096))


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
    fed = [False]  # the body is given once; later calls drain what the decompressor holds

    def read_lzma(n: int) -> bytes:
        chunks, want = [], n
        while want > 0 and not decompressor.eof and not (fed[0] and decompressor.needs_input):
            try:
                out = decompressor.decompress(b"" if fed[0] else body, max_length=want)
            except lzma.LZMAError as exc:
                raise NetcompressError(f"{source}: its compressed body is damaged ({exc}); re-create it") from None
            fed[0] = True
            if not out:
                break
            chunks.append(out)
            want -= len(out)
        return b"".join(chunks)

    return read_lzma


def decode_model(blob: bytes, source: str = "<bytes>", base: nn.Module | None = None, *, verify: bool = True) -> nn.Module:
    """The fp32 model a .ncq file holds, spec attached (its info records the quantization under "quantized")."""
    meta, r, shapes = unpack(blob, source, base)
    spec = spec_from_dict(meta["spec"], source).with_info(quantized=meta["quant"])
    _check_memory(shapes, spec, source)
    state = {name: decode_tensor(r, like, name) for name, like in shapes.state_dict().items()}
    extra = r.left_over()
    if extra:
        raise NetcompressError(f"{source}: its records expand beyond what the spec's architecture holds ("
                               f"{extra:,}{'+' if extra == 4096 else ''} bytes left over after the last tensor); the "
                               "file is damaged or crafted, or does not match its spec")
    model = spec.build(base)
    model.load_state_dict(state, strict=True)
    del state
    if verify:
        check_finite(model, source)
    return model.eval()


def load_ncq(path: str | Path, base: nn.Module | None = None, *, verify: bool = True) -> nn.Module:
    """Decode a .ncq file into an ordinary fp32 model (on `base` for a user's own module)."""
    path = Path(path)
    if not path.is_file():
        raise NetcompressError(f"quantized model file {path} does not exist")
    return decode_model(path.read_bytes(), str(path), base, verify=verify)
