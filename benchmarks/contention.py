"""What a busy machine costs: a workload's wall and CPU time alone and beside a CPU-bound job on every core, with
torch's default of a thread per core, with netcompress's threads that fit the free cores, and with those plus
OpenMP's passive waits (waiting threads sleep instead of spinning).

The competing job is a plain matrix-multiply loop with a thread per core. Ratios compare each setting's run
beside that job with the same setting alone; CPU time is the workload's own (user + system, children
included). Workloads: `train` (one epoch of StudentNet on --images images, a few minutes) or `demo` (the demo
recipe, `netcompress run recipes/demo.toml`, about 10 minutes alone on 2 quiet cores). Run it on an otherwise idle machine.

    python benchmarks/contention.py --workload train
    python benchmarks/contention.py --workload demo
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAIN = """
import sys, tempfile, torch
import netcompress as nc
from netcompress.cli.common import set_threads
set_threads(None)
data = nc.ImageFolderData(sys.argv[1], 64, progress=False)
keep = torch.arange(int(sys.argv[2]))
train = data.split("training").subset("training", keep)
with tempfile.TemporaryDirectory() as tmp:
    nc.fit(nc.new_model("studentnet", data.class_names, 64), train, epochs=1, val=train.subset("v", keep[:64]),
           run_dir=tmp, progress=False)
"""

HOG = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(512, 512)
end = time.time() + float(sys.argv[2])
while time.time() < end:
    a = torch.tanh(a @ a)
"""

SETTINGS = {  # environment of the workload, by --settings name: (what the table calls it, the variables)
    "torch": ("a thread per core (torch's default)", {"OMP_NUM_THREADS": "cores"}),
    "fair": ("threads that fit the free cores, waiting threads spin", {"OMP_WAIT_POLICY": "ACTIVE"}),
    "passive": ("the same, waiting threads asleep (netcompress's default)", {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def workload_command(kind: str, data: Path, images: int, out: Path) -> list[str]:
    if kind == "train":
        return [sys.executable, "-c", TRAIN, str(data), str(images)]
    return [sys.executable, "-m", "netcompress.cli", "run", "recipes/demo.toml", "--set", f"data.root={data}",
            "--out", str(out), "--target-bytes", "300000", "--no-progress"]


def timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one command run to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=("train", "demo"), default="train")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/food101_10"))
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                    help="torch: OMP_NUM_THREADS = cores; fair: netcompress's thread count with spinning waits "
                    "(OMP_WAIT_POLICY=ACTIVE); passive: the same with OMP_WAIT_POLICY=PASSIVE, netcompress's default")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/contention-WORKLOAD.json")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = dict(os.environ, NETCOMPRESS_CACHE=str(Path(tmp) / "cache"))
        subprocess.run(workload_command("train", args.data, 64, Path(tmp)), env=cache, check=True)  # decode once
        for name, extra in (SETTINGS[key] for key in args.settings):
            env = {k: v for k, v in cache.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
            env.update({k: str(cores) if v == "cores" else v for k, v in extra.items()})
            run = [Path(tmp) / f"{len(rows)}-{i}" for i in range(2)]
            quiet = timed(workload_command(args.workload, args.data, args.images, run[0]), env)
            hog = subprocess.Popen([sys.executable, "-c", HOG, str(cores), str(20 * quiet[0] + 60)],
                                   env=dict(env, OMP_NUM_THREADS=str(cores), OMP_WAIT_POLICY="ACTIVE"))
            try:
                time.sleep(2)
                busy = timed(workload_command(args.workload, args.data, args.images, run[1]), env)
            finally:
                hog.kill()
                hog.wait()
            rows.append({"setting": name, "quiet_wall_s": round(quiet[0], 1), "quiet_cpu_s": round(quiet[1], 1),
                         "busy_wall_s": round(busy[0], 1), "busy_cpu_s": round(busy[1], 1),
                         "wall_ratio": round(busy[0] / quiet[0], 2), "cpu_ratio": round(busy[1] / quiet[1], 2)})
            print(rows[-1], file=sys.stderr)
    print(f"\n{args.workload}, {cores} cores, beside a matrix-multiply job of {cores} threads\n")
    print("| setting | alone: wall / CPU s | beside the job: wall / CPU s | wall ratio | CPU ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['quiet_wall_s']} / {r['quiet_cpu_s']} | {r['busy_wall_s']} / "
              f"{r['busy_cpu_s']} | {r['wall_ratio']} | {r['cpu_ratio']} |")
    out = args.out or Path(f"benchmarks/results/contention-{args.workload}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"workload": args.workload, "cores": cores, "images": args.images,
                                    "load_before": os.getloadavg()[0], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
