"""What --threads does: training throughput of one job and of two jobs at once, at 1 thread and at all cores.

Each job is a separate process training StudentNet for one epoch on the same images (decoded once,
cached); the table gives images per second per job and the total. Run it on an otherwise idle
machine: it measures how jobs share the cores. Prints a table and writes JSON.

    python benchmarks/threads.py --data ../shared/data/food101_10 --images 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

JOB = """
import json, sys, tempfile, torch
import netcompress as nc
torch.set_num_threads(int(sys.argv[3]))
data = nc.ImageFolderData(sys.argv[1], 96, progress=False)
train = data.split("training")
keep = torch.arange(min(int(sys.argv[2]), len(train)))
train = train.subset("training", keep)
with tempfile.TemporaryDirectory() as tmp:
    nc.fit(nc.new_model("studentnet", data.class_names, 96), train, epochs=1, val=train.subset("v", keep[:64]),
           run_dir=tmp, progress=False)
    print(json.loads(open(tmp + "/metrics.jsonl").readline())["images_per_second"])
"""


def run_jobs(data: Path, images: int, threads: int, jobs: int) -> list[float]:
    """Start `jobs` training processes at once with `threads` threads each; their images per second."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    procs = [subprocess.Popen([sys.executable, "-c", JOB, str(data), str(images), str(threads)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    return [float(p.communicate()[0].split()[-1]) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/food101_10"))
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/threads.json"))
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    run_jobs(args.data, 64, 1, 1)  # decode and cache the images once
    rows = []
    for jobs in (1, 2):
        for threads in sorted({1, cores}):
            per_job = run_jobs(args.data, args.images, threads, jobs)
            rows.append({"jobs": jobs, "threads_per_job": threads, "images_per_second_per_job": per_job,
                         "total_images_per_second": round(sum(per_job), 1)})
            print(f"{jobs} job(s) x {threads} thread(s): {per_job} img/s", file=sys.stderr)
    print(f"\nStudentNet, 96 px, {args.images} images, {cores} cores\n")
    print("| jobs | threads each | img/s per job | total img/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['jobs']} | {r['threads_per_job']} | {', '.join(f'{v:.0f}' for v in r['images_per_second_per_job'])}"
              f" | {r['total_images_per_second']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "threads", "cores": cores, "images": args.images,
                                    "machine": platform.machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
