import math

import pytest
import torch
import torch.nn.functional as F

from netcompress.data.augment import Batch, iterate_batches
from netcompress.errors import NetcompressError
from netcompress.spec import new_model
from netcompress.train.distill import DistillConfig, DistillLoss, check_teacher, kd_loss, rkd_loss

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


def test_identical_logits_leave_only_the_hard_term():
    assert kd_loss(S, S, Y, 20.0, 1.0).item() == pytest.approx(0.0, abs=1e-4)  # T² scales float error


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
