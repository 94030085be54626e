import pytest
import timm
import torch

from training.config import ModelConfig
from training.models import create_model


@pytest.mark.parametrize(("in_chans", "num_classes"), [(1, 10), (3, 18)])
def test_model_output_shape(in_chans, num_classes):
    model = create_model(ModelConfig(name="test_resnet"), num_classes, in_chans).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_chans, 32, 32))
    assert logits.shape == (2, num_classes)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown timm model 'resnet_does_not_exist'"):
        create_model(ModelConfig(name="resnet_does_not_exist"), 10, 1)


def test_missing_pretrained_file(tmp_path):
    config = ModelConfig(name="test_resnet", pretrained=tmp_path / "absent.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        create_model(config, 10, 1)


def test_pretrained_loaded_from_local_file(tmp_path):
    source = timm.create_model("test_resnet", num_classes=1000)
    weights = tmp_path / "weights.pth"
    torch.save(source.state_dict(), weights)
    model = create_model(ModelConfig(name="test_resnet", pretrained=weights), 10, 3)
    stem = next(name for name, _ in model.named_parameters())
    assert torch.equal(model.state_dict()[stem], source.state_dict()[stem])
    assert model.get_classifier().out_features == 10
