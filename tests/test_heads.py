import csv
import itertools
import json

import pytest
import torch
from mask_tree import EVAL_IDS, TINY_MASK_OVERRIDES, make_competition_tree

from training.__main__ import main
from training.checkpoint import load_checkpoint
from training.config import ConfigError, LossConfig, ModelConfig, load_config
from training.data.labels import age_to_group, encode_class
from training.evaluate import evaluate_checkpoint
from training.losses import AgeRegressionLoss, build_heads_criterion
from training.metrics import EpochMetrics, build_epoch_metrics
from training.models import (
    ThreeHeadModel,
    age_group_scores,
    combined_logits,
    create_model,
    decode_classes,
)
from training.trainer import target_mode

AGE_HEADS = ["classification", "regression"]
ALL_COMBINATIONS = list(itertools.product(range(3), range(2), range(3)))


def one_hot_outputs(mask: int, gender: int, age_group: int) -> dict[str, torch.Tensor]:
    return {
        "mask": torch.nn.functional.one_hot(torch.tensor([mask]), 3).float() * 5,
        "gender": torch.nn.functional.one_hot(torch.tensor([gender]), 2).float() * 5,
        "age_group": torch.nn.functional.one_hot(torch.tensor([age_group]), 3).float() * 5,
    }


@pytest.fixture(scope="module", params=AGE_HEADS)
def heads_run(request, tmp_path_factory):
    """Train a three-head model through the command line; return (tree root, best.pt, age head)."""
    root = tmp_path_factory.mktemp("competition")
    train_dir = make_competition_tree(root)
    runs = tmp_path_factory.mktemp("runs")
    overrides = [
        f"data.root={train_dir}",
        *TINY_MASK_OVERRIDES,
        f"train.output_dir={runs}",
        "model.heads=three",
        f"model.age_head={request.param}",
    ]
    argv = ["train", "--config", "configs/mask.yaml"]
    for override in overrides:
        argv += ["--set", override]
    assert main(argv) == 0
    (run_dir,) = (runs / "mask").iterdir()
    return root, run_dir / "best.pt", request.param


@pytest.mark.parametrize(("mask", "gender", "age_group"), ALL_COMBINATIONS)
def test_decode_matches_label_formula(mask, gender, age_group):
    outputs = one_hot_outputs(mask, gender, age_group)
    assert decode_classes(outputs).item() == encode_class(mask, gender, age_group)


@pytest.mark.parametrize(("mask", "gender", "age_group"), ALL_COMBINATIONS)
def test_combined_logits_argmax_matches_formula(mask, gender, age_group):
    logits = combined_logits(one_hot_outputs(mask, gender, age_group))
    assert logits.argmax(dim=1).item() == encode_class(mask, gender, age_group)


def test_combined_logits_softmax_is_product():
    generator = torch.Generator().manual_seed(0)
    outputs = {
        "mask": torch.randn(4, 3, generator=generator),
        "gender": torch.randn(4, 2, generator=generator),
        "age_group": torch.randn(4, 3, generator=generator),
    }
    joint = combined_logits(outputs).softmax(dim=1)
    for mask, gender, age_group in ALL_COMBINATIONS:
        expected = (
            outputs["mask"].softmax(1)[:, mask]
            * outputs["gender"].softmax(1)[:, gender]
            * outputs["age_group"].softmax(1)[:, age_group]
        )
        column = joint[:, encode_class(mask, gender, age_group)]
        assert torch.allclose(column, expected, atol=1e-6)


def test_decode_random_heads_matches_argmax():
    generator = torch.Generator().manual_seed(1)
    outputs = {
        "mask": torch.randn(64, 3, generator=generator),
        "gender": torch.randn(64, 2, generator=generator),
        "age_group": torch.randn(64, 3, generator=generator),
    }
    assert torch.equal(decode_classes(outputs), combined_logits(outputs).argmax(dim=1))


@pytest.mark.parametrize("cutoffs", [(30, 60), (30, 58)])
@pytest.mark.parametrize("age", [0, 18, 29, 30, 45, 57, 58, 59, 60, 61, 90])
def test_regressed_age_group_matches_labels(age, cutoffs):
    boundaries = (cutoffs[0] - 0.5, cutoffs[1] - 0.5)
    scores = age_group_scores(torch.tensor([float(age)]), boundaries)
    assert scores.argmax(dim=1).item() == age_to_group(age, cutoffs)


@pytest.mark.parametrize(("age", "group"), [(29.4, 0), (29.6, 1), (59.4, 1), (59.6, 2)])
def test_regressed_age_rounds_to_year(age, group):
    scores = age_group_scores(torch.tensor([age]), (29.5, 59.5))
    assert scores.argmax(dim=1).item() == group


@pytest.mark.parametrize("age_head", AGE_HEADS)
def test_model_output_shapes(age_head):
    model = create_model(ModelConfig(name="test_resnet", heads="three", age_head=age_head), 18, 3).eval()
    outputs = model(torch.rand(2, 3, 16, 16))
    assert outputs["mask"].shape == (2, 3)
    assert outputs["gender"].shape == (2, 2)
    assert outputs["age_group"].shape == (2, 3)
    assert ("age" in outputs) == (age_head == "regression")


def test_model_regression_age_in_years():
    model = create_model(ModelConfig(name="test_resnet", heads="three", age_head="regression"), 18, 3)
    assert isinstance(model, ThreeHeadModel)
    torch.nn.init.zeros_(model.age_head.weight)
    model.init_age_bias(42.0)
    outputs = model.eval()(torch.rand(2, 3, 16, 16))
    assert outputs["age"].tolist() == pytest.approx([42.0, 42.0])
    assert outputs["age_group"].argmax(dim=1).tolist() == [1, 1]


