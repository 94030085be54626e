import math

import pytest
import torch

from training.config import LossConfig
from training.losses import (
    CrossEntropyLoss,
    FocalLoss,
    LabelSmoothingLoss,
    SoftF1Loss,
    SummedHeadLoss,
    balanced_class_weights,
    build_criterion,
    resolve_class_weights,
    smooth_targets,
)


def logits_for_true_probabilities(true_probabilities: list[float], num_classes: int) -> torch.Tensor:
    """Logits whose softmax gives class 0 the given probability and splits the rest evenly."""
    rows = []
    for p in true_probabilities:
        rest = (1.0 - p) / (num_classes - 1)
        rows.append([math.log(p)] + [math.log(rest)] * (num_classes - 1))
    return torch.tensor(rows, dtype=torch.float64)


def random_batch(seed: int, size: int = 16, num_classes: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(size, num_classes, generator=generator) * 3
    targets = torch.randint(0, num_classes, (size,), generator=generator)
    return logits, targets


def test_smoothed_targets_exact_values():
    smoothed = smooth_targets(torch.tensor([2]), num_classes=7, epsilon=0.1)
    assert smoothed[0, 2].item() == pytest.approx(0.9 + 0.1 / 7, abs=1e-7)
    assert smoothed[0, 2].item() == pytest.approx(0.9143, abs=5e-5)
    others = torch.cat([smoothed[0, :2], smoothed[0, 3:]])
    assert torch.allclose(others, torch.full((6,), 0.1 / 7))
    assert others[0].item() == pytest.approx(0.0143, abs=5e-5)
    assert smoothed.sum().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_label_smoothing_matches_torch(seed, epsilon):
    logits, targets = random_batch(seed)
    expected = torch.nn.CrossEntropyLoss(label_smoothing=epsilon)(logits, targets)
    actual = LabelSmoothingLoss(7, epsilon)(logits, targets)
    assert actual.item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_entropy_matches_torch(seed):
    logits, targets = random_batch(seed)
    weights = torch.linspace(0.5, 2.0, 7)
    expected = torch.nn.CrossEntropyLoss(weight=weights)(logits, targets)
    actual = CrossEntropyLoss(7, weights)(logits, targets)
    assert actual.item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_focal_gamma_zero_is_cross_entropy(seed, weighted):
    logits, targets = random_batch(seed)
    weights = torch.linspace(0.5, 2.0, 7) if weighted else None
    expected = torch.nn.CrossEntropyLoss(weight=weights)(logits, targets)
    actual = FocalLoss(7, gamma=0.0, class_weights=weights)(logits, targets)
    assert actual.item() == pytest.approx(expected.item(), abs=1e-6)


def test_focal_gamma_two_exact_value():
    logits = logits_for_true_probabilities([0.9, 0.1], num_classes=3)
    targets = torch.tensor([0, 0])
    loss = FocalLoss(3, gamma=2.0)(logits, targets).item()
    expected = (0.1**2 * -math.log(0.9) + 0.9**2 * -math.log(0.1)) / 2
    assert loss == pytest.approx(expected, abs=1e-6)
    assert loss == pytest.approx(0.933, abs=5e-4)


def test_focal_factor_applies_per_sample():
    logits = logits_for_true_probabilities([0.9, 0.1], num_classes=3)
    targets = torch.tensor([0, 0])
    batch_level = (1 - 0.5) ** 2 * torch.nn.functional.cross_entropy(logits, targets)
    per_sample = FocalLoss(3, gamma=2.0)(logits, targets)
    assert per_sample.item() != pytest.approx(batch_level.item(), abs=1e-3)


def test_focal_class_weights_weight_each_sample():
    logits = logits_for_true_probabilities([0.9, 0.1], num_classes=3).float()
    targets = torch.tensor([0, 1])
    logits[1] = logits[1].flip(0)  # sample 1 now has p = 0.1 on class 2 and 0.45 on class 1
    weights = torch.tensor([1.0, 3.0, 1.0])
    per_sample = [FocalLoss(3, 2.0)(logits[i : i + 1], targets[i : i + 1]).item() for i in range(2)]
    expected = (1.0 * per_sample[0] + 3.0 * per_sample[1]) / 4.0
    assert FocalLoss(3, 2.0, weights)(logits, targets).item() == pytest.approx(expected, abs=1e-6)


def test_soft_f1_exact_value():
    # Two samples, two classes, probabilities given directly through log-probability logits.
    probabilities = torch.tensor([[0.8, 0.2], [0.4, 0.6]])
    targets = torch.tensor([0, 1])
    # class 0: tp 0.8, fp 0.4, fn 0.2 -> 1.6 / 2.2; class 1: tp 0.6, fp 0.2, fn 0.4 -> 1.2 / 1.8
    expected = 1 - (1.6 / 2.2 + 1.2 / 1.8) / 2
    loss = SoftF1Loss(2)(probabilities.log(), targets).item()
    assert loss == pytest.approx(expected, abs=1e-6)


def test_soft_f1_perfect_predictions_near_zero():
    targets = torch.tensor([0, 1, 2, 1])
    logits = torch.nn.functional.one_hot(targets, 3).float() * 50
    assert SoftF1Loss(3)(logits, targets).item() == pytest.approx(0.0, abs=1e-5)


def test_soft_f1_has_gradient():
    logits, targets = random_batch(3)
    logits.requires_grad_(True)
    SoftF1Loss(7)(logits, targets).backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("cross_entropy", CrossEntropyLoss),
        ("focal", FocalLoss),
        ("label_smoothing", LabelSmoothingLoss),
        ("soft_f1", SoftF1Loss),
    ],
)
def test_build_criterion_by_name(name, cls):
    smoothing = 0.1 if name == "label_smoothing" else 0.0
    criterion = build_criterion(LossConfig(name=name, label_smoothing=smoothing), num_classes=5)
    assert isinstance(criterion, cls)
    assert criterion.num_classes == 5


