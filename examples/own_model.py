"""Compress your own nn.Module with the Python API: prune, distil, save, quantize, reload.

Two networks netcompress has never seen: a small residual CNN defined here, and torchvision's
mobilenet_v3_small. For each: a short training from scratch (standing in for the model you
already have), 50% of the channels pruned (L2 magnitude over Torch-Pruning's dependency graph),
one epoch of fine-tuning distilled from the unpruned model, then a .safetensors file and a 4-bit
.ncq file. A fresh Python process rebuilds both from `model=` a new instance and checks that the
outputs are bit-identical to the in-memory model and to the decoded 4-bit model.

    python examples/own_model.py --data ../shared/data/food101_10 --out runs/own_model
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file, save_file

import netcompress as nc


class Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class ResidualCNN(nn.Module):
    """A user's own residual CNN: three stages, each a strided conv and a residual block."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        layers, in_ch = [], 3
        for w in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(in_ch, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                       Residual(w)]
            in_ch = w
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


# torchvision's BatchNorm momentum for MobileNetV3 (0.01) suits long ImageNet runs: after two short
# epochs the running statistics would still be near their initial values and evaluation at chance.
BASES = {
    "residual_cnn": lambda: ResidualCNN(num_classes=10),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(
        num_classes=10, norm_layer=partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)),
}


def compress(name: str, data: nc.ImageFolderData, out: Path, epochs: int) -> dict:
    """The whole flow for one network; returns a row for the table."""
    torch.manual_seed(0)
    size = data.image_size
    trained = nc.fit(BASES[name](), data, epochs=epochs, progress=False)
    pruned = nc.prune(trained, nc.PruneConfig(method="l2", rate=0.5), example_input=torch.randn(1, 3, size, size))
    tuned = nc.fit(pruned, data, epochs=1, teacher=trained, distill=nc.DistillConfig(temperature=4.0, alpha=0.9),
                   progress=False)
    safetensors_path = nc.save(tuned, out / f"{name}.safetensors")
    quantized = nc.quantize(tuned, nc.QuantConfig(codec="kbit", bits=4, entropy=True))
    ncq_path = quantized.save(out / f"{name}.ncq")
    # what a fresh process must reproduce exactly
    x = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        save_file({"x": x, "fp32": tuned.eval()(x), "ncq": quantized.decode(model=BASES[name]())(x)},
                  str(out / f"{name}.expected.safetensors"))
    return {"model": name, "params": nc.count_parameters(trained), "pruned params": nc.count_parameters(tuned),
            "val acc": nc.evaluate(tuned, data)["accuracy"],
            "4-bit val acc": nc.evaluate(nc.load(ncq_path, model=BASES[name]()), data)["accuracy"],
            "safetensors bytes": safetensors_path.stat().st_size, "ncq bytes": quantized.nbytes}


def check(out: Path) -> list[str]:
    """Load every file with `model=` a fresh instance and compare with the expected outputs."""
    problems = []
    for name, base in BASES.items():
        expected = load_file(str(out / f"{name}.expected.safetensors"))
        with torch.no_grad():
            for suffix, key in ((".safetensors", "fp32"), (".ncq", "ncq")):
                model = nc.load(out / f"{name}{suffix}", model=base())
                if not torch.equal(model(expected["x"]), expected[key]):
                    problems.append(f"{name}{suffix}: outputs differ from the in-memory model")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/food101_10"), help="dataset folder")
    parser.add_argument("--out", type=Path, default=Path("runs/own_model"), help="where the files go")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs before pruning")
    parser.add_argument("--check", action="store_true", help="only reload the files in --out and compare outputs")
    args = parser.parse_args()
    if args.check:
        problems = check(args.out)
        print("\n".join(problems) or "reloaded in a fresh process: outputs identical (safetensors and 4-bit .ncq)")
        return 1 if problems else 0
    data = nc.ImageFolderData(args.data, args.image_size, progress=False)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [compress(name, data, args.out, args.epochs) for name in BASES]
    print(" | ".join(rows[0]))
    for row in rows:
        print(" | ".join(f"{v:.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else v
                         for v in row.values()))
    return subprocess.call([sys.executable, __file__, "--check", "--out", str(args.out)])


if __name__ == "__main__":
    sys.exit(main())
