"""Bad inputs, table-driven: every case ends in one clear line and exit 2, or (where that is right) proceeds.

Each case builds its files in a fresh folder and runs the command line in this process (through the
same `main` as the `netcompress` script): the error must be one `error:` line naming the file or
field, with no traceback, and nothing half-written.
"""

import errno
import json
import lzma
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import netcompress as nc
from netcompress.formats import ncq
from netcompress.formats.integrity import digest
from test_cli import run_cli as cli


# --- crafting files -------------------------------------------------------------------------------

def model_file(folder: Path, name: str = "m.safetensors") -> Path:
    torch.manual_seed(0)
    return nc.save(nc.new_model("studentnet", ["soup", "rice", "bread"], 32, widths=[8] * 8), folder / name)


def edit_safetensors(path: Path, edit, recompute_checksum: bool) -> Path:
    """Rewrite a model file's spec with edit(meta) (and, like a careful forger, its checksum)."""
    blob = path.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    meta = json.loads(header["__metadata__"]["netcompress"])
    edit(meta)
    if recompute_checksum:
        from safetensors.torch import load_file

        meta["checksum"] = digest(meta, load_file(str(path)))
    header["__metadata__"]["netcompress"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + blob[8 + n:])
    return path


def with_weights(path: Path, change) -> Path:
    """Rewrite a model file's tensors with change(state) and a matching checksum."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["netcompress"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    change(state)
    meta["checksum"] = digest(meta, state)
    save_file(state, str(path), metadata={"netcompress": json.dumps(meta)})
    return path


def reseal_ncq(path: Path, edit) -> Path:
    """Rewrite an (uncompressed) .ncq's JSON with edit(meta) and recompute its CRC, as a forger would."""
    blob = path.read_bytes()
    body = blob[ncq.HEADER.size:]
    n = struct.unpack("<I", body[:4])[0]
    meta = json.loads(body[4:4 + n])
    edit(meta)
    head = json.dumps(meta).encode()
    body = struct.pack("<I", len(head)) + head + body[4 + n:]
    path.write_bytes(ncq.HEADER.pack(ncq.MAGIC, ncq.VERSION, 0, len(body), zlib.crc32(body)) + body)
    return path


def lzma_bomb(folder: Path) -> Path:
    """A valid-looking .ncq whose compressed body expands to 20 MB for a 3-class net of a few kB."""
    model = nc.new_model("studentnet", ["a", "b", "c"], 32, widths=[8] * 8)
    meta = {"netcompress": nc.__version__, "spec": __import__("dataclasses").asdict(nc.spec_of(model)),
            "quant": nc.QuantConfig("fp16").storage()}
    head = json.dumps(meta).encode()
    body = lzma.compress(struct.pack("<I", len(head)) + head + b"\0" * 20_000_000, format=lzma.FORMAT_RAW,
                         filters=ncq.LZMA_FILTERS)
    path = folder / "bomb.ncq"
    path.write_bytes(ncq.HEADER.pack(ncq.MAGIC, ncq.VERSION, ncq.FLAG_LZMA, len(body), zlib.crc32(body)) + body)
    return path


def jpeg_claiming(folder: Path, width: int, height: int) -> Path:
    """A small JPEG whose header claims another size (a decompression bomb's header)."""
    path = folder / "0_99.jpg"
    Image.new("RGB", (16, 16)).save(path, quality=50)
    blob = bytearray(path.read_bytes())
    sof = blob.index(b"\xff\xc0")
    blob[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(blob))
    return path


def dataset(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("training", "validation", "testing"):
        (folder / split).mkdir(parents=True)
        for label in range(3):
            for k in range(3):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                    folder / split / f"{label}_{k}.jpg")
    return folder


def trained_run(folder: Path, data: Path) -> Path:
    code, _, err = cli("train", "--model", "studentnet", "--data", data, "--image-size", 16, "--epochs", 1,
                       "--batch-size", 4, "--out", folder / "run", "--no-progress", cache=folder / "cache")
    assert code == 0, err
    return folder / "run"


