"""The public API as a user meets it: the README's example, examples/own_model.py, pydoc, no mutation."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import netcompress as nc

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_example_runs_as_shown(food_root, tmp_path):
    code = readme_example().replace('"../shared/data/food101_10"', repr(str(food_root)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 0.0 < float(proc.stdout.split()[-1]) <= 1.0
    out = tmp_path / "runs" / "api"  # ignored by git, like every run folder: nothing lands in the repository root
    assert (out / "m.safetensors").exists() and (out / "m.ncq").stat().st_size < 30_000
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]


@pytest.mark.slow
def test_own_model_example_reloads_identically_in_a_fresh_process(food_root, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "own_model.py"), "--data", str(food_root),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "outputs identical (safetensors and 4-bit .ncq)" in proc.stdout
    rows = {line.split(" | ")[0]: line.split(" | ") for line in proc.stdout.splitlines() if " | " in line}
    assert set(rows) >= {"residual_cnn", "mobilenet_v3_small"}
    for name in ("residual_cnn", "mobilenet_v3_small"):  # pruned to about a quarter of the weights
        params, pruned = (int(v.replace(",", "")) for v in rows[name][1:3])
        assert pruned < 0.35 * params


def test_pydoc_lists_the_verbs_with_docstrings():
    out = subprocess.run([sys.executable, "-m", "pydoc", "netcompress"], capture_output=True, text=True,
                         check=True).stdout
    for verb in ("fit", "prune", "prune_iteratively", "factorize", "quantize", "save", "load", "evaluate",
                 "export_onnx"):
        assert re.search(rf"^    {verb}\(", out, re.M), verb
    assert "Train a copy of `model`" in out and "One pruning step" in out


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_verbs_leave_their_arguments_alone(tmp_path):
    net = Net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(1, 3, 8, 8)
    pruned = nc.prune(net, method="l2", rate=0.5, example_input=x)
    small = nc.factorize(net, rank_ratio=0.25, example_input=x)
    nc.save(net, tmp_path / "m.safetensors", class_names=list("abcd"), input_size=8)
    stored = nc.quantize(net, codec="kbit", bits=4)
    assert pruned.conv.out_channels == 8 and isinstance(small.fc, nn.Sequential) and stored.nbytes > 0
    assert net.conv.out_channels == 16 and isinstance(net.fc, nn.Linear) and not hasattr(net, nc.spec.SPEC_ATTRIBUTE)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_a_users_module_saves_loads_and_quantizes_with_its_surgery(tmp_path):
    x = torch.rand(2, 3, 8, 8)
    pruned = nc.prune(Net(), method="l2", rate=0.5, example_input=x[:1])
    factorized = nc.factorize(pruned, rank_ratio=0.5, example_input=x[:1])
    path = nc.save(factorized, tmp_path / "f.safetensors", class_names=list("abcd"), input_size=8)
    again = nc.load(path, model=Net())
    assert torch.equal(again(x), factorized.eval()(x)) and isinstance(again.fc, nn.Sequential)
    assert nc.count_parameters(again) == nc.count_parameters(factorized) < nc.count_parameters(Net())
    stored = nc.quantize(again, codec="fp16")
    assert torch.equal(nc.load(stored.save(tmp_path / "f.ncq"), model=Net())(x), stored.decode(model=Net())(x))
    with pytest.raises(nc.NetcompressError, match=r"user-defined module \(test_api.Net\).*model=MyNet\(\)"):
        nc.load(path)
    with pytest.raises(nc.NetcompressError, match="input size is unknown"):
        nc.save(Net(), tmp_path / "g.safetensors")
