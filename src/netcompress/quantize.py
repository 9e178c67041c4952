"""Storage codecs and the compact quantized model file (`.ncq`).

Quantization here buys bytes on disk, not speed (the int8 runtime is `onnx_export`): a file
stores every tensor of a model's state_dict with a codec and decodes back to an ordinary fp32
model rebuilt from the spec's registry.

File layout (little-endian), deterministic for a given model and config:

    magic b"\\x89NCQ" | version u8 | flags u8 (bit 0: body is lzma-compressed) | body length u32 |
    CRC32 of the stored body u32 | body

    body = JSON length u32 | JSON {spec, quant config} | one record per state_dict entry, in the
    order the rebuilt model lists them (names and shapes come from the spec, so none are stored)

A record is a kind byte and its payload: RAW (the tensor's own dtype), CONST (one value), FP16,
MINMAX8 (the course's per-tensor uint8 with float32 min and max), AFFINE (k-bit codes with one
fp16 offset and step per output channel), KMEANS (one fp16 scale per output channel, a shared fp16
codebook of 2**k entries, k-bit indices). Codes narrower than 8 bits are bit-packed.
"""

from __future__ import annotations

import json
import lzma
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import __version__
from .artifact import ModelSpec
from .errors import NetcompressError
from .files import atomic_write

MAGIC = b"\x89NCQ"
VERSION = 1
HEADER = struct.Struct("<4sBBII")  # magic, version, flags, body length, crc32
FLAG_LZMA = 1
CODECS = ("fp16", "int8-minmax", "int8-channel", "kbit", "kmeans")
RAW, CONST, FP16, MINMAX8, AFFINE, KMEANS = range(6)
FP16_MAX = float(np.finfo(np.float16).max)
# Raw LZMA2 stream: no container header (the .ncq header already has length and checksum).
LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


@dataclass(frozen=True)
class QuantConfig:
    """How to store a model.

    codec: fp16 | int8-minmax (the course's, every float tensor) | int8-channel (= kbit, 8 bits) |
    kbit (per-channel affine, MSE-searched range) | kmeans (weight sharing, Deep Compression).
    Tensors with fewer than 2 dims (biases, BatchNorm vectors: 2.5% of StudentNet's numbers) or
    under `min_elements` stay fp16. Measured on StudentNet at 4 bits: keeping the four tensors
    under 1,024 elements (first conv, first depthwise and pointwise convs) in fp16 cost 2.1 kB
    (+1.5%) and halved the change in the logits (relative L2 0.33 -> 0.18); int8 biases would
    save 2.1 kB for a slightly larger change. `fold_bn` folds each BatchNorm into the conv before
    it, leaving constant (4-byte) BN tensors. `tensor_bits` overrides `bits` per tensor name
    (see `bit_allocation`).
    """

    codec: str = "int8-minmax"
    bits: int = 8
    entropy: bool = False
    fold_bn: bool | None = None  # None: on for kbit, int8-channel and kmeans; off for the course codecs
    min_elements: int = 1024
    tensor_bits: dict | None = None

    def checked(self) -> "QuantConfig":
        if self.codec not in CODECS:
            raise NetcompressError(f"--codec {self.codec!r}: choose one of {', '.join(CODECS)}")
        fixed = {"fp16": 16, "int8-minmax": 8, "int8-channel": 8}
        if self.codec in fixed and self.bits not in (fixed[self.codec], 8):
            raise NetcompressError(f"--bits {self.bits}: codec {self.codec} is always {fixed[self.codec]}-bit; "
                                   "use --codec kbit or kmeans for other widths")
        for b in [self.bits, *(self.tensor_bits or {}).values()]:
            if self.codec in ("kbit", "kmeans") and not 2 <= b <= 8:
                raise NetcompressError(f"--bits {b}: codec {self.codec} takes 2 to 8 bits")
        if self.tensor_bits and self.codec not in ("kbit", "kmeans"):
            raise NetcompressError(f"per-tensor bits need codec kbit or kmeans, not {self.codec}")
        bits = fixed.get(self.codec, self.bits)
        fold = self.fold_bn if self.fold_bn is not None else self.codec in ("kbit", "int8-channel", "kmeans")
        return QuantConfig(self.codec, bits, self.entropy, fold, self.min_elements, self.tensor_bits)

    def bits_for(self, name: str) -> int:
        return (self.tensor_bits or {}).get(name, self.bits)


