"""How to train: the settings of one `fit`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.augment import AugmentConfig
from ..data.sizes import check_image_size
from ..errors import NetcompressError


@dataclass(frozen=True)
class TrainConfig:
    """How to train: AdamW at `lr` with a per-step cosine (or constant) schedule, the course's augmentation."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str = "cosine"  # cosine | constant
    label_smoothing: float = 0.0
    seed: int = 0
    channels_last: bool = True
    precision: str = "fp32"  # fp32 | bf16 (autocast forward passes; weights and optimizer stay fp32)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: no augmentation
    eval_batch_size: int = 256
    input_size: int | None = None  # the model's input; None: the data's size. A teacher sees the data's size.
    precise_bn: int = 0  # > 0: BatchNorm statistics recomputed on this many training images before each validation
    eval_mode: bool = False  # train with the network in eval mode: BatchNorm keeps its statistics, no dropout (QAT)
    average_epochs: float = 0.0  # > 0: validate, keep and return a moving average of the weights over ~this many epochs

    def __post_init__(self):
        problems = []
        if not isinstance(self.epochs, int) or self.epochs < 1:
            problems.append(f"epochs = {self.epochs} (must be an integer >= 1)")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size = {self.batch_size} (must be an integer >= 1)")
        if not 0 < self.lr < float("inf"):
            problems.append(f"lr = {self.lr} (must be > 0)")
        if not 0 <= self.weight_decay < float("inf"):
            problems.append(f"weight_decay = {self.weight_decay} (must be >= 0)")
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"schedule = {self.schedule!r} (cosine or constant)")
        if self.precision not in ("fp32", "bf16"):
            problems.append(f"precision = {self.precision!r} (fp32 or bf16)")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing = {self.label_smoothing} (must be in [0, 1))")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            problems.append(f"seed = {self.seed!r} (must be an integer in 0..4,294,967,295)")
        if not isinstance(self.precise_bn, int) or self.precise_bn < 0:
            problems.append(f"precise_bn = {self.precise_bn!r} (training images, >= 0; 0: off)")
        if not 0 <= self.average_epochs < float("inf"):
            problems.append(f"average_epochs = {self.average_epochs} (epochs, >= 0; 0: off)")
        if self.input_size is not None:
            try:
                check_image_size(self.input_size, "input_size", "or None for the data's size")
            except NetcompressError as exc:
                problems.append(str(exc))
        if problems:
            raise NetcompressError("bad training settings: " + "; ".join(problems))
