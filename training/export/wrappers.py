"""Modules that put the input conversion and the output layout inside the exported graph."""

from __future__ import annotations

import torch
import torch.nn as nn

from serving.manifest import HeadOutput, OutputContract
from training.data.labels import GENDER_NAMES, MASK_NAMES, age_group_names
from training.models import ThreeHeadModel, combined_logits

# Graph output names of a three-head model, after the combined ``logits``.
HEAD_OUTPUT_NAMES = {"mask": "mask_logits", "gender": "gender_logits", "age_group": "age_logits"}
AGE_OUTPUT_NAME = "age"
COMBINATION_RULE = (
    "logits[:, mask * 6 + gender * 3 + age_group] = log_softmax(mask_logits)[mask] + "
    "log_softmax(gender_logits)[gender] + log_softmax(age_scores)[age_group], so softmax(logits) is the "
    "product of the head probabilities and argmax(logits) is the class decoded from each head's argmax."
)
CLASSIFICATION_AGE_RULE = "age_scores is age_logits."
REGRESSION_AGE_RULE = (
    "age_scores[g] is minus the distance in years from the regressed age to age group g, whose bounds "
    "are age_cutoffs minus 0.5 years. The group that contains the age scores 0, the highest."
)


class UInt8Input(nn.Module):
    """Wrap a model so it takes uint8 ``[N, H, W, C]`` and normalizes inside the graph."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", mean_t / std_t)

    # No return annotation: the wrapped model returns a tensor, or a tuple for three heads, and
    # TorchScript infers which.
    def forward(self, images: torch.Tensor):
        # (x / 255 - mean) / std, folded into one multiply and one subtract.
        x = images.permute(0, 3, 1, 2).float() * self.scale - self.shift
        return self.model(x)


class HeadOutputs(nn.Module):
    """Turn a three-head model's dict into graph outputs: ``logits`` ``[N, 18]`` first, then each head.

    ``logits`` is ``training.models.combined_logits`` (``COMBINATION_RULE``), so a service that reads
    only the first output gets the 18 classes. The head outputs follow in the order of
    ``output_names(model)``.
    """

    def __init__(self, model: ThreeHeadModel):
        super().__init__()
        self.model = model
        self.regression = model.regression

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = self.model(images)
        age = outputs["age"] if self.regression else outputs["age_group"]
        return combined_logits(outputs), outputs["mask"], outputs["gender"], age


def output_names(model: nn.Module) -> list[str]:
    """Return the graph output names of ``model``: ``logits`` alone, or with one per head."""
    if not isinstance(model, ThreeHeadModel):
        return ["logits"]
    age = AGE_OUTPUT_NAME if model.regression else HEAD_OUTPUT_NAMES["age_group"]
    return ["logits", HEAD_OUTPUT_NAMES["mask"], HEAD_OUTPUT_NAMES["gender"], age]


def export_module(model: nn.Module, input_format: str, mean: list[float], std: list[float]) -> nn.Module:
    """Return the module to export, in eval mode: output layout inside, input conversion outside."""
    core = HeadOutputs(model) if isinstance(model, ThreeHeadModel) else model
    if input_format == "uint8_nhwc":
        core = UInt8Input(core, mean, std)
    return core.eval()


def output_contract(model: nn.Module, class_names: list[str], age_cutoffs: tuple[int, int]) -> OutputContract:
    """Describe the graph outputs of ``model`` for the manifest."""
    if not isinstance(model, ThreeHeadModel):
        return OutputContract()
    ages = list(age_group_names(age_cutoffs))
    heads = [
        HeadOutput(
            name="mask_logits", head="mask", kind="logits", shape=["batch", 3], class_names=list(MASK_NAMES)
        ),
        HeadOutput(
            name="gender_logits",
            head="gender",
            kind="logits",
            shape=["batch", 2],
            class_names=list(GENDER_NAMES),
        ),
    ]
    age_rule = REGRESSION_AGE_RULE if model.regression else CLASSIFICATION_AGE_RULE
    if model.regression:
        heads.append(
            HeadOutput(name=AGE_OUTPUT_NAME, head="age", kind="regression", shape=["batch"], unit="years")
        )
    else:
        heads.append(
            HeadOutput(
                name="age_logits", head="age_group", kind="logits", shape=["batch", 3], class_names=ages
            )
        )
    return OutputContract(
        heads="three",
        combination=f"{COMBINATION_RULE} {age_rule}",
        head_outputs=heads,
        age_cutoffs=list(age_cutoffs) if model.regression else None,
    )
