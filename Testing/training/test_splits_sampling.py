"""Subject-level splits (no leakage, ever), Centiloid-aware negatives from the training fold
only, and class-balanced batches."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from AmyloidKDLib.errors import InputError
from Training.sampling import CentiloidNegativeSampler, ClassBalancedBatchSampler
from Training.splits import (LeakageError, Split, SplitConfig, assert_no_subject_leakage,
                             cross_validation_splits, holdout_split)


@pytest.fixture(scope="module")
def longitudinal_cohort():
    """90 subjects, a third with 2-4 sessions (a subject's label may change between them),
    about 32 % amyloid positive, Centiloid consistent with the label."""
    rng = np.random.default_rng(0)
    subjects, labels, centiloids = [], [], []
    for s in range(90):
        n_sessions = int(rng.choice([1, 2, 3, 4], p=[0.67, 0.2, 0.08, 0.05]))
        base = rng.normal(45, 25) if rng.random() < 0.32 else rng.normal(0, 8)
        for k in range(n_sessions):
            cl = base + 4 * k
            subjects.append(f"OAS3{s:04d}")
            centiloids.append(cl)
            labels.append(int(cl >= 20))
    return np.array(subjects), np.array(labels), np.array(centiloids)


def test_cross_validation_never_puts_a_subject_in_two_sets(longitudinal_cohort):
    subjects, labels, _ = longitudinal_cohort
    assert max(Counter(subjects).values()) >= 3  # the cohort really has repeat sessions
    splits = cross_validation_splits(subjects, labels, SplitConfig(n_folds=5, seed=3))
    assert len(splits) == 5
    test_subjects_seen: set[str] = set()
    for split in splits:
        train, val, test = (set(subjects[list(part)]) for part in (split.train, split.val, split.test))
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(split.train) + len(split.val) + len(split.test) == subjects.size
        # Every session of a test subject is in the test set.
        for s in test:
            assert set(np.flatnonzero(subjects == s)) <= set(split.test)
        assert not (test & test_subjects_seen)  # each subject is tested in exactly one fold
        test_subjects_seen |= test
        # Stratified: each set keeps roughly the cohort's positive rate.
        for part in (split.train, split.val, split.test):
            assert 0.15 < labels[list(part)].mean() < 0.5
    assert test_subjects_seen == set(subjects)


def test_holdout_split_is_subject_disjoint_with_the_requested_sizes(longitudinal_cohort):
    subjects, labels, _ = longitudinal_cohort
    split = holdout_split(subjects, labels, test_fraction=0.2, val_fraction=0.2, seed=1)
    assert_no_subject_leakage(split, subjects.tolist())
    n = subjects.size
    assert 0.1 * n < len(split.test) < 0.3 * n and 0.1 * n < len(split.val) < 0.3 * n
    assert labels[list(split.test)].sum() > 0 and labels[list(split.val)].sum() > 0


@pytest.mark.parametrize("split, message", [
    (Split(0, (0, 2), (3,), (1,)), "'a' is in both train and test"),  # two sessions of a
    (Split(0, (0, 2), (2,), (3,)), "two sets"),                       # one case twice
])
def test_leakage_check_raises_on_a_shared_subject(split, message):
    with pytest.raises(LeakageError, match=message):
        assert_no_subject_leakage(split, ["a", "a", "b", "c"])


def test_too_few_subjects_for_the_folds_is_a_clear_error():
    with pytest.raises(InputError, match="fewer folds"):
        cross_validation_splits(["a", "b", "c", "d"], [0, 1, 0, 1], SplitConfig(n_folds=3))


def test_negatives_come_from_another_subject_of_the_training_fold_with_a_centiloid_gap(
        longitudinal_cohort):
    subjects, labels, centiloids = longitudinal_cohort
    split = cross_validation_splits(subjects, labels, SplitConfig(n_folds=5, seed=0))[0]
    sampler = CentiloidNegativeSampler(subjects, centiloids, split.train, min_gap=5.0, seed=0)
    batches = ClassBalancedBatchSampler(labels, split.train, batch_size=6, seed=0)
    train = set(split.train)
    chosen_total = missing = 0
    for epoch in range(3):
        batches.set_epoch(epoch)
        for batch in batches:
            assert set(batch) <= train  # batches, hence negatives, never leave the fold
            rng = np.random.default_rng(len(batch))
            distances = rng.random((len(batch), len(batch)))
            for dist in (None, torch.from_numpy(distances)):
                chosen = sampler.choose(batch, dist).numpy()
                for a, n in enumerate(chosen):
                    if n < 0:
                        missing += 1
                        continue
                    anchor, negative = batch[a], batch[n]
                    assert negative in train
                    assert subjects[negative] != subjects[anchor]
                    assert abs(centiloids[negative] - centiloids[anchor]) >= 5.0
                    chosen_total += 1
                    if dist is not None:  # the hardest valid one
                        valid = sampler.valid_matrix(batch)[a]
                        assert distances[a, n] == distances[a][valid].min()
    assert chosen_total > 0 and missing / (missing + chosen_total) < 0.05
    # Cases of another fold are refused outright.
    with pytest.raises(InputError, match="not in the training fold"):
        sampler.choose([split.train[0], split.test[0]])


def test_negatives_skip_same_subject_sessions_even_with_large_centiloid_gap():
    # Subject "a" progressed from 0 to 60 Centiloid: its own later PET is NOT a negative.
    subjects = ["a", "a", "b"]
    centiloids = [0.0, 60.0, 2.0]
    sampler = CentiloidNegativeSampler(subjects, centiloids, [0, 1, 2], min_gap=5.0)
    chosen = sampler.choose([0, 1, 2]).tolist()
    assert chosen == [-1, 2, 1]  # 0 has no valid partner (b differs by only 2)


def test_class_balanced_batches_hold_both_classes_equally(longitudinal_cohort):
    subjects, labels, _ = longitudinal_cohort
    indices = np.arange(subjects.size)
    sampler = ClassBalancedBatchSampler(labels, indices, batch_size=8, seed=4)
    sampler.set_epoch(2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == int(np.ceil(subjects.size / 8))
    for batch in batches:
        assert labels[batch].sum() == 4
    # The majority (negative) class never repeats within an epoch; positives are oversampled.
    seen_negatives = Counter(i for b in batches for i in b if labels[i] == 0)
    assert max(seen_negatives.values()) == 1
    sampler.set_epoch(2)
    assert list(sampler) == batches  # deterministic per epoch (resume draws the same batches)
    sampler.set_epoch(3)
    assert list(sampler) != batches


@pytest.mark.parametrize("hard", [True, False])
def test_teacher_hard_negatives_picks_the_closest_valid_negative_or_a_random_one(hard):
    from Training.config import load_config
    from Training.phases import TeacherObjective

    # Six subjects 10 Centiloid apart: everyone else is a valid negative of everyone.
    sampler = CentiloidNegativeSampler([f"s{i}" for i in range(6)], [10.0 * i for i in range(6)],
                                       range(6), min_gap=5.0, seed=1)
    config = load_config("cpu", [f"teacher.hard_negatives={str(hard).lower()}"])
    objective = TeacherObjective(config, sampler, augment=False)
    # Embeddings on a line: the closest other PET embedding of anchor a is a neighbour.
    anchor = torch.tensor([[float(i), 0.0] for i in range(6)])
    positive = anchor.clone()
    closest = torch.cdist(anchor, positive).fill_diagonal_(float("inf")).argmin(dim=1)
    draws = torch.stack([objective.choose_negatives(list(range(6)), anchor, positive) for _ in range(20)])
    assert bool((draws != torch.arange(6)).all())  # never the anchor's own subject
    if hard:
        assert bool((draws == closest).all())  # always the closest, every time
    else:
        assert float((draws == closest).float().mean()) < 0.6  # random among 5 valid: ~1/5 closest
        assert len({tuple(d.tolist()) for d in draws}) > 1
