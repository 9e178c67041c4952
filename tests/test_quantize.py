"""Quantization: codecs, bit packing, the .ncq file, the course's pickles, ONNX export and int8."""

import os
import pickle
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import netcompress as nc
from netcompress.compress.codecs import (
    CONST,
    affine_decode,
    affine_encode,
    encode_tensor,
    fold_batchnorm,
    kmeans_1d,
    minmax8_decode,
    minmax8_encode,
    pack_bits,
    unpack_bits,
)
from netcompress.compress.quant_config import QuantConfig, encode_model
from netcompress.errors import NetcompressError
from netcompress.formats.course import (
    course_encode,
    load_course_pkl,
    read_course_pkl,
    save_course_pkl,
)
from netcompress.formats.ncq import decode_model


def quantize_to(path, model, cfg):
    return nc.quantize(model, cfg).save(path)

rng = np.random.default_rng(0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def food_images(food_root, cache_dir):
    split = nc.ImageFolderData(food_root, 32, cache_dir=cache_dir, progress=False).split("validation")
    return split.images[::10].float() / 255  # 75 real photos


# --- bit packing and codecs on small tensors ----------------------------------------------------

@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("n", [1, 7, 13, 1001])
def test_pack_unpack_identity(bits, n):
    codes = rng.integers(0, 2**bits, n).astype(np.uint8)
    codes[0] = 2**bits - 1
    buf = pack_bits(codes, bits)
    assert len(buf) == (n * bits + 7) // 8
    assert np.array_equal(unpack_bits(buf, bits, n), codes)


def test_pack_refuses_codes_that_do_not_fit():
    with pytest.raises(ValueError):
        pack_bits(np.array([4], dtype=np.uint8), 2)


def test_course_minmax_error_is_at_most_half_a_step():
    w = rng.normal(size=(64, 9)).astype(np.float32)
    lo, hi, q = minmax8_encode(w)
    assert q.dtype == np.uint8 and q.min() == 0 and q.max() == 255
    err = np.abs(minmax8_decode(lo, hi, q) - w).max()
    assert err <= (hi - lo) / 255 / 2 + 1e-7


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_affine_error_bounds(bits):
    w = rng.normal(size=(16, 64)).astype(np.float32) * rng.uniform(0.01, 1, (16, 1)).astype(np.float32)
    lo, step, codes = affine_encode(w, bits, search=False)
    plain = affine_decode(lo, step, codes)
    # half a step, plus the slack from storing offset and step in fp16
    bound = step.astype(np.float32)[:, None] / 2 + np.abs(w).max(1, keepdims=True) * 2**-9
    assert (np.abs(plain - w) <= bound).all()
    searched = affine_decode(*affine_encode(w, bits, search=True))
    assert ((searched - w) ** 2).sum() <= ((plain - w) ** 2).sum() * (1 + 1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_beats_a_uniform_grid_and_maps_to_the_nearest_centre(bits):
    w = rng.standard_t(4, size=2000).astype(np.float32)  # heavy tails, like conv weights
    book, codes = kmeans_1d(w, 2**bits)
    assert np.all(np.diff(book.astype(np.float64)) >= 0)
    dist = np.abs(w[:, None] - book.astype(np.float32)[None, :])
    assert np.allclose(dist[np.arange(len(w)), codes], dist.min(1))
    grid = np.linspace(w.min(), w.max(), 2**bits)
    uniform_mse = (np.abs(w[:, None] - grid[None, :]).min(1) ** 2).mean()
    assert ((book.astype(np.float32)[codes] - w) ** 2).mean() < uniform_mse
    assert np.array_equal(kmeans_1d(w, 2**bits)[1], codes)  # deterministic


def test_constant_tensors_give_no_nan():
    const = np.full((8, 3, 3, 3), 0.25, dtype=np.float32)
    lo, hi, q = minmax8_encode(const)
    assert np.array_equal(minmax8_decode(lo, hi, q), const)
    assert np.isfinite(affine_decode(*affine_encode(const.reshape(8, -1), 4))).all()
    book, codes = kmeans_1d(const, 16)
    assert np.all(book[codes] == np.float16(0.25))
    assert encode_tensor(torch.from_numpy(const), "kbit", 4)[0] == CONST
    entry = course_encode({"w": torch.ones(5), "n": torch.tensor(3)}, 8)
    assert np.isfinite(entry["w"][0]) and np.array_equal(entry["w"][2], np.zeros(5, np.uint8))
    assert isinstance(entry["n"], np.float64)  # 0-dim entries stay scalars, as the course had them


# --- the .ncq file ----------------------------------------------------------------------------

def _small_model():
    torch.manual_seed(0)
    net = nc.new_model("studentnet", ["a", "b", "c"], 32, width_mult=0.5)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding has something to do
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return net.eval()


def test_fold_batchnorm_keeps_the_function():
    net = _small_model()
    x = torch.rand(4, 3, 32, 32)
    ref = net(x)
    assert fold_batchnorm(net) == 8
    assert torch.allclose(net(x), ref, atol=1e-5)


def test_fold_batchnorm_finds_pairs_called_by_attribute():
    torch.manual_seed(0)
    net = nc.new_model("efficientnet_lite0", ["a", "b", "c"], 32, blocks=3).eval()  # bn(conv(x)) by attribute
    x = torch.rand(2, 3, 32, 32)
    ref = net(x)
    assert fold_batchnorm(net, x[:1]) == 9 and torch.allclose(net(x), ref, atol=1e-5)
    cfg = QuantConfig("kbit", 4, entropy=True)
    assert nc.quantize(net, cfg).nbytes < nc.quantize(net, replace(cfg, fold_bn=False)).nbytes


def test_fold_batchnorm_leaves_a_conv_whose_output_is_also_used_elsewhere():
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    net = Shared().eval()
    with torch.no_grad():
        net.bn.running_var.fill_(4.0)
    x = torch.rand(1, 3, 8, 8)
    ref = net(x)
    assert fold_batchnorm(net, x) == 0 and torch.equal(net(x), ref)


@pytest.mark.parametrize("cfg, tol", [
    (QuantConfig("fp16"), 0.01), (QuantConfig("int8-minmax"), 0.05), (QuantConfig("int8-channel"), 0.05),
    (QuantConfig("kbit", 6, entropy=True), 0.15), (QuantConfig("kmeans", 6), 0.15)])
def test_quantized_file_round_trip(tmp_path, cfg, tol):
    net = _small_model()
    path = quantize_to(tmp_path / "m.ncq", net, cfg)
    assert path.read_bytes() == encode_model(net, cfg)  # deterministic
    back = nc.load(path)
    assert nc.spec_of(back).replace(info=nc.ModelInfo()) == nc.spec_of(net).replace(info=nc.ModelInfo())
    assert nc.spec_of(back).info.quantized["codec"] == cfg.codec
    x = torch.rand(8, 3, 32, 32)
    ref, out = net(x), back(x)
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() <= tol * ref.abs().max()


def test_smaller_codecs_give_smaller_files():
    net = _small_model()
    sizes = [len(encode_model(net, QuantConfig(c, b))) for c, b in
             [("fp16", 16), ("int8-minmax", 8), ("kbit", 4), ("kbit", 2)]]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0] / 5


def test_damaged_files_are_detected(tmp_path):
    blob = encode_model(_small_model(), QuantConfig("kbit", 4))
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x40
    with pytest.raises(NetcompressError, match="checksum mismatch"):
        decode_model(bytes(flipped), "m.ncq")
    with pytest.raises(NetcompressError, match="truncated"):
        decode_model(blob[:-100], "m.ncq")
    with pytest.raises(NetcompressError, match="not a netcompress quantized file"):
        decode_model(b"PK\x03\x04" + blob[4:], "m.ncq")


def test_bad_codec_options_name_the_field():
    with pytest.raises(NetcompressError, match="codec 'int4': choose one of fp16, int8-minmax"):
        QuantConfig("int4")
    with pytest.raises(NetcompressError, match="bits = 1"):
        QuantConfig("kmeans", 1)
    with pytest.raises(NetcompressError, match="bits = 12"):
        QuantConfig("kbit", 12)
    with pytest.raises(NetcompressError, match="variable width"):
        QuantConfig("int8-minmax", budget=1000)
    with pytest.raises(NetcompressError, match="need training data"):
        nc.quantize(_small_model(), QuantConfig("kbit", 4, budget=5000))


def test_a_new_codec_is_one_class_and_one_registration(tmp_path):
    @nc.register_codec
    class Ternary(nc.Codec):  # -s, 0, +s per row, 2 bits a weight
        name, kind = "ternary-test", 200

        def encode(self, w, bits):
            from netcompress.compress.codecs import pack_bits

            rows = w.reshape(len(w), -1)
            scale = np.abs(rows).mean(1).astype(np.float16)
            codes = (np.sign(rows) * (np.abs(rows) > 0.5 * scale[:, None]) + 1).astype(np.uint8)
            return scale.tobytes() + pack_bits(codes, 2)

        def decode(self, r, shape):
            from netcompress.compress.codecs import packed_size, unpack_bits

            n = int(np.prod(shape))
            scale = r.array(np.float16, shape[0]).astype(np.float32)
            codes = unpack_bits(r.take(packed_size(n, 2)), 2, n).reshape(shape[0], -1)
            return (codes.astype(np.float32) - 1) * scale[:, None]

    net = _small_model()
    stored = nc.quantize(net, codec="ternary-test")
    assert "ternary-test" in nc.list_codecs() and stored.nbytes < len(encode_model(net, QuantConfig("kbit", 4)))
    back = nc.load(stored.save(tmp_path / "t.ncq"))
    w = back.cnn[4][3].weight
    assert len(torch.unique(w[0])) <= 3 and torch.isfinite(back(torch.rand(1, 3, 32, 32))).all()


# --- the course's files -----------------------------------------------------------------------

def test_course_checkpoint_pickles_match_the_course_sizes(course_student_32, tmp_path):
    net = course_student_32
    p8 = save_course_pkl(net, tmp_path / "s8.pkl", 8, protocol=3)
    p16 = save_course_pkl(net, tmp_path / "s16.pkl", 16, protocol=3)
    assert abs(p8.stat().st_size - 268_471) <= 100
    assert abs(p16.stat().st_size - 522_958) <= 100
    ours = quantize_to(tmp_path / "s8.ncq", net, QuantConfig("int8-minmax"))
    assert ours.stat().st_size < p8.stat().st_size - 8000
    # same codec, same numbers: the course's decode of the pickle equals ours
    from_pkl = load_course_pkl(p8, input_size=32)
    from_ncq = nc.load(ours)
    for (k, a), b in zip(from_pkl.state_dict().items(), from_ncq.state_dict().values()):
        assert torch.equal(a, b), k


def test_quantized_course_model_predicts_like_the_original(course_student_32, food_images, tmp_path):
    net = course_student_32
    ref = net(food_images)
    errors = {}
    for cfg, bound in [(QuantConfig("fp16"), 0.01), (QuantConfig("int8-minmax"), 0.15),
                       (QuantConfig("int8-channel"), 0.05), (QuantConfig("kbit", 4), 0.5)]:
        back = nc.load(quantize_to(tmp_path / "q.ncq", net, cfg))
        errors[cfg.codec] = ((back(food_images) - ref).norm() / ref.norm()).item()  # relative logit error
        assert errors[cfg.codec] < bound, cfg
    assert errors["int8-channel"] < errors["int8-minmax"] / 2
    back16 = load_course_pkl(save_course_pkl(net, tmp_path / "s16.pkl", 16), input_size=32)
    assert torch.allclose(back16(food_images), ref, atol=0.05 * ref.abs().max().item())


def test_malicious_pickle_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"cnn.0.0.weight": Evil()}, protocol=3))
    with pytest.raises(NetcompressError, match=r"refused to load: the pickle asks for (posix|nt|os)\.system"):
        read_course_pkl(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({"w": np.zeros(3)}, protocol=3)[:-20])
    with pytest.raises(NetcompressError, match="not a readable course weight pickle"):
        read_course_pkl(path)