def onnx_with_metadata(folder: Path, value: str) -> Path:
    import onnx

    path = nc.export_onnx(nc.load(model_file(folder)), folder / "m.onnx")
    proto = onnx.load(str(path))
    for p in proto.metadata_props:
        if p.key == "netcompress":
            p.value = value
    onnx.save_model(proto, str(path))
    return path


# --- the cases: (name, setup(tmp) -> argv, expected stderr fragment or None to proceed) -------------

def _flip_a_weight_bit(tmp):
    path = model_file(tmp)
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0x10
    path.write_bytes(bytes(blob))
    return ["summary", path, "--no-latency"]


CASES = [
    # data files
    ("superscript digit label", lambda t: (Image.new("RGB", (9, 9)).save(dataset(t / "d") / "training" / "²_0.jpg"),
                                           ["train", "--model", "studentnet", "--data", t / "d", "--out", t / "r"])[1],
     "²_0.jpg: cannot read a label"),
    ("decompression bomb header", lambda t: (jpeg_claiming(dataset(t / "d") / "training", 30000, 30000),
                                             ["train", "--model", "studentnet", "--data", t / "d", "--image-size", 16,
                                              "--out", t / "r"])[1], "0_99.jpg: unreadable or corrupt image"),
    ("decompression bomb skipped", lambda t: (jpeg_claiming(dataset(t / "d") / "training", 30000, 30000),
                                              ["evaluate", model_file(t), "--data", t / "d", "--split", "training",
                                               "--skip-bad"])[1], None),
    ("symlink loop and dangling link", lambda t: (os.symlink(t / "d" / "training" / "0_90.jpg",
                                                             dataset(t / "d") / "training" / "0_90.jpg"),
                                                  os.symlink(t / "nowhere.jpg", t / "d" / "training" / "0_91.jpg"),
                                                  ["evaluate", model_file(t), "--data", t / "d", "--split",
                                                   "training"])[2], None),
    ("FIFO named like an image", lambda t: (os.mkfifo(dataset(t / "d") / "validation" / "0_900.jpg"),
                                            ["evaluate", model_file(t), "--data", t / "d"])[1], None),
    ("class folder hidden by a notebook", lambda t: ((dataset(t / "d") / "training" / ".ipynb_checkpoints").mkdir(),
                                                     ["evaluate", model_file(t), "--data", t / "d", "--split",
                                                      "training"])[1], None),
    # model files: damage and edits
    ("bit flip in a weight", _flip_a_weight_bit, "checksum mismatch"),
    ("class names reversed", lambda t: ["summary", edit_safetensors(model_file(t), lambda m: m["class_names"].reverse(),
                                                                     False), "--no-latency"], "checksum mismatch"),
    ("spec field of the wrong type", lambda t: ["summary", edit_safetensors(model_file(t), lambda m: m.update(info="x"),
                                                                             False), "--no-latency"],
     "spec field info is not an object"),
    ("unknown constructor argument", lambda t: ["summary", edit_safetensors(
        model_file(t), lambda m: m["kwargs"].update(device="meta"), True), "--no-latency"],
     "spec field kwargs has arguments studentnet does not take: device"),
    ("deep nesting", lambda t: ["summary", edit_safetensors(
        model_file(t), lambda m: m.update(info=json.loads("[" * 50 + "]" * 50)), True), "--no-latency"],
     "nested deeper than"),
    ("widths of 30,000", lambda t: ["summary", edit_safetensors(
        model_file(t), lambda m: m["kwargs"].update(widths=[30000] * 8), True), "--no-latency"],
     "bytes of weights, above the"),
    ("num_classes 1e10", lambda t: ["summary", edit_safetensors(
        model_file(t), lambda m: m["kwargs"].update(num_classes=10**10), True), "--no-latency"],
     "kwargs.num_classes = 10000000000 must hold integers"),
    ("a 1e6 x 1e6 override layer", lambda t: ["summary", edit_safetensors(
        model_file(t), lambda m: m["overrides"].update({"fc.0": {"type": "Linear", "in_features": 10**6,
                                                                  "out_features": 10**6, "bias": True}}), True),
        "--no-latency"], "bytes of weights, above the"),
    ("sparse shape of 1e12", lambda t: ["summary", edit_safetensors(
        model_file(t), lambda m: m.update(sparse={"fc.0.weight": [10**6, 10**6]}), True), "--no-latency"],
     "sparse tensor fc.0.weight of shape"),
    ("input_size 1e6", lambda t: ["summary", edit_safetensors(model_file(t), lambda m: m.update(input_size=10**6),
                                                               True), "--no-latency"],
     "spec field input_size = 1000000 must be an integer in 0..4096"),
    ("NaN weights", lambda t: ["summary", with_weights(model_file(t), lambda s: s["fc.0.weight"].fill_(float("nan"))),
                               "--no-latency"], "tensor fc.0.weight holds NaN or infinite values"),
    ("NaN weights in a resealed .ncq", lambda t: ["summary", reseal_ncq(
        nc.quantize(nc.load(with_weights(model_file(t), lambda s: None)), codec="fp16").save(t / "m.ncq"),
        lambda m: m["spec"].update(input_size=10**6)), "--no-latency"], "input_size = 1000000"),
    ("LZMA bomb", lambda t: ["summary", lzma_bomb(t), "--no-latency"], "records expand beyond"),
    ("ONNX metadata not JSON", lambda t: ["summary", onnx_with_metadata(t, "{not json"), "--no-latency"],
     "netcompress metadata is not readable"),
    ("ONNX spec edited", lambda t: ["summary", onnx_with_metadata(t, json.dumps(
        {**__import__("dataclasses").asdict(nc.spec_of(nc.load(model_file(t)))), "class_names": ["x", "y", "z"]})),
        "--no-latency"], "checksum mismatch"),
    ("course state_dict with odd keys", lambda t: (torch.save({"cnn.x.0.weight": torch.zeros(2, 3, 3, 3),
                                                               "cnn.0.0.weight": torch.zeros(2, 3, 3, 3),
                                                               "fc.0.weight": torch.zeros(3, 2)}, t / "odd.bin"),
                                                   ["import-course", t / "odd.bin", "--image-size", 32, "--out",
                                                    t / "o.safetensors"])[1], "its tensors do not fit a StudentNet"),
    # run folders
    ("truncated state.pt", lambda t: (lambda r: ((r / "state.pt").write_bytes((r / "state.pt").read_bytes()[:500]),
                                                 ["train", "--model", "studentnet", "--data", t / "d", "--image-size",
                                                  16, "--epochs", 1, "--batch-size", 4, "--out", r])[1])(
        trained_run(t, dataset(t / "d"))), "state.pt is damaged"),
    ("run folder without run.json", lambda t: (lambda r: ((r / "run.json").unlink(),
                                                          ["train", "--model", "studentnet", "--data", t / "d",
                                                           "--image-size", 16, "--epochs", 2, "--batch-size", 4,
                                                           "--out", r])[1])(trained_run(t, dataset(t / "d"))),
     "holds state.pt but no readable run.json"),
    ("bad metrics line", lambda t: (lambda r: ((r / "metrics.jsonl").write_text("{not json\n"),
                                               ["train", "--model", "studentnet", "--data", t / "d", "--image-size",
                                                16, "--epochs", 1, "--batch-size", 4, "--out", r])[1])(
        trained_run(t, dataset(t / "d"))), None),
    ("corrupt decode cache", lambda t: (dataset(t / "d"), cli("evaluate", model_file(t), "--data", t / "d",
                                                               cache=t / "cache"),
                                        [p.write_bytes(b"PK garbage") for p in (t / "cache").glob("*/images.npy")],
                                        ["evaluate", model_file(t), "--data", t / "d"])[3], None),
    # output paths
    ("--out is an existing file", lambda t: ((t / "taken").write_text("x"),
                                             ["train", "--model", "studentnet", "--data", dataset(t / "d"),
                                              "--image-size", 16, "--out", t / "taken"])[1], "taken is a file"),
    ("--out .ncq is a folder", lambda t: ((t / "m.ncq").mkdir(),
                                          ["quantize", model_file(t), "--out", t / "m.ncq"])[1],
     "a folder of that name is in the way"),
]


