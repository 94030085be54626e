import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import TINY_OVERRIDES
from sklearn.metrics import confusion_matrix, f1_score
from torch.utils.data import DataLoader, TensorDataset

from training.config import OptimizerConfig, SchedulerConfig, load_config
from training.distributed import ShardSampler, WeightedEpochSampler, class_balanced_weights
from training.engine import LoopOptions, evaluate, flip_tta, train_one_epoch
from training.metrics import EpochMetrics, combine_probabilities, combine_targets
from training.optim import create_optimizer, create_scheduler, scheduler_interval
from training.train import monitor_direction
from training.trainer import resolve_amp

CPU = torch.device("cpu")


def linear_problem(samples: int = 12, features: int = 4, classes: int = 3):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(samples, features, generator=generator)
    targets = torch.randint(0, classes, (samples,), generator=generator)
    model = nn.Linear(features, classes)
    with torch.no_grad():
        model.weight.copy_(torch.randn(classes, features, generator=generator))
        model.bias.zero_()
    return model, inputs, targets


def sgd_step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, lr: float) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(inputs), targets).backward()
    optimizer.step()


def train_accumulated(model, inputs, targets, batch_size: int, accumulation_steps: int, lr: float):
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=batch_size, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    options = LoopOptions(accumulation_steps=accumulation_steps, show_progress=False)
    return train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, 1, options)


def test_accumulation_equals_full_batch_step():
    model, inputs, targets = linear_problem()
    reference = linear_problem()[0]
    result = train_accumulated(model, inputs, targets, batch_size=3, accumulation_steps=4, lr=0.5)
    sgd_step(reference, inputs, targets, lr=0.5)
    assert result.steps == 1
    assert torch.allclose(model.weight, reference.weight, atol=1e-6)
    assert torch.allclose(model.bias, reference.bias, atol=1e-6)


def test_accumulation_leftover_group_steps():
    # Four micro-batches of 3 with accumulation_steps=3: a group of 3 micro-batches, then one of 1.
    model, inputs, targets = linear_problem()
    reference = linear_problem()[0]
    result = train_accumulated(model, inputs, targets, batch_size=3, accumulation_steps=3, lr=0.5)
    sgd_step(reference, inputs[:9], targets[:9], lr=0.5)
    sgd_step(reference, inputs[9:], targets[9:], lr=0.5)
    assert result.steps == 2
    assert torch.allclose(model.weight, reference.weight, atol=1e-6)


def test_accumulation_differs_from_unscaled_sum():
    # Guards the test above: without dividing by the group size the update would be 3 times larger.
    model, inputs, targets = linear_problem()
    reference = linear_problem()[0]
    train_accumulated(model, inputs, targets, batch_size=3, accumulation_steps=3, lr=0.5)
    sgd_step(reference, inputs[:9], targets[:9], lr=1.5)
    sgd_step(reference, inputs[9:], targets[9:], lr=0.5)
    assert not torch.allclose(model.weight, reference.weight, atol=1e-4)


def test_epoch_loss_is_sample_mean():
    model, inputs, targets = linear_problem(samples=10)
    expected = nn.functional.cross_entropy(model(inputs), targets).item()
    result = train_accumulated(model, inputs, targets, batch_size=4, accumulation_steps=100, lr=0.0001)
    assert result.loss == pytest.approx(expected, abs=1e-5)
    assert result.images == 10


def test_non_finite_loss_names_epoch_and_step():
    model, inputs, targets = linear_problem()
    inputs[7, 0] = float("nan")  # micro-batch 3 of 4 (batch_size 3), so optimizer step 2
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=3, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    options = LoopOptions(accumulation_steps=2, show_progress=False)
    with pytest.raises(FloatingPointError, match=r"epoch 4, step 2 \(micro-batch 3 of 4\)"):
        train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, 4, options)


def test_limit_batches_stops_early():
    model, inputs, targets = linear_problem()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=3, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    options = LoopOptions(limit_batches=2, show_progress=False)
    result = train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, 1, options)
    assert result.images == 6
    assert result.steps == 2