# --- ONNX ---------------------------------------------------------------------------------------

def test_onnx_fp32_matches_pytorch_and_int8_runs(course_student_32, food_images, tmp_path, food_root, cache_dir):
    from netcompress.formats.onnx import load_onnx

    net = course_student_32
    path = nc.export_onnx(net, tmp_path / "m.onnx")
    onnx_net = load_onnx(path, threads=1)
    assert nc.spec_of(onnx_net) == nc.spec_of(net).with_export("onnx", {"input_size": 32, "dynamic_size": False})
    ref = net(food_images)
    assert torch.allclose(onnx_net(food_images), ref, atol=1e-4)
    assert torch.allclose(onnx_net(food_images[:1]), ref[:1], atol=1e-4)  # dynamic batch

    data = nc.ImageFolderData(food_root, 32, cache_dir=cache_dir, progress=False)
    int8_path = nc.export_onnx(net, tmp_path / "m8.onnx", int8=True, calibration=data, calibration_images=64)
    int8_net = load_onnx(int8_path, threads=1)
    assert nc.spec_of(int8_net).info.exported["onnx_int8"]["calibration_images"] == 64
    out = int8_net(food_images)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.7
    assert int8_path.stat().st_size < path.stat().st_size / 2.5


def test_onnx_int8_in_qoperator_form_writes_int8_operators_and_agrees(course_student_32, food_images, food_32,
                                                                      tmp_path):
    import onnx

    from netcompress.formats.onnx import load_onnx

    path = nc.export_onnx(course_student_32, tmp_path / "q.onnx", int8=True, calibration=food_32,
                          calibration_images=64, quant_format="qoperator")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "QLinearConv" in ops and "DequantizeLinear" in ops and "Conv" not in ops
    int8_net = load_onnx(path, threads=1)
    assert nc.spec_of(int8_net).info.exported["onnx_int8"]["quant_format"] == "qoperator"
    assert (int8_net(food_images).argmax(1) == course_student_32(food_images).argmax(1)).float().mean() >= 0.7
    seven = nc.export_onnx(course_student_32, tmp_path / "7.onnx", int8=True, calibration=food_32,
                           calibration_images=64, reduce_range=True)  # CPUs without VNNI: no 16-bit overflow
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(str(seven)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert weights and max(int(abs(w.astype(int)).max()) for w in weights) <= 64
    assert max(int(abs(w.astype(int)).max()) for w in [onnx.numpy_helper.to_array(t) for t in onnx.load(
        str(path)).graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]) > 64
    with pytest.raises(nc.NetcompressError, match="quant_format 'qop': choose one of qdq, qoperator"):
        nc.export_onnx(course_student_32, tmp_path / "x.onnx", int8=True, calibration=food_32, quant_format="qop")


# --- the command line ---------------------------------------------------------------------------

def test_cli_verbs_have_examples_and_open_every_format(course_ckpt, tmp_path):
    import json

    from typer.testing import CliRunner

    from netcompress.cli import app

    runner = CliRunner()
    for verb in ["quantize", "export", "course-pkl"]:
        assert "Example" in runner.invoke(app, [verb, "--help"]).stdout, verb
    bad = subprocess.run([sys.executable, "-m", "netcompress.cli", "quantize", str(course_ckpt), "--codec", "int4",
                          "--out", str(tmp_path / "x.ncq")], capture_output=True, text=True)
    assert bad.returncode == 2 and "codec 'int4': choose one of" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.ncq").exists()
    done = runner.invoke(app, ["quantize", str(course_ckpt), "--codec", "kmeans", "--bits", "4", "--entropy",
                               "--out", str(tmp_path / "c.ncq"), "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["bytes"] == (tmp_path / "c.ncq").stat().st_size < 140_000
    pkl = runner.invoke(app, ["course-pkl", str(course_ckpt), "--bits", "8", "--out", str(tmp_path / "c.pkl")])
    assert pkl.exit_code == 0, pkl.output
    for f in ("c.ncq", "c.pkl"):
        totals = json.loads(runner.invoke(app, ["summary", str(tmp_path / f), "--image-size", "64", "--no-latency",
                                                "--json"]).stdout)
        assert totals["parameters"] == 256_779 and totals["file_bytes"] == (tmp_path / f).stat().st_size


# --- mixed precision ------------------------------------------------------------------------------

def test_knapsack_spends_bits_where_they_matter():
    from netcompress.compress.bit_allocation import choose_widths

    table = {"sensitive": {2: (1.0, 100), 8: (0.0, 400)}, "robust": {2: (0.01, 1000), 8: (0.0, 4000)}}
    assert choose_widths(table, 1400) == {"sensitive": 8, "robust": 2}
    assert choose_widths(table, 4400) == {"sensitive": 8, "robust": 8}
    assert choose_widths(table, 1000) is None


def test_budget_is_met_and_beats_uniform_bits(course_student_32, food_images):
    from netcompress.compress.bit_allocation import allocate_bits

    net = course_student_32
    uniform = QuantConfig("kbit", 3)
    budget = len(encode_model(net, uniform))
    cfg = allocate_bits(net, QuantConfig("kbit", 8), food_images[::2], budget, progress=False)
    assert len(encode_model(net, cfg)) <= budget and len(set(cfg.tensor_bits.values())) > 1
    ref = torch.log_softmax(net(food_images), 1)

    def kl(c):
        out = torch.log_softmax(decode_model(encode_model(net, c))(food_images), 1)
        return torch.nn.functional.kl_div(out, ref, log_target=True, reduction="batchmean").item()

    assert kl(cfg) < kl(uniform) / 2
    with pytest.raises(NetcompressError, match="budget = 10,000 bytes is below"):
        allocate_bits(net, QuantConfig("kbit", 8), food_images[:4], 10_000, progress=False)


@pytest.mark.parametrize("average", [0.0, 1.0])  # 1.0: the weights averaged over the last epoch are stored
def test_quantization_aware_finetuning_recovers_what_2_bits_lose(course_student_32, food_images, food_root, cache_dir,
                                                                 average):
    from netcompress.data.split import Split
    from netcompress.schedule import Finetune, finetune_quantized

    net = course_student_32
    train = nc.ImageFolderData(food_root, 32, cache_dir=cache_dir, progress=False).split("training")
    keep = torch.arange(0, len(train), 12)  # 250 images
    small = Split("training", train.images[keep], train.labels[keep], [train.files[i] for i in keep],
                  nc.spec_of(net).class_names)  # the course model's 11 classes: these labels are 10 of them
    cfg = QuantConfig("kbit", 2, finetune_epochs=3, finetune_lr=1e-3, finetune_average=average)
    ref = torch.log_softmax(net(food_images), 1)

    def kl(model):
        out = torch.log_softmax(decode_model(encode_model(model, cfg))(food_images), 1)
        return torch.nn.functional.kl_div(out, ref, log_target=True, reduction="batchmean").item()

    # pure distillation (alpha 1): the course model's Food-11 classes are not these photos' labels
    schedule = Finetune(small, None, nc.TrainConfig(batch_size=50), distill=nc.DistillConfig(alpha=1.0),
                        progress=False)
    tuned = finetune_quantized(net, cfg, schedule)
    assert kl(tuned) < 0.8 * kl(net)
