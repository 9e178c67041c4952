import pytest

from netcompress.errors import NetcompressError
from netcompress.measure.cost import count_parameters
from netcompress.pipeline.compare_arch import FAMILIES, fit_budget, int8_bytes

CLASSES = [str(i) for i in range(10)]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("budget", [30_000, 250_000, 1_000_000])
def test_width_search_lands_within_5_percent(family, budget):
    model, _ = fit_budget(family, CLASSES, 32, params=budget)
    assert abs(count_parameters(model) - budget) <= 0.05 * budget
    if family == "group":
        convs = [m for m in model.modules() if getattr(m, "groups", 1) > 1]
        assert convs and all(1 < m.groups < m.in_channels for m in convs)


def test_byte_budget_after_8bit_quantization():
    model, _ = fit_budget("depthwise-pointwise", CLASSES, 32, bytes_int8=300_000)
    assert abs(int8_bytes(model) - 300_000) <= 0.05 * 300_000


@pytest.mark.parametrize("budget", [100, 10**9])
def test_unreachable_budget_is_a_clear_error(budget):
    with pytest.raises(NetcompressError, match="out of reach for the plain family"):
        fit_budget("plain", CLASSES, 32, params=budget)


def test_exactly_one_budget():
    with pytest.raises(NetcompressError, match="exactly one budget"):
        fit_budget("plain", CLASSES, 32, params=1000, bytes_int8=1000)
