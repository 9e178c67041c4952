"""Storage codecs: how one tensor of a model's state_dict is written in a `.ncq` file and read back.

A codec is a class with a unique name and record kind (the first byte of its records in .ncq
files), registered with `@register_codec`; the CLI's and the recipe's choices and bit allocation
read the registry. Built in:

  fp16          every float tensor as float16
  int8-minmax   the course's: per-tensor uint8 with float32 min and max, every float tensor
  kbit          per-channel affine k-bit codes (2..8), MSE-searched range, bit-packed
  int8-channel  kbit at 8 bits
  kmeans        weight sharing (Deep Compression): a shared k-bit codebook with per-row scales

Non-float tensors are stored raw and constant tensors as one value, whatever the codec; codecs
other than int8-minmax keep vectors (biases, BatchNorm) and tensors under `min_elements` in fp16.
"""

from __future__ import annotations

import copy
import struct

import numpy as np
import torch
import torch.nn as nn

from ..errors import NetcompressError

RAW, CONST = 0, 1  # record kinds every codec shares; a codec's own kinds start at 2
FP16_MAX = float(np.finfo(np.float16).max)


class Reader:
    """Cursor over a decoded body; running out of bytes means a damaged file."""

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


# --- the registry ------------------------------------------------------------------------------

class Codec:
    """One way to store a float tensor. Subclass it, set `name` and a new `kind`, and register it."""

    name: str = ""
    kind: int = -1  # first byte of this codec's records in .ncq files: stable, never reused
    fixed_bits: int | None = None  # the codec's only width; None: any width 2..8, per tensor
    fold_bn: bool = True  # fold BatchNorm into the conv before it unless the config says otherwise
    every_float: bool = False  # store vectors and small tensors this way too (else they stay fp16)

    def encode(self, w: np.ndarray, bits: int) -> bytes:
        """The record's payload for float32 array `w` (any shape; dim 0 = output channels)."""
        raise NotImplementedError

    def decode(self, r: Reader, shape: tuple[int, ...]) -> np.ndarray:
        """Read one payload back as an array of `shape` (or any shape with as many elements)."""
        raise NotImplementedError


_CODECS: dict[str, Codec] = {}
_BY_KIND: dict[int, Codec] = {}


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make a codec available by its name (CLI, recipes, `QuantConfig`) and its record kind."""
    codec = cls()
    if not codec.name or codec.kind in (RAW, CONST) or codec.kind < 0 or codec.kind > 255:
        raise ValueError(f"codec {cls.__name__} needs a name and a record kind in 2..255")
    owner = _BY_KIND.get(codec.kind)
    if owner is not None and not isinstance(codec, type(owner)):
        raise ValueError(f"record kind {codec.kind} already belongs to codec {owner.name!r}")
    _CODECS[codec.name] = codec
    _BY_KIND.setdefault(codec.kind, codec)
    return cls


def get_codec(name: str) -> Codec:
    if name not in _CODECS:
        raise NetcompressError(f"codec {name!r}: choose one of {', '.join(list_codecs())}")
    return _CODECS[name]


def list_codecs() -> list[str]:
    return list(_CODECS)


# --- numeric building blocks -------------------------------------------------------------------

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



# --- the built-in codecs -----------------------------------------------------------------------

@register_codec
class Float16(Codec):
    name, kind, fixed_bits, fold_bn = "fp16", 2, 16, False

    def encode(self, w, bits):
        return w.astype(np.float16).tobytes()

    def decode(self, r, shape):
        return r.array(np.float16, int(np.prod(shape)))


@register_codec
class MinMax8(Codec):
    """The course's 8-bit codec, on every float tensor (BatchNorm statistics included)."""

    name, kind, fixed_bits, fold_bn, every_float = "int8-minmax", 3, 8, False, True

    def encode(self, w, bits):
        lo, hi, q = minmax8_encode(w)
        return struct.pack("<ff", lo, hi) + q.tobytes()

    def decode(self, r, shape):
        lo, hi = struct.unpack("<ff", r.take(8))
        return minmax8_decode(lo, hi, r.array(np.uint8, int(np.prod(shape))))


@register_codec
class KBit(Codec):
    """Per-channel affine k-bit codes: one fp16 offset and step per output channel."""

    name, kind = "kbit", 4

    def encode(self, w, bits):
        lo, step, codes = affine_encode(w.reshape(len(w), -1), bits)
        return bytes([bits]) + lo.tobytes() + step.tobytes() + pack_bits(codes, bits)

    def decode(self, r, shape):
        bits, n = r.take(1)[0], int(np.prod(shape))
        lo, step = r.array(np.float16, shape[0]), r.array(np.float16, shape[0])
        codes = unpack_bits(r.take(packed_size(n, bits)), bits, n)
        return affine_decode(lo, step, codes.reshape(shape[0], -1))


@register_codec
class Int8Channel(KBit):
    name, fixed_bits = "int8-channel", 8


