"""A criterion for models with several heads: the sum of one loss per head."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn


class SummedHeadLoss(nn.Module):
    """Sum ``criteria[name](logits[name], targets[name])`` over the heads.

    ``logits`` and ``targets`` are dicts keyed by head name. A head missing from either is an error,
    because skipping it would silently leave that head untrained.
    """

    def __init__(self, criteria: Mapping[str, nn.Module]):
        super().__init__()
        if not criteria:
            raise ValueError("SummedHeadLoss needs at least one head")
        self.criteria = nn.ModuleDict(dict(criteria))

    def forward(
        self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        expected = set(self.criteria)
        for name, given in (("logits", logits), ("targets", targets)):
            missing = expected - set(given)
            if missing:
                raise ValueError(f"{name} lack heads {sorted(missing)}; expected heads {sorted(expected)}")
        losses = [criterion(logits[name], targets[name]) for name, criterion in self.criteria.items()]
        return torch.stack(losses).sum()
