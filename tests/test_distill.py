import math

import pytest
import torch
import torch.nn.functional as F

from netcompress.data.augment import Batch, iterate_batches
from netcompress.errors import NetcompressError
from netcompress.spec import new_model
from netcompress.train.distill import (
    DistillConfig,
    DistillLoss,
    check_teacher,
    dist_loss,
    dkd_loss,
    get_kd_loss,
    kd_loss,
    rkd_loss,
)

S = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
T = torch.tensor([[1.0, 1.5, -0.5], [3.0, -1.0, 0.0]])
Y = torch.tensor([0, 2])


def test_kd_loss_matches_a_hand_computation():
    temp, alpha = 4.0, 0.7
    ce = -sum(math.log(math.exp(S[i, Y[i]]) / sum(math.exp(v) for v in S[i])) for i in range(2)) / 2
    kl = 0.0
    for i in range(2):
        p = [math.exp(v / temp) for v in T[i].tolist()]
        q = [math.exp(v / temp) for v in S[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = (1 - alpha) * ce + alpha * temp**2 * kl / 2  # batch-mean KL
    assert kd_loss(S, T, Y, temp, alpha).item() == pytest.approx(expected, rel=1e-5)


def test_alpha_zero_is_plain_cross_entropy():
    assert kd_loss(S, T, Y, 20.0, 0.0).item() == pytest.approx(F.cross_entropy(S, Y).item())


@pytest.mark.parametrize("alpha", [0.3, 0.9])
def test_identical_logits_leave_only_the_hard_term(alpha):
    ce = -sum(math.log(math.exp(S[i, Y[i]]) / sum(math.exp(v) for v in S[i])) for i in range(2)) / 2
    assert ce > 0.5  # the hard term is far from zero: dropping it or weighting it wrong shows
    # T² = 400 scales the float error of the (zero) soft term
    assert kd_loss(S, S, Y, 20.0, alpha).item() == pytest.approx((1 - alpha) * ce, abs=1e-4)


def test_no_gradient_reaches_the_teacher():
    teacher = new_model("studentnet", ["a", "b", "c"], 32, widths=[8] * 8)
    student = new_model("studentnet", ["a", "b", "c"], 32, widths=[4] * 8)
    loss_fn = DistillLoss(teacher, student, DistillConfig(method="rkd"), channels_last=False)
    x = torch.rand(6, 3, 32, 32)
    loss = loss_fn(student(x), Batch(x, torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6)))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not teacher.training


def test_rkd_is_zero_for_the_same_geometry_at_any_scale_and_width():
    e = torch.randn(8, 5)
    rotation = torch.linalg.qr(torch.randn(5, 5))[0]
    wide = torch.cat([e @ rotation, torch.zeros(8, 3)], 1) * 3.0  # rotated, scaled, padded: same relations
    assert rkd_loss(wide, e).item() == pytest.approx(0.0, abs=1e-5)
    assert rkd_loss(torch.randn(8, 5), e).item() > 0.1


def test_teacher_with_other_classes_is_refused():
    with pytest.raises(NetcompressError, match="predicts 11 classes but the data has 10"):
        check_teacher(list("abcdefghijk"), list("abcdefghij"), "teacher.safetensors")


@pytest.mark.parametrize("field, value", [("method", "fitnet"), ("temperature", 0.0), ("temperature", float("inf")),
                                          ("alpha", 1.5)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(NetcompressError, match=field):
        DistillConfig(**{field: value})


@pytest.mark.parametrize("method", ["logits", "rkd"])
def test_precomputed_teacher_gives_the_same_loss(method):
    from test_train import synthetic_split

    split = synthetic_split("training", 20, 0)
    teacher = new_model("studentnet", ["a", "b", "c"], 32, widths=[8] * 8)
    student = new_model("studentnet", ["a", "b", "c"], 32, widths=[4] * 8)
    cfg = DistillConfig(4.0, 0.9, method=method, teacher_precision="fp32")
    live, cached = DistillLoss(teacher, student, cfg), DistillLoss(teacher, student, cfg)
    cached.precompute(split, batch_size=7)
    student.eval()
    for batch in iterate_batches(split, 6, device=torch.device("cpu"), shuffle=True,
                                 generator=torch.Generator().manual_seed(0)):
        logits = student(batch.images)
        assert cached(logits, batch).item() == pytest.approx(live(logits, batch).item(), rel=1e-4)


def test_bf16_teacher_stays_close_to_fp32():
    teacher = new_model("studentnet", ["a", "b", "c"], 32, widths=[16] * 8)
    student = new_model("studentnet", ["a", "b", "c"], 32, widths=[4] * 8)
    x = torch.rand(16, 3, 32, 32)
    batch = Batch(x, torch.arange(16) % 3, torch.arange(16))
    logits = student(x)
    fp32 = DistillLoss(teacher, student, DistillConfig(4.0, 0.9, teacher_precision="fp32"))(logits, batch)
    bf16 = DistillLoss(teacher, student, DistillConfig(4.0, 0.9, teacher_precision="bf16"))(logits, batch)
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.05)


# --- DKD and DIST against the papers' definitions ------------------------------------------------------------------

def _softmax(row: list[float], temp: float) -> list[float]:
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def dkd_by_hand(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temp: float, alpha: float, beta: float) -> float:
    """Zhao et al. 2022, eq. (7) with the authors' T² and batch mean: alpha·TCKD + beta·NCKD, where TCKD is the KL
    of the binary (target, all others) distributions and NCKD the KL of the softmax over the non-target classes."""
    total = 0.0
    for srow, trow, k in zip(s.tolist(), t.tolist(), y.tolist()):
        ps, pt = _softmax(srow, temp), _softmax(trow, temp)
        tckd = _kl([pt[k], 1 - pt[k]], [ps[k], 1 - ps[k]])
        others = [j for j in range(len(srow)) if j != k]
        nckd = _kl(_softmax([trow[j] for j in others], temp), _softmax([srow[j] for j in others], temp))
        total += alpha * tckd + beta * nckd
    return temp**2 * total / len(y)


def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (z - mb) for x, z in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((z - mb) ** 2 for z in b))


def dist_by_hand(s: torch.Tensor, t: torch.Tensor, temp: float, beta: float, gamma: float) -> float:
    """Huang et al. 2022, eq. (5)-(7): T²·(beta·mean over samples of 1 - Pearson(student row, teacher row)
    + gamma·mean over classes of 1 - Pearson(student column, teacher column)) of the tempered softmaxes."""
    ys, yt = [_softmax(r, temp) for r in s.tolist()], [_softmax(r, temp) for r in t.tolist()]
    inter = sum(1 - _pearson(a, b) for a, b in zip(ys, yt)) / len(ys)
    columns = range(len(ys[0]))
    intra = sum(1 - _pearson([r[j] for r in ys], [r[j] for r in yt]) for j in columns) / len(columns)
    return temp**2 * (beta * inter + gamma * intra)


def _logits(seed: int, batch: int = 6, classes: int = 7) -> torch.Tensor:
    return 3 * torch.randn(batch, classes, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("temp, alpha, beta", [(1.0, 1.0, 8.0), (4.0, 1.0, 8.0), (4.0, 0.5, 2.0), (20.0, 2.0, 1.0)])
def test_dkd_matches_the_paper(temp, alpha, beta):
    s, t, y = _logits(0), _logits(1), torch.tensor([0, 3, 6, 2, 2, 5])
    expected = dkd_by_hand(s, t, y, temp, alpha, beta)
    assert expected > 0
    assert dkd_loss(s, t, y, temp, alpha, beta).item() == pytest.approx(expected, rel=1e-4)


def test_dkd_with_the_teachers_non_target_mass_as_beta_is_classic_kd():
    """The paper's eq. (5): KD = TCKD + (1 - p_target(teacher))·NCKD, sample by sample."""
    s, t, y = _logits(2), _logits(3), torch.tensor([1, 4, 0, 6, 2, 3])
    for i in range(len(y)):
        si, ti, yi = s[i:i + 1], t[i:i + 1], y[i:i + 1]
        beta = 1 - F.softmax(ti / 4.0, 1)[0, yi].item()
        assert dkd_loss(si, ti, yi, 4.0, 1.0, beta).item() == pytest.approx(kd_loss(si, ti, yi, 4.0, 1.0).item(),
                                                                            rel=1e-4)


@pytest.mark.parametrize("temp, beta, gamma", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0), (4.0, 2.0, 0.5), (20.0, 0.0, 1.0)])
def test_dist_matches_the_paper(temp, beta, gamma):
    s, t = _logits(4), _logits(5)
    expected = dist_by_hand(s, t, temp, beta, gamma)
    assert expected > 0
    assert dist_loss(s, t, temp, beta, gamma).item() == pytest.approx(expected, rel=1e-4)