@pytest.mark.parametrize("name, setup, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, name, setup, expected):
    argv = setup(tmp_path)
    code, out, err = cli(*argv, cache=tmp_path / "cache")
    assert "Traceback" not in err + out
    if expected is None:
        assert code == 0, err
    else:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and expected in errors[0], err


def test_a_full_disk_leaves_nothing_half_written(tmp_path):
    def fill(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(nc.NetcompressError, match="no space left on the device"):
        nc.formats.model_file.atomic_write(tmp_path / "m.safetensors", fill)
    assert list(tmp_path.iterdir()) == []


def test_a_second_process_on_one_run_folder_is_refused_and_a_dead_ones_lock_taken(tmp_path):
    data = dataset(tmp_path / "d")
    hold = (f"import time; from netcompress.files import RunLock\nwith RunLock({str(tmp_path / 'run')!r}):\n"
            "    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = cli("train", "--model", "studentnet", "--data", data, "--image-size", 16, "--epochs", 1,
                           "--out", tmp_path / "run", cache=tmp_path / "c")
        assert code == 2 and f"is in use by process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    code, _, err = cli("train", "--model", "studentnet", "--data", data, "--image-size", 16, "--epochs", 1,
                       "--batch-size", 4, "--out", tmp_path / "run", "--no-progress", cache=tmp_path / "c")
    assert code == 0, err
    assert not (tmp_path / "run" / ".lock").exists()


def test_stale_temporary_files_are_removed_on_resume(tmp_path):
    run = trained_run(tmp_path, dataset(tmp_path / "d"))
    (run / ".state.pt.tmp999999").write_bytes(b"left by a killed process")
    code, _, err = cli("train", "--model", "studentnet", "--data", tmp_path / "d", "--image-size", 16, "--epochs", 1,
                       "--batch-size", 4, "--out", run, "--no-progress", cache=tmp_path / "cache")
    assert code == 0, err
    assert not list(run.glob(".*.tmp*"))


KILLER = """
import os, signal, sys, torch
sys.path.insert(0, {tests!r})
real = os.replace
count = [0]
def replace(a, b):
    real(a, b)
    count[0] += 1
    if count[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
import netcompress as nc
from test_train import synthetic_split
torch.manual_seed(0)
model = nc.new_model("studentnet", ["a", "b", "c"], 32, widths=[8] * 8)
nc.fit(model, synthetic_split("training", 48, 0), epochs=3, batch_size=16, val=synthetic_split("validation", 12, 1),
       run_dir=sys.argv[1], progress=False)
"""


@pytest.mark.slow
def test_a_kill_between_any_two_writes_loses_no_finished_epoch(tmp_path):
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(tests=str(Path(__file__).parent)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), tmp_path / "reference", "0"], env=env, check=True)
    reference = torch.load(tmp_path / "reference" / "state.pt", weights_only=True)
    writes = 1 + 3 * 3  # run.json, then per epoch at most best.safetensors, state.pt and metrics.jsonl
    for kill_at in range(1, writes + 1):
        run = tmp_path / f"killed-{kill_at}"
        killed = subprocess.run([sys.executable, str(script), run, str(kill_at)], env=env)
        resumed = subprocess.run([sys.executable, str(script), run, "0"], env=env)
        assert resumed.returncode == 0, (kill_at, killed.returncode)
        state = torch.load(run / "state.pt", weights_only=True)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2, 3], kill_at
        assert all(torch.equal(state["model"][k], v) for k, v in reference["model"].items()), kill_at
        assert not list(run.glob(".*.tmp*")) and not (run / ".lock").exists()
    assert time.time() > 0
