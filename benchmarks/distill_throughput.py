"""Distillation throughput: netcompress's loop against a course-style loop, side by side in one run.

Course-style (NTU ML 2020 HW7): a Dataset that opens and decodes every JPEG on every epoch,
per-image torchvision transforms (resize, random crop with symmetric padding, flip, rotation),
a DataLoader, the teacher's forward pass on every batch, contiguous tensors.
netcompress: `nc.fit` with a teacher — images decoded once into a uint8 cache, batched
tensor augmentation, channels_last, the allocator tuning of `runtime.tune_allocator`.

Both run the same teacher, student, loss, optimizer, batch size and number of images; only
training steps are timed (not validation). Prints a table and writes JSON.

    python benchmarks/distill_throughput.py --data ../shared/data/food101_10 --images 1024
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import netcompress as nc
from netcompress.data.folder import scan_split
from netcompress.process import tune_allocator
from netcompress.train.distill import kd_loss


class CourseDataset(Dataset):
    """Decodes the JPEG on every access, as the course's dataset did."""

    def __init__(self, files, labels, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), self.labels[i]


def course_loop(files, labels, teacher, student, size, batch_size, cfg: nc.DistillConfig) -> float:
    pad = size // 12
    tf = transforms.Compose([
        transforms.Resize(size), transforms.CenterCrop(size),
        transforms.RandomCrop(size, padding=pad, padding_mode="symmetric"),
        transforms.RandomHorizontalFlip(), transforms.RandomRotation(15), transforms.ToTensor(),
    ])
    loader = DataLoader(CourseDataset(files, labels, tf), batch_size=batch_size, shuffle=True)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    teacher.eval()
    student.train()
    seen = 0
    t0 = time.perf_counter()
    for x, y in loader:
        with torch.no_grad():
            t_logits = teacher(x)
        loss = kd_loss(student(x), t_logits, y, cfg.temperature, cfg.alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def ours(split: nc.Split, val: nc.Split, teacher, student, batch_size, cfg: nc.DistillConfig, precision: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        train_cfg = nc.TrainConfig(epochs=1, batch_size=batch_size, precision=precision)
        nc.fit(student, split, train_cfg, val=val, teacher=teacher, distill=cfg, run_dir=tmp, device="cpu",
               progress=False)
        return json.loads((Path(tmp) / "metrics.jsonl").read_text().splitlines()[0])["images_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/food101_10"))
    ap.add_argument("--teacher", type=Path, help="teacher model file; default: an untrained resnet18 (the course's)")
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--images", type=int, default=1024, help="training images per measured epoch")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/distill_throughput.json"))
    args = ap.parse_args()
    tune_allocator()
    torch.manual_seed(0)

    files, labels, classes = scan_split(args.data, "training")
    files, labels = files[: args.images], labels[: args.images]
    data = nc.ImageFolderData(args.data, args.image_size, progress=False)
    train, val = data.split("training"), data.split("validation")
    keep = torch.arange(min(args.images, len(train)))
    train = nc.Split("training", train.images[keep], train.labels[keep], [train.files[i] for i in keep], classes)
    val = nc.Split("validation", val.images[:128], val.labels[:128], val.files[:128], classes)

    if args.teacher:
        teacher = nc.load(args.teacher)
        teacher_name = args.teacher.name
    else:
        teacher = nc.new_model("resnet18", classes, args.image_size)
        teacher_name = "resnet18 (untrained)"
    cfg = nc.DistillConfig(temperature=20.0, alpha=0.5)
    rows = []
    for name in ["course-style loop", "netcompress fp32", "netcompress bf16"]:
        student = nc.new_model("studentnet", classes, args.image_size)
        teacher_copy = teacher.to(memory_format=torch.contiguous_format)
        if name.startswith("netcompress"):
            ips = ours(train, val, teacher_copy, student, args.batch_size, cfg, name.split()[-1])
        else:
            ips = course_loop(files, labels, teacher_copy, student, args.image_size, args.batch_size, cfg)
        rows.append({"loop": name, "images_per_second": round(ips, 1)})
        print(f"{name:20s} {ips:8.1f} img/s", file=sys.stderr)
    for r in rows:
        r["speedup"] = round(r["images_per_second"] / rows[0]["images_per_second"], 2)
    result = {"benchmark": "distillation throughput", "teacher": teacher_name, "student": "studentnet",
              "image_size": args.image_size, "images": len(train), "batch_size": args.batch_size,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
              "rows": rows}
    print(f"\nteacher {teacher_name}, {args.image_size}px, batch {args.batch_size}, {len(train)} images, "
          f"{torch.get_num_threads()} threads\n\n| loop | images/s | vs course-style |\n|---|---|---|")
    for r in rows:
        print(f"| {r['loop']} | {r['images_per_second']:.1f} | {r['speedup']:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
