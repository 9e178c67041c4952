import importlib.util
import time

import pytest
import torch.nn as nn

from netcompress.errors import NetcompressError
from netcompress.measure.cost import count_macs, count_parameters
from netcompress.measure.latency import Latency, LatencyConfig, Runtime, consistent
from netcompress.models import create_model


def test_macs_of_a_small_net_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    assert count_macs(net, 8) == 8 * 8 * 8 * 3 * 9 + 8 * 8 * 8 * 1 * 9 + 8 * 2
    assert count_parameters(net) == (3 * 9 * 8 + 8) + (9 * 8 + 8) + (8 * 2 + 2)


def test_macs_count_convs_with_their_own_forward():
    # EfficientNet-Lite's same-padding convs call F.conv2d themselves; they must still count
    assert count_macs(create_model("efficientnet_lite0", num_classes=10, pretrained=False), 64) > 30_000_000


def _tiny_student():
    import netcompress as nc

    return nc.new_model("studentnet", ["a", "b", "c"], 32, widths=[8, 16, 16, 32, 32, 32, 32, 32])


@pytest.mark.parametrize("runtime", ["torch", "ort", pytest.param("openvino", marks=pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="the openvino extra is not installed"))])
def test_latency_measures_several_models_together_on_each_runtime(runtime):
    import netcompress as nc

    small = _tiny_student()
    big = nc.new_model("studentnet", ["a", "b", "c"], 32)
    found = nc.latency({"small": small, "big": big}, runtime=runtime, rounds=3, seconds=0.05, max_spread=100)
    assert set(found) == {"small", "big"}
    for result in found.values():
        assert result.trusted and result.runtime == runtime and result.batch == 1 and result.threads == 1
        assert 0 < result.median_ms <= result.p90_ms and result.calls >= 3
    assert found["small"].median_ms < found["big"].median_ms


def test_latency_measures_several_models_in_interleaved_rounds():
    import netcompress as nc

    models = {name: _tiny_student() for name in ("a", "b", "c")}
    names, order = {id(m): name for name, m in models.items()}, []

    @nc.register_runtime
    class Logger(Runtime):
        """Calls that return at once and note which model ran, once per run of consecutive calls of one model."""

        name = "logger"

        def prepare(self, model, x, threads, workdir):
            name = names[id(model)]

            def call():
                if not order or order[-1] != name:
                    order.append(name)

            return call

    found = nc.latency(models, runtime="logger", rounds=4, seconds=0.005, warmup=0, max_spread=100)
    assert set(found) == {"a", "b", "c"} and all(r.calls >= 4 for r in found.values())
    # each round runs a, then b, then c (and so does the warm-up): never all rounds of one model, then the next
    assert len(order) >= 3 * 4 and order == ["a", "b", "c"] * (len(order) // 3)


class _Sleeper(Runtime):
    """Calls that sleep 2 ms, and every fourth call 20 ms: a machine busy a quarter of the time."""

    name = "sleeper"

    def prepare(self, model, x, threads, workdir):
        calls = iter(range(10**9))
        return lambda: time.sleep(0.02 if next(calls) % 4 == 3 else 0.002)


def test_a_disturbed_measurement_gives_no_figure_but_a_reason():
    import netcompress as nc

    nc.register_runtime(_Sleeper)
    result = nc.latency(_tiny_student(), runtime="sleeper", rounds=3, seconds=0.05, warmup=0)
    assert not result.trusted and result.median_ms is None and result.spread > 1
    assert "too busy to measure" in str(result) and "idle machine" in result.note


class _Preempted(Runtime):
    """Calls that compute for about 2 ms of CPU on the calling thread, one in four also waiting 20 ms, as a
    thread does when other work takes its core."""

    name = "preempted"
    computes_on_caller = True

    def prepare(self, model, x, threads, workdir):
        calls = iter(range(10**9))

        def run():
            end = time.thread_time() + 0.002
            while time.thread_time() < end:
                pass
            if next(calls) % 4 == 3:
                time.sleep(0.02)

        return run


def test_a_busy_wall_clock_reads_the_threads_cpu_time_when_the_work_is_on_it():
    import netcompress as nc

    nc.register_runtime(_Preempted)
    result = nc.latency(_tiny_student(), runtime="preempted", rounds=3, seconds=0.05, warmup=0)
    assert result.trusted and result.clock == "thread CPU" and 1.9 < result.median_ms < 3.0
    assert "thread CPU time" in str(result) and "wall median" in result.note
    on_two = nc.latency(_tiny_student(), runtime="preempted", rounds=3, seconds=0.05, warmup=0, threads=2)
    assert not on_two.trusted and "too busy" in on_two.note  # other threads' work would not be on this clock


class _Instant(Runtime):
    """Calls that return at once: far shorter than the timer's own jitter."""

    name = "instant"

    def prepare(self, model, x, threads, workdir):
        return lambda: None


def test_calls_shorter_than_a_millisecond_are_timed_in_blocks():
    import netcompress as nc

    nc.register_runtime(_Instant)
    result = nc.latency(_tiny_student(), runtime="instant", rounds=3, seconds=0.01, max_spread=100)
    assert result.calls >= 3 * 1000 and result.median_ms < 1e-3  # 1 ms blocks of sub-microsecond calls


def test_batch_one_slower_than_a_batch_of_64_is_not_reported():
    one = Latency("torch", 1, 1, 5.0, 5.5, 0.1, 100)
    many = Latency("torch", 64, 1, 2.0, 2.1, 0.05, 10)
    a, b = consistent(one, many)
    assert not a.trusted and not b.trusted and "batch 64" in a.note
    fine = Latency("torch", 1, 1, 0.5, 0.55, 0.1, 100)
    assert consistent(fine, many) == (fine, many)


def test_latency_config_rejects_unknown_runtimes_and_bad_counts():
    with pytest.raises(NetcompressError, match="choose one of.*ort"):
        LatencyConfig(runtime="tensorrt")
    with pytest.raises(NetcompressError, match="rounds >= 3"):
        LatencyConfig(rounds=1)
    with pytest.raises(NetcompressError, match="must be positive"):
        LatencyConfig(batch=0)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is not None, reason="openvino is installed")
def test_a_runtime_that_is_not_installed_says_how_to_install_it():
    import netcompress as nc

    with pytest.raises(NetcompressError, match=r"pip install 'netcompress\[openvino\]'"):
        nc.latency(_tiny_student(), runtime="openvino")


def test_measure_model_reports_every_runtime():
    from netcompress.measure.cost import LATENCIES, latency_texts, measure_latencies

    found = measure_latencies(_tiny_student(), rounds=3)
    assert set(found) == set(LATENCIES)
    texts = latency_texts({"latency_ms": found})
    assert all(t == "busy" or float(t) > 0 for t in texts.values())
    assert latency_texts({"latency_ms": "decoded to fp32"})["ort@1"] == "decoded to fp32"
