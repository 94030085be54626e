"""Validation split: stratified by class, without replacement, reproducible by seed.

Samples without a group are split one by one. Samples with a group (the mask data's person folders)
are split by group, so every image of a person lands on the same side.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from sklearn.model_selection import train_test_split

from training.data.datasets import Sample


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Return ``(train, val)`` samples, each in the input order."""
    grouped = sum(sample.group is not None for sample in samples)
    if grouped == 0:
        return split_ungrouped(samples, val_fraction, seed)
    if grouped != len(samples):
        raise ValueError(
            f"{grouped} of {len(samples)} samples have a group; either every sample has one or none"
        )
    return split_by_group(samples, val_fraction, seed)


def split_ungrouped(
    samples: list[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    targets = [sample.target for sample in samples]
    train_idx, val_idx = train_test_split(
        list(range(len(samples))), test_size=val_fraction, stratify=targets, random_state=seed
    )
    return [samples[i] for i in sorted(train_idx)], [samples[i] for i in sorted(val_idx)]


def allocate(counts: list[int], num_val: int, rng: np.random.Generator) -> list[int]:
    """Split ``num_val`` over strata in proportion to ``counts`` by the largest-remainder rule.

    Each stratum gets the floor of its share. The units left over go to the strata with the largest
    fractional parts, and ties are broken in a random order drawn from ``rng``.
    """
    total = sum(counts)
    shares = [count * num_val / total for count in counts]
    quotas = [math.floor(share) for share in shares]
    tie_order = rng.permutation(len(counts))
    ranked = sorted(range(len(counts)), key=lambda i: (quotas[i] - shares[i], tie_order[i]))
    for i in ranked[: num_val - sum(quotas)]:
        quotas[i] += 1
    return quotas


def split_by_group(
    samples: list[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split whole groups, stratified by the set of classes among each group's samples.

    For the mask data that set is a person's three mask classes, which share gender and age group,
    so the 18 classes keep their proportions. The validation side gets ``round(val_fraction *
    groups)`` groups, at least one and at most all but one.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(samples):
        members[sample.group].append(index)
    if len(members) < 2:
        raise ValueError(f"a split by group needs at least 2 groups, got {len(members)}")

    strata: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for group in sorted(members):
        strata[tuple(sorted({samples[i].target for i in members[group]}))].append(group)
    keys = sorted(strata)

    rng = np.random.default_rng(seed)
    num_val = min(max(round(val_fraction * len(members)), 1), len(members) - 1)
    quotas = allocate([len(strata[key]) for key in keys], num_val, rng)
    val_groups: set[str] = set()
    for key, quota in zip(keys, quotas, strict=True):
        shuffled = rng.permutation(len(strata[key]))
        val_groups.update(strata[key][i] for i in shuffled[:quota])

    train = [sample for sample in samples if sample.group not in val_groups]
    val = [sample for sample in samples if sample.group in val_groups]
    return train, val
