"""TorchScript artifact: scripted where possible, traced otherwise."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

# torch 2.9+ marks torch.jit as deprecated with a FutureWarning. TorchScript is still the format that
# C++ and Triton's PyTorch backend load, so it stays an artifact.
warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)


class TracerWarningError(RuntimeError):
    """Raised when tracing emitted warnings and they were not allowed."""


def export_torchscript(
    wrapper: nn.Module, example: torch.Tensor, path: Path, allow_tracer_warnings: bool = False
) -> Literal["script", "trace"]:
    """Save the wrapper as TorchScript and return how it was converted.

    Tracing records one execution path, so a tracer warning means the saved graph may behave
    differently on other inputs (a Python branch on a tensor value, for example). That is an error
    unless ``allow_tracer_warnings`` is set. The trace is checked at two batch sizes.
    """
    try:
        module = torch.jit.script(wrapper)
        module.save(str(path))
        return "script"
    except Exception as exc:  # scripting rejects many timm models; tracing is the documented fallback
        logger.info("torch.jit.script failed (%s: %s); tracing instead", type(exc).__name__, exc)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category=torch.jit.TracerWarning)
        module = torch.jit.trace(wrapper, example, check_inputs=[(example[:1],), (example,)])
    tracer_warnings = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if tracer_warnings and not allow_tracer_warnings:
        shown = "; ".join(dict.fromkeys(tracer_warnings))
        raise TracerWarningError(
            f"tracing emitted {len(tracer_warnings)} warnings: {shown}. The traced graph may not "
            "match the model on other inputs; pass --allow-tracer-warnings to export anyway"
        )
    for message in dict.fromkeys(tracer_warnings):
        logger.warning("tracer warning allowed: %s", message)
    module.save(str(path))
    return "trace"