# --- bit packing -------------------------------------------------------------------------------

def packed_size(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """n codes < 2**bits -> ceil(n*bits/8) bytes, least significant bit first."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8).ravel()
    if codes.size and int(codes.max()) >> bits:
        raise ValueError(f"a code does not fit in {bits} bits")
    if bits == 8:
        return codes.tobytes()
    planes = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack_bits(buf: bytes, bits: int, n: int) -> np.ndarray:
    """Inverse of pack_bits: n uint8 codes."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    if bits == 8:
        return raw[:n].copy()
    planes = np.unpackbits(raw, count=n * bits, bitorder="little").reshape(n, bits)
    return np.packbits(planes, axis=1, bitorder="little")[:, 0]


# --- codecs on one tensor (numpy) --------------------------------------------------------------

def minmax8_encode(w: np.ndarray) -> tuple[float, float, np.ndarray]:
    """The course's 8-bit codec: q = round((w - min) / (max - min) * 255); a constant tensor gives q = 0."""
    w64 = np.asarray(w, dtype=np.float64)
    lo, hi = float(w64.min()), float(w64.max())
    if hi == lo:
        return lo, hi, np.zeros(w64.shape, dtype=np.uint8)
    return lo, hi, np.round((w64 - lo) / (hi - lo) * 255).astype(np.uint8)


def minmax8_decode(lo: float, hi: float, q: np.ndarray) -> np.ndarray:
    """w = q / 255 * (max - min) + min, in float64 as the course did."""
    return q.astype(np.float64) / 255 * (hi - lo) + lo


def affine_encode(rows: np.ndarray, bits: int, search: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row asymmetric k-bit quantization -> (offset fp16, step fp16, codes).

    The range is min..max shrunk by the factor (1.0 down to 0.5) that minimises each row's squared
    error: clipping a few outliers buys finer steps, which matters below 8 bits. Codes are computed
    against the fp16-rounded offset and step, so storing them adds no error.
    """
    w = np.asarray(rows, dtype=np.float32)
    levels = 2**bits - 1
    lo0, hi0 = w.min(1), w.max(1)
    best = (np.full(len(w), np.inf), None, None, None)
    for shrink in np.linspace(1.0, 0.5, 11) if search else [1.0]:
        lo = (lo0 * shrink).astype(np.float16).astype(np.float32)
        step = ((hi0 - lo0) * shrink / levels).astype(np.float16).astype(np.float32)
        safe = np.where(step > 0, step, 1.0)[:, None]
        codes = np.clip(np.rint((w - lo[:, None]) / safe), 0, levels)
        codes[step == 0] = 0
        err = ((codes * step[:, None] + lo[:, None] - w) ** 2).sum(1)
        better = err < best[0]
        if best[1] is None:
            best = (err, lo, step, codes)
        else:
            best = (np.where(better, err, best[0]), np.where(better, lo, best[1]), np.where(better, step, best[2]),
                    np.where(better[:, None], codes, best[3]))
    _, lo, step, codes = best
    return lo.astype(np.float16), step.astype(np.float16), codes.astype(np.uint8)


def affine_decode(lo: np.ndarray, step: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * step.astype(np.float32)[:, None] + lo.astype(np.float32)[:, None]


def kmeans_rows(rows: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weight sharing with per-row scales -> (scale fp16 [rows], codebook fp16 [2**bits], codes).

    Rows are divided by their max |w| and share one k-means codebook. Deep Compression's plain
    per-tensor codebook let channels with small weights collapse onto one or two centres: on the
    course's StudentNet at 4 bits it moved the logits by 0.87 (relative L2) against 0.35 with scales.
    """
    w = np.asarray(rows, dtype=np.float32)
    scale = np.abs(w).max(1).astype(np.float16)
    safe = np.where(scale > 0, scale.astype(np.float32), 1.0)[:, None]
    book, codes = kmeans_1d(w / safe, 2**bits)
    return scale, book, codes.reshape(w.shape)


def kmeans_1d(values: np.ndarray, k: int, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on scalars -> (codebook fp16 [k], nearest-code indices).

    Linear initialisation over [min, max] (Deep Compression found it keeps the rare large weights
    that density-based init loses) makes it deterministic; in 1-D the clusters are intervals, so
    each step is a sort-free searchsorted over the sorted values.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    centers = np.linspace(x[0], x[-1], k)
    cumsum = np.concatenate([[0.0], np.cumsum(x)])
    for _ in range(iters):
        cuts = np.concatenate([[0], np.searchsorted(x, (centers[1:] + centers[:-1]) / 2), [len(x)]])
        counts = np.diff(cuts)
        sums = cumsum[cuts[1:]] - cumsum[cuts[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centers)
        if np.array_equal(new, centers):
            break
        centers = new
    book = centers.astype(np.float16)
    return book, nearest_code(values, book)


def nearest_code(values: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of a sorted codebook for every value."""
    mids = (book[1:].astype(np.float64) + book[:-1].astype(np.float64)) / 2
    return np.searchsorted(mids, np.asarray(values, dtype=np.float64).ravel()).astype(np.uint8)


# --- records -----------------------------------------------------------------------------------

def _fits_fp16(w: np.ndarray) -> bool:
    return bool(np.isfinite(w).all() and np.abs(w).max(initial=0) <= FP16_MAX)


def encode_tensor(t: torch.Tensor, cfg: QuantConfig, bits: int | None = None) -> bytes:
    """One state_dict entry -> record bytes, following cfg (see QuantConfig); `bits` overrides cfg.bits."""
    bits = bits or cfg.bits
    w = t.detach().cpu().contiguous().numpy()
    if not t.is_floating_point():
        return bytes([RAW]) + w.tobytes()
    w = w.astype(np.float32)
    if w.size and (w == w.flat[0]).all():
        return bytes([CONST]) + struct.pack("<f", float(w.flat[0]))
    if cfg.codec == "int8-minmax":
        lo, hi, q = minmax8_encode(w)
        return bytes([MINMAX8]) + struct.pack("<ff", lo, hi) + q.tobytes()
    if not _fits_fp16(w):
        return bytes([RAW]) + w.tobytes()
    if cfg.codec == "fp16" or w.ndim < 2 or w.size < cfg.min_elements:
        return bytes([FP16]) + w.astype(np.float16).tobytes()
    rows = w.reshape(len(w), -1)
    if cfg.codec == "kmeans":
        scale, book, codes = kmeans_rows(rows, bits)
        return bytes([KMEANS, bits]) + scale.tobytes() + book.tobytes() + pack_bits(codes, bits)
    lo, step, codes = affine_encode(rows, bits)
    return bytes([AFFINE, bits]) + lo.tobytes() + step.tobytes() + pack_bits(codes, bits)


class _Reader:
    """Cursor over a body; running out of bytes means a damaged file."""

    def __init__(self, buf: bytes, source: str):
        self.buf, self.pos, self.source = memoryview(buf), 0, source

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise NetcompressError(f"{self.source}: quantized data ends early (damaged file); re-create it with "
                                   "`netcompress quantize`")
        out = self.buf[self.pos:self.pos + n].tobytes()
        self.pos += n
        return out

    def array(self, dtype, n: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.frombuffer(self.take(dtype.itemsize * n), dtype=dtype).copy()


def decode_tensor(r: _Reader, like: torch.Tensor, name: str) -> torch.Tensor:
    """Read one record; `like` (the rebuilt model's tensor) gives the shape and dtype."""
    kind, n, shape = r.take(1)[0], like.numel(), like.shape
    if kind == RAW:
        dtype = np.float32 if like.is_floating_point() else torch.empty(0, dtype=like.dtype).numpy().dtype
        w = r.array(dtype, n)
    elif kind == CONST:
        w = np.full(n, struct.unpack("<f", r.take(4))[0], dtype=np.float32)
    elif kind == FP16:
        w = r.array(np.float16, n)
    elif kind == MINMAX8:
        lo, hi = struct.unpack("<ff", r.take(8))
        w = minmax8_decode(lo, hi, r.array(np.uint8, n))
    elif kind == AFFINE:
        bits = r.take(1)[0]
        lo, step = r.array(np.float16, shape[0]), r.array(np.float16, shape[0])
        codes = unpack_bits(r.take(packed_size(n, bits)), bits, n)
        w = affine_decode(lo, step, codes.reshape(shape[0], -1))
    elif kind == KMEANS:
        bits = r.take(1)[0]
        scale = r.array(np.float16, shape[0]).astype(np.float32)
        book = r.array(np.float16, 2**bits).astype(np.float32)
        codes = unpack_bits(r.take(packed_size(n, bits)), bits, n)
        w = book[codes].reshape(shape[0], -1) * scale[:, None]
    else:
        raise NetcompressError(f"{r.source}: tensor {name} has unknown record kind {kind} (damaged file, or "
                               "written by a newer netcompress)")
    return torch.from_numpy(np.ascontiguousarray(w).reshape(tuple(shape))).to(like.dtype)


# --- BatchNorm folding -------------------------------------------------------------------------

@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d (inside an nn.Sequential) into that conv.

    The BatchNorm stays in the model as an identity (weight 1, mean 0, var 1 - eps; bias 0 when the
    conv has a bias to take the shift), so the architecture is unchanged and its constant tensors
    cost 4 bytes each. Returns the number of folded pairs.
    """
    folded = 0
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(seq.children())
        for conv, bn in zip(kids, kids[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.affine
                    and bn.track_running_stats):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            conv.weight.mul_(scale.view(-1, *[1] * (conv.weight.dim() - 1)))
            if conv.bias is not None:
                conv.bias.mul_(scale).add_(shift)
                bn.bias.zero_()
            else:
                bn.bias.copy_(shift)
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            folded += 1
    return folded


# --- the file ----------------------------------------------------------------------------------

def encode_model(model: nn.Module, spec: ModelSpec, cfg: QuantConfig) -> bytes:
    """The whole .ncq file as bytes.

    --entropy compresses the body with raw LZMA2 rather than zlib: on ten StudentNet files (two
    models, five codecs) LZMA was smaller in seven, by up to 3%, and at most 0.7% larger in the
    others; k-bit codes are near their entropy already, so either saves only 1-11%.
    """
    cfg = cfg.checked()
    if cfg.fold_bn:
        model = _copy_model(model, spec)
        fold_batchnorm(model)
    meta = {"netcompress": __version__, "spec": asdict(spec), "quant": asdict(cfg)}
    head = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    body = b"".join([struct.pack("<I", len(head)), head,
                     *(encode_tensor(t, cfg, cfg.bits_for(k)) for k, t in model.state_dict().items())])
    flags = 0
    if cfg.entropy:
        body = lzma.compress(body, format=lzma.FORMAT_RAW, filters=LZMA_FILTERS)
        flags |= FLAG_LZMA
    return HEADER.pack(MAGIC, VERSION, flags, len(body), zlib.crc32(body)) + body


def decode_model(blob: bytes, source: str = "<bytes>") -> tuple[nn.Module, ModelSpec, QuantConfig]:
    """Check the header and checksum, rebuild the model from the spec, fill in the decoded tensors."""
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
    r = _Reader(body, source)
    meta = json.loads(r.take(struct.unpack("<I", r.take(4))[0]))
    spec, cfg = ModelSpec(**meta["spec"]), QuantConfig(**meta["quant"])
    model = _build(spec)
    state = {name: decode_tensor(r, like, name) for name, like in model.state_dict().items()}
    if r.pos != len(body):
        raise NetcompressError(f"{source}: {len(body) - r.pos} bytes left over after the last tensor: the file "
                               "does not match its spec's architecture")
    model.load_state_dict(state, strict=True)
    return model.eval(), spec, cfg


def save_quantized(path: str | Path, model: nn.Module, spec: ModelSpec, cfg: QuantConfig) -> Path:
    """Write a .ncq file atomically; returns its path."""
    blob = encode_model(model, spec, cfg)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(blob))


def load_quantized(path: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Decode a .ncq file into an ordinary fp32 model and its spec."""
    path = Path(path)
    if not path.exists():
        raise NetcompressError(f"quantized model file {path} does not exist")
    model, spec, _ = decode_model(path.read_bytes(), str(path))
    return model, spec


def roundtrip(model: nn.Module, spec: ModelSpec, cfg: QuantConfig) -> tuple[nn.Module, int]:
    """(decoded model, file size in bytes) without touching the disk: what a codec costs and keeps."""
    blob = encode_model(model, spec, cfg)
    return decode_model(blob)[0], len(blob)


def _build(spec: ModelSpec) -> nn.Module:
    """The spec's architecture, pruned or factorized layers included; the file holds the weights."""
    return spec.build(**({"pretrained": False} if spec.kwargs.get("pretrained") else {}))


def _copy_model(model: nn.Module, spec: ModelSpec) -> nn.Module:
    copy = _build(spec)
    copy.load_state_dict(model.state_dict())
    return copy.eval()
