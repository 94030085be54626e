from pathlib import Path

import pytest

from training.config import ConfigError, load_config, parse_override


def test_digits_config_loads():
    config = load_config(Path("configs/digits.yaml"))
    assert config.data.dataset == "digits"
    assert config.model.name == "resnet18"


def test_override_sets_nested_value():
    config = load_config(Path("configs/digits.yaml"), ["optimizer.lr=0.01", "train.epochs=3"])
    assert config.optimizer.lr == 0.01
    assert config.train.epochs == 3


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("optimizer.learning_rate=0.1", "optimizer.learning_rate"),
        ("train.epochs=zero", "train.epochs"),
        ("train.epochs=0", "train.epochs"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("optimizer.name=lamb", "optimizer.name"),
    ],
)
def test_invalid_value_is_named(override, named):
    with pytest.raises(ConfigError) as info:
        load_config(Path("configs/digits.yaml"), [override])
    assert named in str(info.value)


def test_override_without_equals_rejected():
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("optimizer.lr")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_folder_dataset_needs_root():
    with pytest.raises(ConfigError, match="data.root"):
        load_config(None, ["data.dataset=folder"])


def test_mean_length_must_match_color_mode():
    with pytest.raises(ConfigError, match="3 values"):
        load_config(None, ["data.color_mode=RGB"])