def test_model_three_heads_needs_18_classes():
    with pytest.raises(ValueError, match="decodes to the 18 mask-competition classes, but the data has 10"):
        create_model(ModelConfig(name="test_resnet", heads="three"), 10, 1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.age_head=regression"], "apply to model.heads three"),
        (["model.head_weights={age: 0.5}"], "apply to model.heads three"),
        (["model.heads=three", "model.head_weights={age: -1}"], "must not be negative"),
        (["model.heads=two"], "model.heads"),
        (["model.heads=three", "model.age_head=ordinal"], "model.age_head"),
    ],
)
def test_config_rejects_heads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_three_heads_needs_mask_data():
    config = load_config("configs/digits.yaml", ["model.heads=three"])
    with pytest.raises(ConfigError, match="only data.dataset mask has; got data.dataset 'digits'"):
        target_mode(config)


@pytest.mark.parametrize(("kind", "expected"), [("mse", (1.0 + 9.0) / 2), ("smooth_l1", (0.5 + 2.5) / 2)])
def test_age_loss_value(kind, expected):
    loss = AgeRegressionLoss(kind)(torch.tensor([31.0, 27.0]), torch.tensor([30, 30]))
    assert loss.item() == pytest.approx(expected)


def test_age_loss_rejects_shape():
    with pytest.raises(ValueError, match=r"shape \[N\], got \[2, 1\] and \[2\]"):
        AgeRegressionLoss()(torch.zeros(2, 1), torch.zeros(2))


def test_heads_criterion_weights_age():
    model = ModelConfig(heads="three", age_head="regression", head_weights={"age": 0.5, "mask": 2.0})
    criterion = build_heads_criterion(LossConfig(), model)
    assert criterion.weights == {"mask": 2.0, "gender": 1.0, "age": 0.5}


def test_heads_criterion_rejects_weight_list():
    with pytest.raises(ValueError, match="has no meaning for three heads"):
        build_heads_criterion(LossConfig(class_weights=[1.0] * 18), ModelConfig(heads="three"))


def test_regression_metrics_mae_mse():
    metrics = EpochMetrics({"mask": 3}, regression=["age"])
    logits = {"mask": torch.tensor([[5.0, 0, 0], [5.0, 0, 0]]), "age": torch.tensor([31.0, 27.0])}
    targets = {"mask": torch.tensor([0, 0]), "age": torch.tensor([30, 30])}
    metrics.update(logits, targets)
    scalars = metrics.compute().scalars
    assert scalars["age_mae"] == pytest.approx(2.0)
    assert scalars["age_mse"] == pytest.approx(5.0)
    assert "age_mae" in metrics.names()


def test_epoch_metrics_for_regression_heads():
    metrics = build_epoch_metrics(ModelConfig(heads="three", age_head="regression"), 18)
    names = metrics.names()
    assert "macro_f1" in names
    assert "age_group_accuracy" in names
    assert "age_mse" in names


def test_train_heads_metrics_in_checkpoint(heads_run):
    _, checkpoint, age_head = heads_run
    metrics = load_checkpoint(checkpoint)["metrics"]
    for name in ("loss", "accuracy", "macro_f1", "mask_accuracy", "gender_accuracy", "age_group_accuracy"):
        assert name in metrics
    assert ("age_mae" in metrics) == (age_head == "regression")
    assert ("age_mse" in metrics) == (age_head == "regression")


def test_evaluate_heads_per_head_and_combined(heads_run, tmp_path):
    _, checkpoint, age_head = heads_run
    report = evaluate_checkpoint(checkpoint, out=tmp_path)
    assert report.images == 14
    assert len(report.per_class_f1) == 18
    assert len(report.confusion_matrix) == 18
    assert 0.0 <= report.scalars["mask_accuracy"] <= 1.0
    if age_head == "regression":
        assert report.scalars["age_mae"] >= 0.0
        assert report.scalars["age_mse"] >= report.scalars["age_mae"] ** 2 - 1e-6
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert "gender_macro_f1" in payload["metrics"]


def test_evaluate_heads_rejects_folder(heads_run, tmp_path):
    _, checkpoint, _ = heads_run
    with pytest.raises(ValueError, match="a three-head model needs per-attribute labels"):
        evaluate_checkpoint(checkpoint, data=str(tmp_path), out=tmp_path)


def test_evaluate_heads_command(heads_run, tmp_path, capsys):
    _, checkpoint, _ = heads_run
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 0
    assert "age_group_accuracy" in capsys.readouterr().out


def test_predict_heads_submission(heads_run, tmp_path):
    root, checkpoint, _ = heads_run
    out = tmp_path / "submission.csv"
    argv = ["predict", "--checkpoint", str(checkpoint), "--info", str(root / "eval" / "info.csv")]
    assert main([*argv, "--out", str(out)]) == 0
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["ImageID", "ans"]
    assert [row[0] for row in rows[1:]] == list(EVAL_IDS)
    assert all(0 <= int(row[1]) < 18 for row in rows[1:])


def test_predict_heads_matches_decoded(heads_run):
    from training.data.datasets import ImageDataset, Sample
    from training.data.transforms import build_eval_transform
    from training.export import load_model_from_checkpoint
    from training.predict import list_images, predict_files

    root, checkpoint, _ = heads_run
    paths = list_images(root / "eval" / "images")
    class_ids, _, _ = predict_files(checkpoint, paths)
    model, config, _, _ = load_model_from_checkpoint(checkpoint)
    dataset = ImageDataset([Sample(target=-1, path=p) for p in paths], build_eval_transform(config.data))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        assert decode_classes(model(images)).tolist() == class_ids
