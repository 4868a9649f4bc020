"""Ground truth of a cohort: each subject's baseline draw and each session's values.

Cheap (no images): :func:`sample_cohort` gives every session's truth for statistics and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from AmyloidKDLib.phantom.config import PhantomConfig, centiloid_to_suvr, mixture_weight


@dataclass
class SessionTruth:
    """Ground truth of one PET session and the MR session it pairs with."""

    subject_id: str
    session_id: str               # the PET session label, e.g. SYN00001_AV45_d0412
    mr_session_id: str | None     # None: no MR within the pairing window (OASIS layout only)
    pet_day: int
    mr_day: int | None
    tracer: str
    centiloid: float
    label: int
    age: float
    age_at_entry: float
    cortical_suvr: float          # the composite SUVR the PET was built with
    regional_gm_loss: float       # fraction of GM lost in the atrophy regions
    global_gm_loss: float
    ventricle_expansion: float
    session_index: int
    n_sessions: int


@dataclass
class SubjectTruth:
    """A subject's baseline draw: amyloid component, Centiloid, age, tracer, anatomy."""

    subject_id: str
    index: int
    positive_component: bool
    baseline_centiloid: float
    age_at_entry: float
    tracer: str
    anatomy_offset: float         # subject's own regional GM variation
    ventricle_offset: float
    first_day: int
    n_sessions: int
    extra_mr: bool


def subject_id_for(index: int) -> str:
    """Synthetic subject label (OASIS-3 uses OAS3xxxx; these are SYNxxxxx)."""
    return f"SYN{index + 1:05d}"


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(key)))


def sample_subject(index: int, seed: int, config: PhantomConfig) -> SubjectTruth:
    """Baseline parameters of subject ``index`` (independent of the cohort size)."""
    rng = _rng(seed, index, 0)
    weight = mixture_weight(config)
    positive = bool(rng.random() < weight)
    mean, sd = config.positive_centiloid if positive else config.negative_centiloid
    centiloid = float(np.clip(rng.normal(mean, sd), *config.centiloid_range))
    age = rng.normal(config.age_mean + config.age_shift_positive * positive, config.age_sd)
    age = round(float(np.clip(age, *config.age_range)), 2)
    tracer = "PIB" if rng.random() < config.pib_share else "AV45"
    n_sessions = 1
    if rng.random() < config.longitudinal_share:
        n_sessions = int(rng.integers(2, config.max_sessions + 1))
    return SubjectTruth(
        subject_id=subject_id_for(index), index=index, positive_component=positive,
        baseline_centiloid=centiloid, age_at_entry=age, tracer=tracer,
        anatomy_offset=float(rng.normal(0.0, config.anatomy_sd)),
        ventricle_offset=float(rng.normal(0.0, config.ventricle_sd)),
        first_day=int(rng.integers(0, 400)), n_sessions=n_sessions,
        extra_mr=bool(rng.random() < config.extra_mr_share))


def sample_sessions(subject: SubjectTruth, seed: int, config: PhantomConfig) -> list[SessionTruth]:
    """The PET sessions of one subject with their Centiloid, age, atrophy and MR pairing."""
    rng = _rng(seed, subject.index, 1)
    sessions = []
    pet_day = subject.first_day
    rate = config.centiloid_per_year[1 if subject.positive_component else 0]
    for k in range(subject.n_sessions):
        if k:
            pet_day += int(rng.integers(*config.session_gap_days))
        years = (pet_day - subject.first_day) / 365.25
        centiloid = subject.baseline_centiloid + rate * years + (rng.normal(0, 3.0) if k else 0.0)
        centiloid = round(float(np.clip(centiloid, *config.centiloid_range)), 2)
        age = round(subject.age_at_entry + pet_day / 365.25, 1)
        amyloid = max(centiloid, 0.0) / 100.0
        decades = (age - 70.0) / 10.0
        regional = (config.atrophy_per_100cl * amyloid + config.atrophy_per_decade * decades
                    + subject.anatomy_offset)
        global_loss = config.global_atrophy_share * config.atrophy_per_decade * decades
        ventricle = (config.ventricle_per_100cl * amyloid + config.ventricle_per_decade * decades
                     + subject.ventricle_offset)
        gap = int(rng.integers(-config.mr_pet_gap_days, config.mr_pet_gap_days + 1))
        unpaired = bool(rng.random() < config.unpaired_pet_share)
        mr_day = None if unpaired else max(pet_day + gap, 0)
        tracer = subject.tracer
        sessions.append(SessionTruth(
            subject_id=subject.subject_id,
            session_id=f"{subject.subject_id}_{tracer}_d{pet_day:04d}",
            mr_session_id=None if mr_day is None else f"{subject.subject_id}_MR_d{mr_day:04d}",
            pet_day=pet_day, mr_day=mr_day, tracer=tracer, centiloid=centiloid,
            label=int(centiloid > config.label_threshold), age=age,
            age_at_entry=subject.age_at_entry,
            cortical_suvr=round(centiloid_to_suvr(centiloid, tracer, config), 4),
            regional_gm_loss=round(float(np.clip(regional, -0.15, 0.6)), 4),
            global_gm_loss=round(float(np.clip(global_loss, -0.1, 0.3)), 4),
            ventricle_expansion=round(float(np.clip(ventricle, -0.1, 0.4)), 4),
            session_index=k, n_sessions=subject.n_sessions))
    return sessions


def sample_cohort(n_subjects: int, seed: int, config: PhantomConfig | None = None
                  ) -> list[SessionTruth]:
    """Every session's ground truth, without any image (cheap: for statistics and tests)."""
    config = config or PhantomConfig()
    out = []
    for i in range(n_subjects):
        out += sample_sessions(sample_subject(i, seed, config), seed, config)
    return out

