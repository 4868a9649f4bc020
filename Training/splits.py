"""Subject-level splits: stratified group k-fold with train / validation / test sets.

A subject with several sessions lands in exactly one set of a split; every split made here
is checked with :func:`assert_no_subject_leakage` before it is returned, so leakage raises
instead of silently inflating the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from AmyloidKDLib.errors import ConfigError, InputError


@dataclass
class SplitConfig:
    """How cases are divided into training, validation and test sets (by subject)."""

    n_folds: int = 5          # outer folds for cross-validation (test = one fold)
    val_folds: int = 4        # the rest is split this many ways; one part is validation
    seed: int = 0             # shuffling seed of StratifiedGroupKFold

    def __post_init__(self) -> None:
        if self.n_folds < 2:
            raise ConfigError(f"split.n_folds must be >= 2, got {self.n_folds}.")
        if self.val_folds < 2:
            raise ConfigError(f"split.val_folds must be >= 2, got {self.val_folds}.")


@dataclass(frozen=True)
class Split:
    """Case indices of one train / validation / test division."""

    fold: int
    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (stored in the run directory)."""
        return {"fold": self.fold, "train": list(self.train), "val": list(self.val),
                "test": list(self.test)}


class LeakageError(AssertionError):
    """A subject appears in two sets of one split (a bug, never a user's mistake)."""


def assert_no_subject_leakage(split: Split, subjects: Sequence[str]) -> None:
    """Raise :class:`LeakageError` if any subject has cases in two sets, or a case is used twice."""
    parts = {"train": split.train, "val": split.val, "test": split.test}
    seen: dict[str, str] = {}
    all_indices = [i for part in parts.values() for i in part]
    if len(all_indices) != len(set(all_indices)):
        raise LeakageError(f"fold {split.fold}: a case index appears in two sets.")
    for name, indices in parts.items():
        for i in indices:
            owner = seen.setdefault(str(subjects[i]), name)
            if owner != name:
                raise LeakageError(f"fold {split.fold}: subject {subjects[i]!r} is in both "
                                   f"{owner} and {name}.")


def _check_inputs(subjects: Sequence[str], labels: Sequence[int], n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    subj = np.asarray([str(s) for s in subjects])
    y = np.asarray(labels).astype(int)
    if subj.shape != y.shape:
        raise InputError(f"{subj.size} subject ids but {y.size} labels.")
    n_subjects = len(set(subj.tolist()))
    if n_subjects < n_groups:
        raise InputError(f"cannot split {n_subjects} subjects into {n_groups} subject-disjoint "
                         f"parts; use fewer folds or a larger cohort.")
    for cls in (0, 1):
        if len(set(subj[y == cls].tolist())) < n_groups:
            raise InputError(f"only {len(set(subj[y == cls].tolist()))} subjects with label {cls}: "
                             f"too few for {n_groups} stratified parts. Use fewer folds.")
    return subj, y


def _one_split(subjects: np.ndarray, labels: np.ndarray, pool: np.ndarray, n_parts: int,
               seed: int, part: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pool`` (indices) into (rest, held) with StratifiedGroupKFold's ``part``-th fold."""
    splitter = StratifiedGroupKFold(n_splits=n_parts, shuffle=True, random_state=seed)
    for k, (rest, held) in enumerate(splitter.split(pool, labels[pool], subjects[pool])):
        if k == part:
            return pool[rest], pool[held]
    raise ConfigError(f"part {part} does not exist among {n_parts} parts.")


def cross_validation_splits(subjects: Sequence[str], labels: Sequence[int],
                            config: SplitConfig | None = None) -> list[Split]:
    """``n_folds`` subject-disjoint splits: each fold is the test set once; the remaining
    subjects are divided again (stratified, grouped) into training and validation."""
    config = config or SplitConfig()
    subj, y = _check_inputs(subjects, labels, config.n_folds)
    outer = StratifiedGroupKFold(n_splits=config.n_folds, shuffle=True, random_state=config.seed)
    splits = []
    for fold, (rest, test) in enumerate(outer.split(np.zeros(y.size), y, subj)):
        _check_inputs(subj[rest], y[rest], config.val_folds)
        train, val = _one_split(subj, y, rest, config.val_folds, config.seed + 1 + fold)
        split = Split(fold, tuple(sorted(train.tolist())), tuple(sorted(val.tolist())),
                      tuple(sorted(test.tolist())))
        assert_no_subject_leakage(split, subj.tolist())
        splits.append(split)
    return splits


def holdout_split(subjects: Sequence[str], labels: Sequence[int], test_fraction: float = 0.2,
                  val_fraction: float = 0.2, seed: int = 0) -> Split:
    """One subject-disjoint train / validation / test split with roughly the given fractions."""
    if not (0 < test_fraction < 0.5 and 0 < val_fraction < 0.5):
        raise ConfigError(f"test_fraction and val_fraction must be in (0, 0.5), got "
                          f"{test_fraction} and {val_fraction}.")
    n_test = max(2, round(1 / test_fraction))
    subj, y = _check_inputs(subjects, labels, n_test)
    rest, test = _one_split(subj, y, np.arange(y.size), n_test, seed)
    n_val = max(2, round((1 - test_fraction) / val_fraction))
    _check_inputs(subj[rest], y[rest], n_val)
    train, val = _one_split(subj, y, rest, n_val, seed + 1)
    split = Split(0, tuple(sorted(train.tolist())), tuple(sorted(val.tolist())),
                  tuple(sorted(test.tolist())))
    assert_no_subject_leakage(split, subj.tolist())
    return split
