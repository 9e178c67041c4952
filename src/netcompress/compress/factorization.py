"""Low-rank factorizations of one layer: truncated SVD (Linear, 1x1 Conv2d) and Tucker-2 over the channel modes
(k x k Conv2d, HOSVD then HOOI sweeps), each built as an nn.Sequential of plain layers (see lowrank.py)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..models.surgery import describe

HOOI_SWEEPS = 5


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank r whose top-r squared singular values hold at least `energy` of the total (>= 1)."""
    sq = singular_values.double() ** 2
    total = float(sq.sum())
    if total == 0:
        return 1
    cumulative = torch.cumsum(sq, 0) / total
    r = int((cumulative < energy - 1e-9).sum()) + 1
    return max(1, min(r, len(singular_values)))


def rank_for_ratio(full_rank: int, ratio: float) -> int:
    return max(1, min(full_rank, math.ceil(ratio * full_rank - 1e-9)))


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] ≈ A [out, r] @ B [r, in] with A = U·S^½ and B = S^½·Vᵀ (balanced factors)."""
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(weight.dtype), (root[:, None] * vh[:rank]).to(weight.dtype)


def _leading(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    """The `rank` leading left singular vectors of `matrix` [m, n]: eigenvectors of M·Mᵀ (m x m, cheap for wide M)."""
    _, vectors = torch.linalg.eigh(matrix @ matrix.T)  # ascending eigenvalues
    return vectors.flip(1)[:, :rank]


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values (descending) of `matrix`, via the eigenvalues of its smaller Gram matrix."""
    m = matrix.double()
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return torch.linalg.eigvalsh(gram).flip(0).clamp(min=0).sqrt()


def tucker2(weight: torch.Tensor, r_in: int, r_out: int, sweeps: int = HOOI_SWEEPS):
    """Tucker-2 of a conv weight [out, in, kh, kw] over its channel modes.

    Returns (U_in [in, r_in] or None, core [r_out, r_in, kh, kw], U_out [out, r_out] or None); a
    factor is None when its mode keeps its full size (then it would be an invertible rotation).
    W ≈ core ×_out U_out ×_in U_in. HOSVD initialisation, then `sweeps` HOOI refinements.
    """
    w = weight.double()
    c_out, c_in = w.shape[:2]
    keep_in, keep_out = r_in < c_in, r_out < c_out

    def unfold_out(t):  # [out, in*kh*kw]
        return t.reshape(t.shape[0], -1)

    def unfold_in(t):  # [in, out*kh*kw]
        return t.transpose(0, 1).reshape(t.shape[1], -1)

    u_out = _leading(unfold_out(w), r_out) if keep_out else None
    u_in = _leading(unfold_in(w), r_in) if keep_in else None
    if keep_in and keep_out:
        for _ in range(sweeps):
            u_in = _leading(unfold_in(torch.einsum("oikl,or->rikl", w, u_out)), r_in)
            u_out = _leading(unfold_out(torch.einsum("oikl,is->oskl", w, u_in)), r_out)
    core = w
    if u_out is not None:
        core = torch.einsum("oikl,or->rikl", core, u_out)
    if u_in is not None:
        core = torch.einsum("rikl,is->rskl", core, u_in)
    cast = lambda t: None if t is None else t.to(weight.dtype).contiguous()  # noqa: E731
    return cast(u_in), cast(core), cast(u_out)


def _conv_desc(conv: nn.Conv2d, **changes) -> dict:
    return {**describe(conv), **changes}


@torch.no_grad()
def factorize_layer(layer: nn.Module, ranks: tuple[int, ...]) -> nn.Sequential:
    """The factorized replacement of `layer` at `ranks` ((r,) for SVD, (r_in, r_out) for Tucker-2)."""
    dtype, device = layer.weight.dtype, layer.weight.device
    bias = layer.bias
    if isinstance(layer, nn.Linear):
        a, b = svd_factors(layer.weight, ranks[0])
        first, second = nn.Linear(layer.in_features, ranks[0], bias=False), nn.Linear(ranks[0], layer.out_features,
                                                                                     bias=bias is not None)
        first.weight.copy_(b)
        second.weight.copy_(a)
        parts = [first, second]
    elif not isinstance(layer, nn.Conv2d) or layer.groups != 1:
        raise NetcompressError(f"cannot factorize {type(layer).__name__} (only Linear and groups=1 Conv2d)")
    elif tuple(layer.kernel_size) == (1, 1):
        r = ranks[0]
        a, b = svd_factors(layer.weight.flatten(1), r)
        first = nn.Conv2d(**{k: v for k, v in _conv_desc(layer, out_channels=r, bias=False).items() if k != "type"})
        second = nn.Conv2d(r, layer.out_channels, 1, bias=bias is not None)
        first.weight.copy_(b[:, :, None, None])
        second.weight.copy_(a[:, :, None, None])
        parts = [first, second]
    else:
        r_in, r_out = ranks
        u_in, core, u_out = tucker2(layer.weight, r_in, r_out)
        parts = []
        if u_in is not None:
            conv_in = nn.Conv2d(layer.in_channels, r_in, 1, bias=False)
            conv_in.weight.copy_(u_in.t()[:, :, None, None])
            parts.append(conv_in)
        core_desc = _conv_desc(layer, in_channels=core.shape[1], out_channels=core.shape[0],
                               bias=u_out is None and bias is not None)
        conv_core = nn.Conv2d(**{k: v for k, v in core_desc.items() if k != "type"})
        conv_core.weight.copy_(core)
        parts.append(conv_core)
        if u_out is not None:
            conv_out = nn.Conv2d(r_out, layer.out_channels, 1, bias=bias is not None)
            conv_out.weight.copy_(u_out[:, :, None, None])
            parts.append(conv_out)
    if bias is not None:
        parts[-1].bias.copy_(bias)
    return nn.Sequential(*parts).to(device=device, dtype=dtype).train(layer.training)
