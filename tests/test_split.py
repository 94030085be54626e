from collections import Counter

import numpy as np
import pytest
from mask_tree import PEOPLE, make_competition_tree

from training.data.datasets import Sample
from training.data.mask import load_mask_samples
from training.data.split import allocate, split_by_group, split_samples


def grouped_samples(groups_per_stratum=10, strata=6, images_per_group=3):
    """Samples of ``strata`` classes, each with ``groups_per_stratum`` groups of a few images."""
    samples = []
    for stratum in range(strata):
        for index in range(groups_per_stratum):
            group = f"s{stratum}_g{index}"
            samples += [Sample(target=stratum, group=group) for _ in range(images_per_group)]
    return samples


def groups_of(samples):
    return {sample.group for sample in samples}


@pytest.fixture(scope="module")
def mask_samples(tmp_path_factory):
    train_dir = make_competition_tree(tmp_path_factory.mktemp("mask"))
    return load_mask_samples(train_dir)[0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mask_split_no_person_in_both(mask_samples, seed):
    train, val = split_samples(mask_samples, 0.25, seed)
    assert groups_of(train).isdisjoint(groups_of(val))
    assert groups_of(train) | groups_of(val) == set(PEOPLE)


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_split_keeps_all_images(mask_samples, seed):
    train, val = split_samples(mask_samples, 0.25, seed)
    assert len(train) + len(val) == len(mask_samples)
    assert {id(s) for s in train}.isdisjoint({id(s) for s in val})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_split_stratified(mask_samples, seed):
    _, val = split_samples(mask_samples, 0.5, seed)
    # Each (gender, age group) pair has two people, so half the people means one of each pair.
    pairs = Counter((s.labels.gender, s.labels.age_group) for s in val if s.labels.mask == 2)
    assert pairs == Counter({(g, a): 1 for g in range(2) for a in range(3)})


def test_mask_split_repeated_id_separate(mask_samples):
    _, val = split_samples(mask_samples, 0.5, 0)
    shared = {s.group for s in val if s.labels.person_id == "000700"}
    assert len(shared) == 1


@pytest.mark.parametrize("seed", [0, 5, 11])
def test_group_split_stratified(seed):
    _, val = split_samples(grouped_samples(), 0.2, seed)
    counts = Counter(s.target for s in val)
    assert counts == Counter({stratum: 2 * 3 for stratum in range(6)})


@pytest.mark.parametrize("seed", [0, 7])
def test_group_split_reproducible(seed):
    samples = grouped_samples()
    first = [id(s) for s in split_samples(samples, 0.2, seed)[1]]
    second = [id(s) for s in split_samples(samples, 0.2, seed)[1]]
    assert first == second


def test_group_split_seed_changes():
    samples = grouped_samples()
    assert groups_of(split_samples(samples, 0.2, 0)[1]) != groups_of(split_samples(samples, 0.2, 1)[1])


def test_group_split_keeps_input_order():
    samples = grouped_samples()
    train, val = split_samples(samples, 0.2, 0)
    position = {id(s): i for i, s in enumerate(samples)}
    assert [position[id(s)] for s in train] == sorted(position[id(s)] for s in train)
    assert [position[id(s)] for s in val] == sorted(position[id(s)] for s in val)


@pytest.mark.parametrize(
    ("groups", "fraction", "expected"),
    [(10, 0.2, 2), (10, 0.25, 2), (3, 0.01, 1), (3, 0.99, 2), (2, 0.5, 1)],
)
def test_group_split_val_size(groups, fraction, expected):
    samples = [Sample(target=0, group=f"g{i}") for i in range(groups)]
    _, val = split_by_group(samples, fraction, 0)
    assert len(groups_of(val)) == expected


def test_group_split_rare_stratum():
    samples = grouped_samples() + [Sample(target=9, group="lonely")]
    train, val = split_samples(samples, 0.2, 0)
    assert len(train) + len(val) == len(samples)
    assert groups_of(train).isdisjoint(groups_of(val))


def test_group_split_single_group_rejected():
    with pytest.raises(ValueError, match="at least 2 groups, got 1"):
        split_by_group([Sample(target=0, group="g"), Sample(target=1, group="g")], 0.5, 0)


def test_split_mixed_groups_rejected():
    samples = [Sample(target=0, group="g1"), Sample(target=0), Sample(target=1, group="g2")]
    with pytest.raises(ValueError, match="2 of 3 samples have a group"):
        split_samples(samples, 0.5, 0)


@pytest.mark.parametrize(
    ("counts", "num_val", "expected"),
    [([10, 10, 10], 6, [2, 2, 2]), ([5, 15], 4, [1, 3]), ([7, 0, 3], 4, [3, 0, 1])],
)
def test_allocate_proportional(counts, num_val, expected):
    assert allocate(counts, num_val, np.random.default_rng(0)) == expected


@pytest.mark.parametrize("seed", range(5))
def test_allocate_sums_to_total(seed):
    counts = [1, 1, 1, 2, 5]
    quotas = allocate(counts, 3, np.random.default_rng(seed))
    assert sum(quotas) == 3
    assert all(q <= c for q, c in zip(quotas, counts, strict=True))