LOSSES = {"dkd": lambda s, t, temp: dkd_loss(s, t, torch.tensor([0, 3, 6, 2, 2, 5]), temp),
          "dist": lambda s, t, temp: dist_loss(s, t, temp)}


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dkd_and_dist_are_zero_for_the_teachers_own_logits_and_positive_otherwise(name, temp):
    loss, t = LOSSES[name], _logits(6)
    assert loss(t.clone(), t, temp).item() == pytest.approx(0.0, abs=1e-5)
    assert loss(_logits(7), t, temp).item() > 0.01
    assert loss(t + 0.5 * _logits(8), t, temp).item() > 0.001  # a student near the teacher is still off


@pytest.mark.parametrize("name", LOSSES)
def test_a_gradient_step_on_dkd_and_dist_moves_the_student_towards_the_teacher(name):
    """The loss falls, and so does a distance it does not compute itself: the KL of the two softmaxes."""
    loss, t = LOSSES[name], _logits(9)
    s = _logits(10).requires_grad_(True)

    def kl_to_teacher(logits):
        return F.kl_div(F.log_softmax(logits, 1), F.softmax(t, 1), reduction="batchmean").item()

    before = loss(s, t, 4.0)
    before.backward()
    with torch.no_grad():
        stepped = s - 0.5 * s.grad / s.grad.norm()
    assert loss(stepped, t, 4.0).item() < before.item()
    assert kl_to_teacher(stepped) < kl_to_teacher(s.detach())


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("k", [2.0, 5.0])
def test_dkd_and_dist_scale_with_the_square_of_the_temperature(name, k):
    """Logits k times larger at temperature k give the same softmaxes: only the T² factor changes the loss."""
    loss, s, t = LOSSES[name], _logits(11), _logits(12)
    assert loss(k * s, k * t, k).item() == pytest.approx(k**2 * loss(s, t, 1.0).item(), rel=1e-4)


@pytest.mark.parametrize("method", ["dkd", "dist"])
def test_dkd_and_dist_methods_add_the_hard_term(method):
    s, t = _logits(13), _logits(14)
    y = torch.tensor([0, 3, 6, 2, 2, 5])
    cfg = DistillConfig(temperature=3.0, alpha=0.6, method=method, dkd_beta=5.0)
    soft = (dkd_loss(s, t, y, 3.0, beta=5.0) if method == "dkd" else dist_loss(s, t, 3.0)).item()
    assert get_kd_loss(method)(s, t, y, cfg).item() == pytest.approx(0.4 * F.cross_entropy(s, y).item() + 0.6 * soft,
                                                                     rel=1e-5)
    mixed = 0.7 * F.one_hot(y, 7).float() + 0.3 * F.one_hot(y.roll(1), 7).float()  # a mixed batch's soft labels
    expected = 0.4 * F.cross_entropy(s, mixed).item() + 0.6 * soft  # DKD's target: each image's larger part
    assert get_kd_loss(method)(s, t, mixed, cfg).item() == pytest.approx(expected, rel=1e-5)