def test_per_step_scheduler_stepped_by_loop():
    model, inputs, targets = linear_problem()
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=2, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = create_scheduler(optimizer, SchedulerConfig(name="onecycle"), epochs=1, steps_per_epoch=3)
    options = LoopOptions(accumulation_steps=2, show_progress=False)
    train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, loader, CPU, 1, options, lr_scheduler=scheduler)
    assert scheduler.last_epoch == 3


def make_optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=lr)


def epoch_lrs(scheduler, optimizer, epochs: int) -> list[float]:
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_steplr_halves_each_epoch():
    optimizer = make_optimizer()
    scheduler = create_scheduler(optimizer, SchedulerConfig(name="steplr", step_size=2, gamma=0.5), 6, 10)
    assert epoch_lrs(scheduler, optimizer, 6) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


def test_multisteplr_milestones():
    optimizer = make_optimizer()
    config = SchedulerConfig(name="multisteplr", milestones=[1, 3], gamma=0.1)
    scheduler = create_scheduler(optimizer, config, 4, 10)
    assert epoch_lrs(scheduler, optimizer, 4) == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_cosine_warmup_then_decay():
    optimizer = make_optimizer()
    config = SchedulerConfig(name="cosine", warmup_epochs=1, min_lr=0.001)
    scheduler = create_scheduler(optimizer, config, epochs=3, steps_per_epoch=4)
    lrs = epoch_lrs(scheduler, optimizer, 12)
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[4] == pytest.approx(0.1)
    assert all(later < earlier for earlier, later in zip(lrs[4:], lrs[5:], strict=False))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)


def test_onecycle_peaks_at_pct_start():
    optimizer = make_optimizer()
    config = SchedulerConfig(name="onecycle", pct_start=0.25, div_factor=10.0)
    scheduler = create_scheduler(optimizer, config, epochs=2, steps_per_epoch=10)
    lrs = epoch_lrs(scheduler, optimizer, 20)
    assert lrs[0] == pytest.approx(0.01)
    assert max(lrs) == pytest.approx(0.1)
    assert lrs.index(max(lrs)) == 4
    assert lrs[-1] < lrs[0]


@pytest.mark.parametrize(
    ("name", "interval"),
    [
        ("none", "epoch"),
        ("steplr", "epoch"),
        ("multisteplr", "epoch"),
        ("cosine", "step"),
        ("onecycle", "step"),
    ],
)
def test_scheduler_interval(name, interval):
    assert scheduler_interval(SchedulerConfig(name=name)) == interval


def test_scheduler_none():
    assert create_scheduler(make_optimizer(), SchedulerConfig(name="none"), 3, 5) is None


def test_cosine_warmup_too_long():
    with pytest.raises(ValueError, match=r"warmup_epochs \(3.0\) must be less than train.epochs \(3\)"):
        create_scheduler(make_optimizer(), SchedulerConfig(name="cosine", warmup_epochs=3), 3, 5)


def test_warmup_needs_cosine():
    with pytest.raises(ValueError, match="applies to cosine only"):
        SchedulerConfig(name="steplr", warmup_epochs=1)