@register_codec
class KMeans(Codec):
    """Weight sharing: one fp16 scale per output channel, a shared fp16 codebook of 2**k entries, k-bit indices."""

    name, kind = "kmeans", 5

    def encode(self, w, bits):
        scale, book, codes = kmeans_rows(w.reshape(len(w), -1), bits)
        return bytes([bits]) + scale.tobytes() + book.tobytes() + pack_bits(codes, bits)

    def decode(self, r, shape):
        bits, n = r.take(1)[0], int(np.prod(shape))
        scale = r.array(np.float16, shape[0]).astype(np.float32)
        book = r.array(np.float16, 2**bits).astype(np.float32)
        codes = unpack_bits(r.take(packed_size(n, bits)), bits, n)
        return book[codes].reshape(shape[0], -1) * scale[:, None]


# --- records -----------------------------------------------------------------------------------

def encode_tensor(t: torch.Tensor, codec: str, bits: int, min_elements: int = 1024) -> bytes:
    """One state_dict entry -> its record (kind byte + payload) under `codec` at `bits`."""
    w = t.detach().cpu().contiguous().numpy()
    if not t.is_floating_point():
        return bytes([RAW]) + w.tobytes()
    w = w.astype(np.float32)
    if w.size and (w == w.flat[0]).all():
        return bytes([CONST]) + struct.pack("<f", float(w.flat[0]))
    chosen = get_codec(codec)
    if not chosen.every_float:
        if not (np.isfinite(w).all() and np.abs(w).max(initial=0) <= FP16_MAX):
            return bytes([RAW]) + w.tobytes()
        if w.ndim < 2 or w.size < min_elements:
            chosen = get_codec("fp16")
    return bytes([chosen.kind]) + chosen.encode(w, bits)


def decode_tensor(r: Reader, like: torch.Tensor, name: str) -> torch.Tensor:
    """Read one record; `like` (the rebuilt model's tensor) gives the shape and dtype."""
    kind, n, shape = r.take(1)[0], like.numel(), tuple(like.shape)
    if kind == RAW:
        dtype = np.float32 if like.is_floating_point() else torch.empty(0, dtype=like.dtype).numpy().dtype
        w = r.array(dtype, n)
    elif kind == CONST:
        w = np.full(n, struct.unpack("<f", r.take(4))[0], dtype=np.float32)
    elif kind in _BY_KIND:
        w = _BY_KIND[kind].decode(r, shape)
    else:
        raise NetcompressError(f"{r.source}: tensor {name} has unknown record kind {kind} (damaged file, or "
                               "written by a newer netcompress)")
    return torch.from_numpy(np.ascontiguousarray(w).reshape(shape)).to(like.dtype)


def roundtrip_tensor(t: torch.Tensor, codec: str, bits: int, min_elements: int = 1024) -> tuple[torch.Tensor, int]:
    """(t as the file will hold it, its record's bytes): what storing `t` costs and keeps."""
    record = encode_tensor(t, codec, bits, min_elements)
    return decode_tensor(Reader(record, "<tensor>"), t, "<tensor>"), len(record)


# --- BatchNorm folding -------------------------------------------------------------------------

@torch.no_grad()
def fold_batchnorm(model: nn.Module, example_input: torch.Tensor | None = None) -> int:
    """Fold every BatchNorm2d that takes a Conv2d's output directly into that conv.

    With `example_input` (in eval mode) the pairs are found by running the model once, so blocks that
    call their layers by attribute (EfficientNet's MBConv) fold too; the folded model must then give the
    same outputs, else only the pairs inside an nn.Sequential are folded. The BatchNorm stays in the
    model as an identity (weight 1, mean 0, var 1 - eps; bias 0 when the conv has a bias to take the
    shift), so the architecture is unchanged and its constant tensors cost 4 bytes each. Returns the
    number of folded pairs.
    """
    if example_input is not None:
        before = copy.deepcopy(model.state_dict())
        pairs, reference = _pairs_by_running(model, example_input)
        for conv, bn in pairs:
            _fold(conv, bn)
        if torch.allclose(model(example_input), reference, rtol=1e-3, atol=1e-4 * reference.abs().max().item()):
            return len(pairs)
        model.load_state_dict(before)  # a conv's output is used elsewhere too: fold only the certain pairs
    pairs = [(conv, bn) for seq in model.modules() if isinstance(seq, nn.Sequential)
             for conv, bn in zip(list(seq.children()), list(seq.children())[1:]) if _foldable(conv, bn)]
    for conv, bn in pairs:
        _fold(conv, bn)
    return len(pairs)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.affine
            and bn.track_running_stats)


def _pairs_by_running(model: nn.Module, example_input: torch.Tensor) -> tuple[list[tuple[nn.Conv2d, nn.BatchNorm2d]],
                                                                             torch.Tensor]:
    """(conv, BatchNorm) pairs where the BatchNorm's input is the very tensor the conv returned, each used once;
    and the model's output on `example_input`."""
    made_by: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # the tensor is kept so that its id is not reused
    seen: list[tuple[nn.Module, nn.Module]] = []

    def conv_hook(conv, inputs, output):
        made_by[id(output)] = (conv, output)

    def bn_hook(bn, inputs, output):
        seen.append((made_by.get(id(inputs[0]), (None,))[0], bn))

    handles = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else bn_hook)
               for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    try:
        output = model(example_input)
    finally:
        for h in handles:
            h.remove()
    return [(c, b) for c, b in seen if sum(c is c2 or b is b2 for c2, b2 in seen) == 1 and _foldable(c, b)], output


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
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