@pytest.mark.parametrize("name", ["cross_entropy", "focal", "label_smoothing", "soft_f1"])
def test_loss_rejects_wrong_class_count(name):
    smoothing = 0.1 if name == "label_smoothing" else 0.0
    criterion = build_criterion(LossConfig(name=name, label_smoothing=smoothing), num_classes=5)
    with pytest.raises(ValueError, match=r"shape \[N, 5\]"):
        criterion(torch.zeros(2, 4), torch.tensor([0, 1]))


def test_balanced_weights_values():
    weights = balanced_class_weights([0, 0, 0, 1], num_classes=2)
    assert weights.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])


def test_balanced_weights_missing_class():
    with pytest.raises(ValueError, match=r"class ids \[2\] have no training samples"):
        balanced_class_weights([0, 1, 1], num_classes=3)


def test_class_weights_list_length_checked():
    config = LossConfig(class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="2 values but the data has 3 classes"):
        resolve_class_weights(config, 3, [0, 1, 2])


def test_class_weights_none():
    assert resolve_class_weights(LossConfig(), 3, [0, 1, 2]) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "label_smoothing"}, "must be > 0"),
        ({"name": "focal", "label_smoothing": 0.1}, "applies to cross_entropy and label_smoothing"),
        ({"class_weights": [1.0, -1.0]}, "must not be negative"),
    ],
)
def test_loss_config_rejects(fields, message):
    with pytest.raises(ValueError, match=message):
        LossConfig(**fields)


def test_summed_head_loss_adds_heads():
    logits_a, targets_a = random_batch(0, num_classes=3)
    logits_b, targets_b = random_batch(1, num_classes=2)
    criteria = {"mask": CrossEntropyLoss(3), "gender": CrossEntropyLoss(2)}
    total = SummedHeadLoss(criteria)(
        {"mask": logits_a, "gender": logits_b}, {"mask": targets_a, "gender": targets_b}
    )
    expected = criteria["mask"](logits_a, targets_a) + criteria["gender"](logits_b, targets_b)
    assert total.item() == pytest.approx(expected.item(), abs=1e-6)


def test_summed_head_loss_missing_head():
    logits, targets = random_batch(0, num_classes=3)
    criterion = SummedHeadLoss({"mask": CrossEntropyLoss(3), "age": CrossEntropyLoss(3)})
    with pytest.raises(ValueError, match=r"lack heads \['age'\]"):
        criterion({"mask": logits}, {"mask": targets, "age": targets})
