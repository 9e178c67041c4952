"""Low-rank factorization: exactness at full rank, rank selection, budgets, skipping, files, CLI."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from test_cli import netcompress

import netcompress as nc
from netcompress.compress.factorization import factorize_layer, rank_for_energy, rank_for_ratio, tucker2
from netcompress.compress.lowrank import LowRankConfig, choose_ranks, factorize_model, plan_layers
from netcompress.errors import NetcompressError
from netcompress.formats.model_file import read_spec
from netcompress.measure.cost import count_parameters

torch.manual_seed(0)


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def with_singular_values(out: int, inp: int, values: list[float]) -> torch.Tensor:
    """An [out, inp] matrix whose singular values are exactly `values`."""
    k = len(values)
    return (orthonormal(out, k, 1) @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ orthonormal(inp, k, 2).T).float()


def low_rank_conv(c_out: int, c_in: int, r_out: int, r_in: int, **kwargs) -> nn.Conv2d:
    """A k x k conv whose weight has exactly rank r_out / r_in in its output / input channel modes."""
    conv = nn.Conv2d(c_in, c_out, **kwargs)
    k = conv.kernel_size
    g = torch.Generator().manual_seed(3)
    core = torch.randn(r_out, r_in, *k, generator=g, dtype=torch.float64)
    weight = torch.einsum("rskl,or,is->oikl", core, orthonormal(c_out, r_out, 4), orthonormal(c_in, r_in, 5))
    with torch.no_grad():
        conv.weight.copy_(weight.float())
    return conv


def test_full_rank_svd_reproduces_linear_and_1x1_conv():
    linear = nn.Linear(20, 12)
    fac = factorize_layer(linear, (12,))
    x = torch.randn(5, 20)
    assert [type(m) for m in fac] == [nn.Linear, nn.Linear] and fac[0].out_features == 12
    assert torch.allclose(fac(x), linear(x), atol=1e-5)

    conv = nn.Conv2d(16, 24, 1, stride=2, bias=True)
    fac = factorize_layer(conv, (16,))
    x = torch.randn(2, 16, 9, 9)
    assert fac[0].stride == (2, 2) and fac[0].bias is None and fac[1].bias is not None
    assert torch.allclose(fac(x), conv(x), atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, stride=2, padding=1),
                                    dict(kernel_size=3, stride=1, padding=2, dilation=2, bias=False),
                                    dict(kernel_size=(3, 5), stride=(1, 2), padding=(1, 0))])
def test_tucker2_at_the_weights_rank_reproduces_the_conv(kwargs):
    conv = low_rank_conv(10, 12, r_out=4, r_in=5, **kwargs)
    fac = factorize_layer(conv, (5, 4))
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in fac] == \
        [(12, 5, (1, 1)), (5, 4, conv.kernel_size), (4, 10, (1, 1))]
    assert fac[1].stride == conv.stride and fac[1].padding == conv.padding and fac[1].dilation == conv.dilation
    x = torch.randn(2, 12, 13, 11)
    assert torch.allclose(fac(x), conv(x), atol=1e-4)


def test_tucker2_at_full_rank_reproduces_a_generic_conv():
    # 40 input channels but at most 4*3*3 = 36 independent ones: the input factor stays, the output mode is full
    conv = nn.Conv2d(40, 4, 3, stride=2, padding=1)
    fac = factorize_layer(conv, (36, 4))
    assert [(m.in_channels, m.out_channels) for m in fac] == [(40, 36), (36, 4)]
    x = torch.randn(2, 40, 10, 10)
    assert torch.allclose(fac(x), conv(x), atol=1e-4)
    # both modes full: the core is the weight itself
    conv = nn.Conv2d(6, 8, 3, padding=1)
    fac = factorize_layer(conv, (6, 8))
    assert len(fac) == 1 and torch.allclose(fac(x[:, :6]), conv(x[:, :6]), atol=1e-5)


def test_hooi_sweeps_do_not_increase_the_truncation_error():
    w = torch.randn(32, 24, 3, 3, generator=torch.Generator().manual_seed(7))

    def error(sweeps):
        u_in, core, u_out = tucker2(w, 8, 10, sweeps=sweeps)
        return float((torch.einsum("rskl,or,is->oikl", core, u_out, u_in) - w).norm())

    assert error(5) <= error(0) + 1e-5 and error(0) < float(w.norm())


def test_energy_and_ratio_pick_the_expected_ranks():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])  # squared: 16, 4, 1, 0.25; cumulative 0.753, 0.941, 0.988, 1
    energies = (0.5, 0.75, 0.76, 0.94, 0.95, 0.98, 0.99, 1.0)
    assert [rank_for_energy(s, e) for e in energies] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [rank_for_ratio(10, r) for r in (0.01, 0.25, 0.5, 1.0)] == [1, 3, 5, 10]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = low_rank_conv(16, 12, r_out=2, r_in=3, kernel_size=3, padding=1)
            self.fc = nn.Linear(64, 48)
            with torch.no_grad():
                self.fc.weight.copy_(with_singular_values(48, 64, [4.0, 2.0, 1.0, 0.5]))

        def forward(self, x):
            return self.fc(self.conv(x.repeat(1, 4, 1, 1)).flatten(1)[:, :64])  # 3 colors -> 12 channels

    net = Net()
    for cfg, conv_ranks, fc_ranks in [(LowRankConfig(energy=0.9), None, [2]),
                                      (LowRankConfig(energy=1.0), [3, 2], [4]),
                                      (LowRankConfig(rank_ratio=0.25), [3, 4], [12])]:
        plans = plan_layers(net, cfg, torch.zeros(1, 3, 4, 4))
        choose_ranks(net, plans, cfg)
        by_name = {p.name: p for p in plans}
        assert by_name["fc"].ranks == fc_ranks and by_name["fc"].full_ranks == [48]
        if conv_ranks:
            assert by_name["conv"].ranks == conv_ranks and by_name["conv"].full_ranks == [12, 16]
    fc = {p.name: p for p in plans}["fc"]
    assert fc.params_after == 12 * (64 + 48) + 48 and fc.skipped is None


def small_student():
    torch.manual_seed(0)
    return nc.new_model("studentnet", ["a", "b", "c"], 32, widths=[8, 16, 16, 64, 64, 64, 64, 64])


def test_layers_that_would_not_save_are_skipped_and_say_why():
    model = small_student()
    result = factorize_model(model, LowRankConfig(energy=0.8, exclude=["cnn.7.*"]))
    reasons = {r["layer"]: r["skipped"] for r in result.layers}
    assert reasons["cnn.1.0"].startswith("depthwise convolution")
    assert reasons["cnn.7.3"] == "excluded (exclude)"
    assert "no saving" in reasons["fc.0"]  # 3 x 64: rank >= 3 costs 3*(64+3) > 192 parameters
    new = result.model
    assert isinstance(new.fc[0], nn.Linear) and isinstance(new.cnn[7][3], nn.Conv2d)
    assert isinstance(new.cnn[5][3], nn.Sequential) and "cnn.5.3" in nc.spec_of(new).overrides
    assert isinstance(model.cnn[5][3], nn.Conv2d)  # the argument is left as it was
    done = result.factorized
    assert done and all(r["params_after"] < 0.9 * r["params_before"] for r in done)
    assert result.params_after == count_parameters(new) < result.params_before == count_parameters(model)
    # at full energy nothing saves parameters: every layer is reported as skipped, the model is unchanged
    result = factorize_model(small_student(), LowRankConfig(energy=1.0))
    assert not result.factorized and not nc.spec_of(result.model).overrides
    assert result.params_after == result.params_before


def test_parameter_budget_is_met_and_an_impossible_one_is_refused():
    model = small_student()
    target = int(count_parameters(model) * 0.7)
    result = factorize_model(model, LowRankConfig(target_params=target, min_saving=0.0))
    assert target * 0.9 < result.params_after <= target and 0 < result.selection["energy"] < 1
    with pytest.raises(NetcompressError, match=r"target_params = 1,000 is out of reach.*reaches at least ([\d,]+)"):
        factorize_model(model, LowRankConfig(target_params=1000))


@pytest.mark.parametrize("kwargs", [{}, dict(energy=0.9, rank_ratio=0.5), dict(energy=1.5), dict(rank_ratio=0.0),
                                    dict(target_params=0)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(NetcompressError, match="energy|rank_ratio|target_params"):
        LowRankConfig(**kwargs)


def test_factorize_verb_on_a_users_module(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 64, 3, padding=1), nn.Linear(64, 64)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    small = nc.factorize(Net(), rank_ratio=0.1, example_input=torch.rand(1, 3, 8, 8))
    assert isinstance(small.fc, nn.Sequential) and small.fc[0].out_features == 7
    path = nc.save(small, tmp_path / "f.safetensors", class_names=[str(i) for i in range(64)], input_size=8)
    again = nc.load(path, model=Net())
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(again(x), small.eval()(x))


ROUND_TRIP = """
import sys
from safetensors.torch import load_file, save_file
import netcompress as nc
model = nc.load(sys.argv[1])
save_file({"y": model(load_file(sys.argv[2])["x"]).detach()}, sys.argv[3])
"""


@pytest.mark.slow
def test_factorized_resnet18_round_trips_through_its_file_in_a_fresh_process(tmp_path):
    result = factorize_model(nc.new_model("resnet18", list("abcde"), 32), LowRankConfig(rank_ratio=0.2))
    kinds = {r["method"] for r in result.factorized}
    assert kinds == {"tucker2", "svd"} and len(result.factorized) >= 19
    path = nc.save(result.model, tmp_path / "f.safetensors")
    assert nc.spec_of(result.model).overrides["layer1.0.conv1"]["type"] == "Sequential"
    assert read_spec(path).info.lowrank["layers"][1]["ranks"] == result.factorized[1]["ranks"]
    x = torch.rand(2, 3, 32, 32)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    subprocess.run([sys.executable, "-c", ROUND_TRIP, str(path), str(tmp_path / "x.safetensors"),
                    str(tmp_path / "y.safetensors")], check=True)
    y = load_file(str(tmp_path / "y.safetensors"))["y"]
    assert torch.equal(y, result.model.eval()(x))
    assert count_parameters(nc.load(path)) == result.params_after < 0.3 * result.params_before


@pytest.mark.slow
def test_lowrank_cli_factorizes_fine_tunes_and_logs(jpeg_dataset, tmp_path):
    assert "Example" in netcompress("lowrank", "--help").stdout
    model = nc.new_model("studentnet", ["soup", "rice", "bread"], 32, widths=[8, 16, 16, 64, 64, 64, 64, 64])
    nc.save(model, tmp_path / "m.safetensors")
    run = tmp_path / "run"
    proc = netcompress("lowrank", tmp_path / "m.safetensors", "--data", jpeg_dataset, "--energy", 0.8,
                       "--finetune-epochs", 1, "--batch-size", 4, "--out", run, "--json", "--no-progress",
                       cache=tmp_path / "c")
    log = json.loads(proc.stdout)
    assert [r["stage"] for r in log["rows"]] == ["original", "factorized", "finetuned"]
    original, factorized, tuned = log["rows"]
    assert factorized["params"] < original["params"] and factorized["macs"] < original["macs"]
    assert factorized["file_bytes"] < original["file_bytes"] and tuned["params"] == factorized["params"]
    assert "val_accuracy" in tuned and set(tuned["latency_ms"]) == {"ort@1", "torch@1", "torch@64"}
    assert json.loads((run / "lowrank.json").read_text())["rows"] == log["rows"]
    assert any(r["skipped"] and r["skipped"].startswith("depthwise") for r in log["layers"])
    loaded = nc.load(run / "finetuned.safetensors")
    assert count_parameters(loaded) == tuned["params"] and nc.spec_of(loaded).info.lowrank["config"]["energy"] == 0.8
    refused = netcompress("export-course", run / "finetuned.safetensors", "--out", tmp_path / "x.bin", check=False)
    assert refused.returncode == 2 and "replaced layers" in refused.stderr and not (tmp_path / "x.bin").exists()
    text = netcompress("lowrank", tmp_path / "m.safetensors", "--data", jpeg_dataset, "--rank-ratio", 0.25,
                       "--finetune-epochs", 0, "--out", tmp_path / "r2", "--no-progress", cache=tmp_path / "c").stdout
    assert "depthwise convolution" in text and "cnn.5.3" in text and "finetuned" not in text
    assert not (tmp_path / "r2" / "finetuned.safetensors").exists() and (tmp_path / "r2" / "factorized.safetensors").exists()
    bad = netcompress("lowrank", tmp_path / "m.safetensors", "--data", jpeg_dataset, "--target-params", 10,
                      "--out", tmp_path / "bad", cache=tmp_path / "c", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "target_params = 10 is out of reach" in bad.stderr and "or more" in bad.stderr
