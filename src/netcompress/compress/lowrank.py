"""Low-rank factorization of Linear and Conv2d layers, recorded in the model file as plain layers.

  Linear, 1x1 Conv2d   truncated SVD: W ≈ (U·S^½)(S^½·Vᵀ) -> two thin layers (in -> r -> out). The
                       first carries stride/padding/dilation, the second the bias.
  k x k Conv2d         Tucker-2 over the channel modes: 1x1 conv (in -> r_in), k x k core conv
                       (r_in -> r_out, with the original stride/padding/dilation), 1x1 conv
                       (r_out -> out, with the bias). Factors come from the SVDs of the two mode
                       unfoldings (HOSVD), refined by a few alternating (HOOI) sweeps. A mode kept
                       at full rank needs no factor: its 1x1 conv is left out (e.g. 3 input colors).
  grouped/depthwise    not factorized (reported as skipped).

Ranks, per layer: `energy` E (the smallest rank keeping a fraction E of the squared singular
values; for Tucker-2 per mode), `rank_ratio` R (a fraction of the full rank), or `target_params`
N (one common energy threshold for all layers, the largest whose model has <= N parameters).
A layer is left as it is when its factorized form would not have fewer parameters AND fewer
multiply-accumulates than the original by at least `min_saving` (three small layers cost more
time than their MACs say), and the report says so.

The factorizations themselves are in factorization.py; `factorize_and_finetune` (schedule/lowrank.py)
fine-tunes the result. A factorized layer becomes an nn.Sequential of Conv2d/Linear layers, and the model file records
it in `ModelSpec.overrides` (surgery.py), so it reloads with no pickle and no new file format.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn

from ..errors import NetcompressError
from ..measure.cost import count_parameters
from ..models.surgery import describe, set_submodule
from ..process import model_device
from ..spec import attach, copy_model, example_input_for, spec_of, with_input_of
from .factorization import factorize_layer, rank_for_energy, rank_for_ratio, singular_values


@dataclass(frozen=True)
class LowRankConfig:
    """Which ranks: exactly one of `energy`, `rank_ratio` or `target_params`."""

    energy: float | None = None  # keep this fraction of the squared singular values, per layer (and mode)
    rank_ratio: float | None = None  # keep this fraction of each layer's full rank
    target_params: int | None = None  # one budget for the whole model's parameter count
    min_saving: float = 0.1  # factorize a layer only if it saves at least this fraction of its params and MACs
    exclude: tuple[str, ...] = ()  # glob patterns of layer names left alone

    def __post_init__(self):
        object.__setattr__(self, "exclude", tuple(self.exclude))
        chosen = [n for n, v in (("energy", self.energy), ("rank_ratio", self.rank_ratio),
                                 ("target_params", self.target_params)) if v is not None]
        if len(chosen) != 1:
            raise NetcompressError("choose the ranks with exactly one of energy E (e.g. 0.9), rank_ratio R "
                                   f"(e.g. 0.25) or target_params N; got {', '.join(chosen) or 'none'}")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise NetcompressError(f"energy = {self.energy} must lie in (0, 1]: the fraction of squared singular "
                                   "values each layer keeps (e.g. 0.9)")
        if self.rank_ratio is not None and not 0 < self.rank_ratio <= 1:
            raise NetcompressError(f"rank_ratio = {self.rank_ratio} must lie in (0, 1]: the fraction of each "
                                   "layer's full rank kept (e.g. 0.25)")
        if self.target_params is not None and self.target_params < 1:
            raise NetcompressError(f"target_params = {self.target_params} must be a positive parameter count")
        if not 0 <= self.min_saving < 1:
            raise NetcompressError(f"min_saving = {self.min_saving} must lie in [0, 1): the fraction of a layer's "
                                   "parameters and MACs its factorization must save")


# ---- planning: which layers, which ranks ------------------------------------------------------------

@dataclass
class LayerPlan:
    """One factorizable-looking layer: its spectra, sizes, and (once ranks are set) the decision."""

    name: str
    type: str  # Linear | Conv2d
    shape: list[int]  # weight shape
    method: str  # svd | tucker2 | none
    in_positions: int = 1  # spatial positions of the input (1 for Linear)
    out_positions: int = 1
    params_before: int = 0
    macs_before: int = 0
    spectra: list[torch.Tensor] = field(default_factory=list, repr=False)  # SVD: [s]; Tucker-2: [s_in, s_out]
    ranks: list[int] = field(default_factory=list)
    full_ranks: list[int] = field(default_factory=list)
    energy_kept: list[float] = field(default_factory=list)
    params_after: int = 0
    macs_after: int = 0
    skipped: str | None = None  # why the layer stays as it is

    def costs(self, ranks: list[int]) -> tuple[int, int]:
        """(parameters, MACs at batch 1) of the factorized form at `ranks`."""
        out, inp = self.shape[0], self.shape[1]
        bias = self.params_before - math.prod(self.shape)
        if self.method == "svd":
            r = ranks[0]
            return r * (inp + out) + bias, r * inp * self.out_positions + r * out * self.out_positions
        r_in, r_out = ranks
        kk = self.shape[2] * self.shape[3]
        params = r_in * r_out * kk + bias
        macs = r_in * r_out * kk * self.out_positions
        if r_in < inp:
            params += inp * r_in
            macs += inp * r_in * self.in_positions
        if r_out < out:
            params += r_out * out
            macs += r_out * out * self.out_positions
        return params, macs

    def decide(self, ranks: list[int], min_saving: float) -> None:
        self.ranks = list(ranks)
        self.energy_kept = [round(_energy(s, r), 5) for s, r in zip(self.spectra, ranks)]
        self.params_after, self.macs_after = self.costs(ranks)
        limit_p, limit_m = (1 - min_saving) * self.params_before, (1 - min_saving) * self.macs_before
        if self.params_after >= self.params_before or self.params_after > limit_p:
            self.skipped = (f"no saving: {self.params_after:,} factorized parameters vs {self.params_before:,}"
                            + (f" (needs {min_saving:.0%} fewer)" if min_saving else ""))
        elif self.macs_after >= self.macs_before or self.macs_after > limit_m:
            self.skipped = (f"no saving in time: {self.macs_after:,} factorized MACs vs {self.macs_before:,}"
                            + (f" (needs {min_saving:.0%} fewer)" if min_saving else ""))
        else:
            self.skipped = None
        if self.skipped:
            self.params_after, self.macs_after = self.params_before, self.macs_before

    def report(self) -> dict:
        row = {"layer": self.name, "type": self.type, "shape": self.shape, "method": self.method,
               "ranks": self.ranks, "full_ranks": self.full_ranks, "energy_kept": self.energy_kept,
               "params_before": self.params_before, "params_after": self.params_after,
               "macs_before": self.macs_before, "macs_after": self.macs_after, "skipped": self.skipped}
        return row


def _energy(s: torch.Tensor, r: int) -> float:
    sq = s.double() ** 2
    return float(sq[:r].sum() / sq.sum()) if float(sq.sum()) > 0 else 1.0


def _positions(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Input and output spatial positions of every Conv2d (1 for Linear), from one forward pass."""
    found, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, inputs, output, name=name):
                spatial = lambda t: math.prod(t.shape[2:]) if t.dim() == 4 else math.prod(t.shape[1:-1])  # noqa: E731
                found[name] = (spatial(inputs[0]), spatial(output))
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    device = model_device(model)
    try:
        with torch.no_grad():
            model.eval()(example_input.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found


def plan_layers(model: nn.Module, cfg: LowRankConfig, example_input: torch.Tensor) -> list[LayerPlan]:
    """Every Conv2d and Linear of `model`, with its spectra (or why it cannot be factorized)."""
    positions = _positions(model, example_input)
    factorized_before = [n for n, d in spec_of(model).overrides.items() if d.get("type") == "Sequential"]
    plans = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or name not in positions:
            continue
        params = sum(p.numel() for p in m.parameters())
        p_in, p_out = positions[name]
        plan = LayerPlan(name, type(m).__name__, list(m.weight.shape), "none", p_in, p_out, params,
                         m.weight.numel() * p_out)
        w = m.weight.detach().double().cpu()
        if any(fnmatch.fnmatch(name, pattern) for pattern in cfg.exclude):
            plan.skipped = "excluded (exclude)"
        elif any(name.startswith(f + ".") for f in factorized_before):
            plan.skipped = "already factorized"
        elif isinstance(m, nn.Conv2d) and m.groups != 1:
            plan.skipped = ("depthwise convolution: nothing to factorize across channels" if m.groups == m.in_channels
                            else f"grouped convolution (groups={m.groups}) is not factorized")
        elif isinstance(m, nn.Linear) or tuple(m.kernel_size) == (1, 1):
            plan.method = "svd"
            plan.spectra = [singular_values(w.flatten(1))]
            plan.full_ranks = [len(plan.spectra[0])]
        else:
            plan.method = "tucker2"
            s_in = singular_values(w.transpose(0, 1).flatten(1))
            s_out = singular_values(w.flatten(1))
            plan.spectra = [s_in, s_out]
            plan.full_ranks = [len(s_in), len(s_out)]
        if plan.skipped:
            plan.params_after, plan.macs_after = plan.params_before, plan.macs_before
        plans.append(plan)
    return plans


def _ranks_at_energy(plan: LayerPlan, energy: float) -> list[int]:
    return [rank_for_energy(s, energy) for s in plan.spectra]


def _total_params(model_params: int, plans: list[LayerPlan]) -> int:
    return model_params - sum(p.params_before for p in plans) + sum(p.params_after for p in plans)


def choose_ranks(model: nn.Module, plans: list[LayerPlan], cfg: LowRankConfig) -> dict:
    """Set every plan's ranks and decision; returns how (the common energy for a parameter budget)."""
    todo = [p for p in plans if p.method != "none" and p.skipped is None]
    if cfg.energy is not None:
        for p in todo:
            p.decide(_ranks_at_energy(p, cfg.energy), cfg.min_saving)
        return {"energy": cfg.energy}
    if cfg.rank_ratio is not None:
        for p in todo:
            p.decide([rank_for_ratio(f, cfg.rank_ratio) for f in p.full_ranks], cfg.min_saving)
        return {"rank_ratio": cfg.rank_ratio}
    total = count_parameters(model)

    def at(energy: float) -> int:
        for p in todo:
            p.decide(_ranks_at_energy(p, energy), cfg.min_saving)
        return _total_params(total, plans)

    smallest = at(0.0)  # rank 1 in every mode of every layer that rank 1 makes smaller
    if smallest > cfg.target_params:
        raise NetcompressError(
            f"target_params = {cfg.target_params:,} is out of reach: low-rank factorization of this model "
            f"({total:,} parameters) reaches at least {smallest:,} (rank 1 in every factorizable layer; "
            f"{total - sum(p.params_before for p in todo):,} parameters are in layers it cannot factorize); "
            f"ask for target_params {smallest:,} or more, or prune the model first")
    lo, hi = 0.0, 1.0  # total params grow with the energy kept: the largest energy within budget
    if at(hi) <= cfg.target_params:
        lo = hi
    else:
        for _ in range(40):
            mid = (lo + hi) / 2
            if at(mid) <= cfg.target_params:
                lo = mid
            else:
                hi = mid
    at(lo)
    return {"target_params": cfg.target_params, "energy": round(lo, 6)}


# ---- applying a plan ---------------------------------------------------------------------------

@dataclass
class LowRankResult:
    model: nn.Module
    layers: list[dict]  # LayerPlan.report() for every Conv2d/Linear
    selection: dict  # how ranks were chosen (the common energy of a parameter budget)
    params_before: int
    params_after: int

    @property
    def factorized(self) -> list[dict]:
        return [r for r in self.layers if r["method"] != "none" and not r["skipped"]]

    @property
    def skipped(self) -> list[dict]:
        return [r for r in self.layers if r["skipped"]]


def factorize_model(model: nn.Module, cfg: LowRankConfig, example_input: torch.Tensor | None = None) -> LowRankResult:
    """A copy of `model` with every worthwhile Conv2d/Linear replaced by its low-rank form, and the per-layer plan."""
    spec = spec_of(model)
    example_input = example_input_for(model, example_input)
    model = copy_model(model)
    before = count_parameters(model)
    plans = plan_layers(model, cfg, example_input)
    selection = choose_ranks(model, plans, cfg)
    overrides = dict(spec.overrides)
    for p in plans:
        if p.method == "none" or p.skipped:
            continue
        replacement = factorize_layer(model.get_submodule(p.name), tuple(p.ranks))
        set_submodule(model, p.name, replacement)
        overrides[p.name] = {"type": "Sequential", "layers": [describe(layer) for layer in replacement]}
    layers = [p.report() for p in plans]
    lowrank = {"config": {k: v for k, v in asdict(cfg).items() if v is not None}, "selection": selection,
               "layers": [{k: r[k] for k in ("layer", "method", "shape", "ranks")}
                          for r in layers if r["method"] != "none" and not r["skipped"]]}
    attach(model, with_input_of(spec, example_input).replace(overrides=overrides).with_info(lowrank=lowrank))
    after = count_parameters(model)
    assert after == _total_params(before, plans), (after, _total_params(before, plans))
    return LowRankResult(model, layers, selection, before, after)


def factorize(model: nn.Module, config: LowRankConfig | None = None, *, example_input: torch.Tensor | None = None,
              **overrides) -> nn.Module:
    """A new module with low-rank Conv2d and Linear layers (`model` is left as it is).

    example_input: one input batch for measuring each layer's cost, optional once the model's
    input size is known. Keyword overrides build or replace the config: factorize(m, energy=0.9).
    """
    try:
        cfg = replace(config, **overrides) if config is not None else LowRankConfig(**overrides)
    except TypeError as exc:
        raise NetcompressError(f"factorize: {exc}") from exc
    return factorize_model(model, cfg, example_input).model