@pytest.mark.parametrize(
    ("config", "cls", "expected"),
    [
        (OptimizerConfig(name="sgd", momentum=0.8, nesterov=True, weight_decay=0.01), torch.optim.SGD,
         {"momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
        (OptimizerConfig(name="adam", weight_decay=0.02), torch.optim.Adam, {"weight_decay": 0.02}),
        (OptimizerConfig(name="adamw", weight_decay=0.05), torch.optim.AdamW, {"weight_decay": 0.05}),
    ],
)  # fmt: skip
def test_optimizer_settings(config, cls, expected):
    optimizer = create_optimizer(nn.Linear(2, 2).parameters(), config)
    assert type(optimizer) is cls
    for key, value in expected.items():
        assert optimizer.param_groups[0][key] == value


def test_nesterov_needs_sgd():
    with pytest.raises(ValueError, match="nesterov needs optimizer.name sgd"):
        OptimizerConfig(name="adam", nesterov=True)


def test_amp_cpu_runs_fp32():
    assert resolve_amp("bf16", CPU) is None


@pytest.mark.parametrize(("amp", "dtype"), [("off", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_cuda_dtype(monkeypatch, amp, dtype):
    # No GPU here: only the bf16 capability query is replaced.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_amp(amp, torch.device("cuda")) == dtype


def test_epoch_metrics_not_batch_averaged():
    targets = [torch.tensor([0, 0, 0, 1]), torch.tensor([1, 1])]
    predictions = [torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0])]
    metrics = EpochMetrics(2)
    for batch_targets, batch_predictions in zip(targets, predictions, strict=True):
        metrics.update(nn.functional.one_hot(batch_predictions, 2).float() * 4, batch_targets)
    result = metrics.compute()
    all_targets, all_predictions = torch.cat(targets), torch.cat(predictions)
    expected_f1 = f1_score(all_targets, all_predictions, average="macro")
    batch_mean = sum(f1_score(t, p, average="macro") for t, p in zip(targets, predictions, strict=True)) / 2
    assert result.scalars["macro_f1"] == pytest.approx(expected_f1, abs=1e-6)
    assert result.scalars["macro_f1"] != pytest.approx(batch_mean, abs=1e-3)
    assert result.scalars["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert result.per_class_f1[""] == pytest.approx(
        list(f1_score(all_targets, all_predictions, average=None))
    )
    assert result.confusion_matrices[""] == confusion_matrix(all_targets, all_predictions).tolist()


def test_epoch_metrics_names():
    assert EpochMetrics(3).names() == [
        "accuracy", "macro_f1", "macro_precision", "macro_recall", "macro_auroc",
    ]  # fmt: skip


def test_combined_targets_mixed_radix():
    mask, gender, age = torch.tensor([2, 1]), torch.tensor([1, 0]), torch.tensor([2, 1])
    assert combine_targets([mask, gender, age], [3, 2, 3]).tolist() == [2 * 6 + 1 * 3 + 2, 1 * 6 + 0 + 1]


def test_combined_probabilities_product():
    a = torch.tensor([[0.2, 0.8]])
    b = torch.tensor([[0.1, 0.3, 0.6]])
    joint = combine_probabilities([a, b])
    assert joint[0].tolist() == pytest.approx([0.02, 0.06, 0.12, 0.08, 0.24, 0.48])


def test_head_metrics_per_head_and_combined():
    logits = {"mask": torch.tensor([[5.0, 0, 0], [0, 0, 5.0]]), "gender": torch.tensor([[5.0, 0], [5.0, 0]])}
    targets = {"mask": torch.tensor([0, 2]), "gender": torch.tensor([0, 1])}
    metrics = EpochMetrics({"mask": 3, "gender": 2})
    metrics.update(logits, targets)
    scalars = metrics.compute().scalars
    assert scalars["mask_accuracy"] == pytest.approx(1.0)
    assert scalars["gender_accuracy"] == pytest.approx(0.5)
    assert scalars["accuracy"] == pytest.approx(0.5)
    assert "mask_macro_f1" in metrics.names()


def test_monitor_direction():
    metrics = EpochMetrics(3)
    assert monitor_direction("loss", metrics) == -1.0
    assert monitor_direction("macro_f1", metrics) == 1.0


def test_monitor_unknown_rejected():
    with pytest.raises(
        ValueError, match="train.monitor 'f2' is not a validation metric; allowed: loss, accuracy"
    ):
        monitor_direction("f2", EpochMetrics(3))


def test_weighted_sampler_balances_classes():
    targets = [0] * 90 + [1] * 10
    sampler = WeightedEpochSampler(class_balanced_weights(targets), seed=0)
    drawn = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        drawn += [targets[index] for index in sampler]
    share = sum(drawn) / len(drawn)
    assert 0.4 < share < 0.6


def test_weighted_sampler_repeatable_per_epoch():
    sampler = WeightedEpochSampler([1.0] * 20, seed=3)
    sampler.set_epoch(2)
    first = list(sampler)
    sampler.set_epoch(5)
    other = list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) == first
    assert other != first


def test_weighted_sampler_shards_processes():
    shards = [list(WeightedEpochSampler([1.0] * 10, seed=1, rank=r, world_size=2)) for r in range(2)]
    whole = list(WeightedEpochSampler([1.0] * 10, seed=1, rank=0, world_size=1))
    assert [len(shard) for shard in shards] == [5, 5]
    assert sorted(shards[0] + shards[1]) == sorted(whole)


def test_shard_sampler_no_padding():
    shards = [list(ShardSampler(7, rank, 3)) for rank in range(3)]
    assert sorted(index for shard in shards for index in shard) == list(range(7))


class MirrorSensitive(nn.Module):
    """Logits from the left and right halves of the image, so flipping swaps them."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        half = images.shape[-1] // 2
        return torch.stack([images[..., :half].mean((1, 2, 3)), images[..., half:].mean((1, 2, 3))], 1)


def test_flip_tta_averages_probabilities():
    images = torch.zeros(1, 1, 2, 4)
    images[..., :2] = 2.0
    model = MirrorSensitive()
    plain = model(images).softmax(1)
    flipped = model(images.flip(-1)).softmax(1)
    assert flip_tta(model, images).exp() == pytest.approx(((plain + flipped) / 2), abs=1e-6)


def test_evaluate_tta_changes_predictions():
    images = torch.zeros(4, 1, 2, 4)
    images[:, :, :, :2] = 2.0
    loader = DataLoader(TensorDataset(images, torch.tensor([0, 0, 0, 0])), batch_size=2)
    model = MirrorSensitive()
    plain, _ = evaluate(model, nn.CrossEntropyLoss(), loader, CPU, EpochMetrics(2))
    averaged, _ = evaluate(model, nn.CrossEntropyLoss(), loader, CPU, EpochMetrics(2), tta="hflip")
    assert plain["loss"] < 0.2
    assert averaged["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_evaluate_no_grad_eval_mode():
    seen = {}

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, inputs):
            seen["training"] = self.training
            seen["grad"] = torch.is_grad_enabled()
            return self.linear(inputs)

    loader = DataLoader(TensorDataset(torch.randn(4, 4), torch.tensor([0, 1, 0, 1])), batch_size=2)
    evaluate(Probe(), nn.CrossEntropyLoss(), loader, CPU, EpochMetrics(2))
    assert seen == {"training": False, "grad": False}


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory) -> Path:
    """Three short epochs with StepLR halving each epoch, focal loss and the weighted sampler."""
    from training.train import train

    overrides = [
        *TINY_OVERRIDES,
        f"train.output_dir={tmp_path_factory.mktemp('runs')}",
        "train.epochs=3",
        "train.limit_train_batches=4",
        "data.batch_size=32",
        "lr_scheduler.name=steplr",
        "lr_scheduler.step_size=1",
        "lr_scheduler.gamma=0.5",
        "loss.name=focal",
        "loss.class_weights=balanced",
        "train.sampler=weighted",
        "train.monitor=loss",
    ]
    return train(load_config(Path("configs/digits.yaml"), overrides))


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("name", ["curves.png", "best.pt", "last.pt", "config.yaml", "train.log"])
def test_run_writes_file(loop_run, name):
    assert (loop_run / name).is_file()


def test_run_writes_tensorboard_events(loop_run):
    assert list((loop_run / "tensorboard").glob("events.out.tfevents.*"))


def test_run_logs_lr_every_epoch(loop_run):
    assert [float(row["lr"]) for row in read_rows(loop_run)] == pytest.approx([0.002, 0.001, 0.0005])


def test_run_logs_per_class_f1(loop_run):
    row = read_rows(loop_run)[-1]
    assert [f"val_f1_{digit}" in row for digit in range(10)] == [True] * 10


def test_run_logs_data_wait_share(loop_run):
    assert all(0.0 <= float(row["data_wait_share"]) <= 1.0 for row in read_rows(loop_run))


def test_best_follows_monitor(loop_run):
    from training.checkpoint import load_checkpoint

    rows = read_rows(loop_run)
    best_loss = min(float(row["val_loss"]) for row in rows)
    state = load_checkpoint(loop_run / "best.pt")
    assert state["metrics"]["loss"] == pytest.approx(best_loss, rel=1e-9)
    assert state["monitor"] == "loss"
