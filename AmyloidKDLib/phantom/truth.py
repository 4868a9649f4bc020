"""Ground truth of a cohort: each subject's baseline draw and each session's values.

Cheap (no images): :func:`sample_cohort` gives every session's truth for statistics and tests.

Generator v2: the true Centiloid drives PET and atrophy; ``centiloid`` (and ``label``) is the
PET measurement of it. Amyloid-related atrophy has a per-subject slope and spatial pattern;
white-matter lesions and random cortical loss add MRI changes unrelated to amyloid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from AmyloidKDLib.phantom.config import (PhantomConfig, centiloid_to_suvr, draw_tracer,
                                         mixture_weight)

#: Version of the generator's model (written to ``ground_truth/cohort.json``). 2: random
#: atrophy slopes and patterns, WM lesions, random cortical loss, measured Centiloid.
GENERATOR_VERSION = 2
#: Names of the amyloid-related atrophy regions, in the order of ``region_gm_loss``
#: (the keys of ``anatomy.ATROPHY_REGIONS``; fixed here so truth needs no template).
ATROPHY_REGION_NAMES = ("hippocampus", "lateral_temporal", "lateral_parietal", "precuneus")


@dataclass
class SessionTruth:
    """Ground truth of one PET session and the MR session it pairs with."""

    subject_id: str
    session_id: str               # the PET session label, e.g. SYN00001_AV45_d0412
    mr_session_id: str | None     # None: no MR within the pairing window (OASIS layout only)
    pet_day: int
    mr_day: int | None
    tracer: str
    centiloid: float              # measured (true + PET noise): what the manifest and label use
    label: int                    # centiloid > label_threshold
    age: float
    age_at_entry: float
    cortical_suvr: float          # the composite SUVR the PET was built with
    regional_gm_loss: float       # mean fraction of GM lost over the atrophy regions
    global_gm_loss: float
    ventricle_expansion: float
    session_index: int
    n_sessions: int
    true_centiloid: float = 0.0   # drives PET uptake and atrophy
    region_gm_loss: tuple[float, ...] = ()  # per ATROPHY_REGION_NAMES (amyloid + age + anatomy)
    amyloid_gm_loss: float = 0.0  # the amyloid-related part of regional_gm_loss
    wm_lesion_load: float = 0.0   # fraction of the WM-lesion map turned to lesion (not amyloid)


@dataclass
class SubjectTruth:
    """A subject's baseline draw: amyloid component, Centiloid, age, tracer, anatomy."""

    subject_id: str
    index: int
    positive_component: bool
    baseline_centiloid: float
    age_at_entry: float
    tracer: str
    anatomy_offset: float         # subject's own regional GM variation (mean over regions)
    ventricle_offset: float
    first_day: int
    n_sessions: int
    extra_mr: bool
    atrophy_slope: float = 0.0    # own GM fraction lost per 100 true CL (before region weights)
    region_weights: tuple[float, ...] = ()   # own pattern over ATROPHY_REGION_NAMES (mean 1)
    region_offsets: tuple[float, ...] = ()   # own anatomy per region
    global_offset: float = 0.0
    wm_lesion_rate: float = 0.0   # own WM-lesion load per decade above the onset age
    random_atrophy: tuple[tuple[float, ...], ...] = ()  # (x, y, z, radius_mm, loss) spheres


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
    tracer = draw_tracer(rng.random(), config)
    n_sessions = 1
    if rng.random() < config.longitudinal_share:
        n_sessions = int(rng.integers(2, config.max_sessions + 1))
    anatomy_offset = float(rng.normal(0.0, config.anatomy_sd))
    ventricle_offset = float(rng.normal(0.0, config.ventricle_sd))
    first_day = int(rng.integers(0, 400))
    extra_mr = bool(rng.random() < config.extra_mr_share)
    # v2 draws come from their own stream, so the v1 draws above keep their values
    own = _rng(seed, index, 5)
    n_regions = len(ATROPHY_REGION_NAMES)
    slope = config.atrophy_per_100cl * float(np.exp(own.normal(0.0, config.atrophy_slope_sd)))
    weights = own.dirichlet(np.full(n_regions, config.atrophy_pattern_concentration)) * n_regions
    offsets = own.normal(0.0, config.anatomy_sd, n_regions)
    offsets += anatomy_offset - offsets.mean()   # v1's subject offset is their mean
    lesion_rate = config.wm_lesion_per_decade * float(np.exp(own.normal(0.0, config.wm_lesion_sd)))
    spheres = []
    for _ in range(int(own.integers(0, config.random_atrophy_max_spheres + 1))):
        spheres.append(tuple(round(float(v), 3) for v in (
            *_cortical_point(own), own.uniform(*config.random_atrophy_radius_mm),
            own.uniform(*config.random_atrophy_loss))))
    return SubjectTruth(
        subject_id=subject_id_for(index), index=index, positive_component=positive,
        baseline_centiloid=centiloid, age_at_entry=age, tracer=tracer,
        anatomy_offset=anatomy_offset, ventricle_offset=ventricle_offset,
        first_day=first_day, n_sessions=n_sessions, extra_mr=extra_mr,
        atrophy_slope=round(slope, 5), region_weights=tuple(round(float(w), 4) for w in weights),
        region_offsets=tuple(round(float(o), 4) for o in offsets),
        global_offset=round(float(own.normal(0.0, config.global_atrophy_sd)), 4),
        wm_lesion_rate=round(lesion_rate, 5), random_atrophy=tuple(spheres))


#: An ellipsoid near the cortex in MNI mm: centre and semi-axes (random atrophy sits on it).
_CORTEX_CENTRE = (0.0, -18.0, 15.0)
_CORTEX_AXES = (66.0, 92.0, 62.0)


def _cortical_point(rng: np.random.Generator) -> tuple[float, float, float]:
    direction = rng.normal(size=3)
    direction /= max(float(np.linalg.norm(direction)), 1e-9)
    if direction[2] < -0.5:        # keep away from the skull base
        direction[2] = -direction[2]
    depth = rng.uniform(0.82, 0.95)
    return tuple(c + depth * a * d for c, a, d in zip(_CORTEX_CENTRE, _CORTEX_AXES, direction))


def sample_sessions(subject: SubjectTruth, seed: int, config: PhantomConfig) -> list[SessionTruth]:
    """The PET sessions of one subject with their Centiloid, age, atrophy and MR pairing."""
    rng = _rng(seed, subject.index, 1)
    sessions = []
    pet_day = subject.first_day
    measure = _rng(seed, subject.index, 6)   # PET measurement noise of the Centiloid
    rate = config.centiloid_per_year[1 if subject.positive_component else 0]
    scale = config.mri_effect_scale
    for k in range(subject.n_sessions):
        if k:
            pet_day += int(rng.integers(*config.session_gap_days))
        years = (pet_day - subject.first_day) / 365.25
        true_cl = subject.baseline_centiloid + rate * years + (rng.normal(0, 3.0) if k else 0.0)
        true_cl = round(float(np.clip(true_cl, *config.centiloid_range)), 2)
        centiloid = round(true_cl + float(measure.normal(0.0, config.centiloid_noise_sd)), 2)
        age = round(subject.age_at_entry + pet_day / 365.25, 1)
        amyloid = max(true_cl - config.atrophy_onset_cl, 0.0) / 100.0
        decades = (age - 70.0) / 10.0
        amyloid_loss = scale * subject.atrophy_slope * amyloid * np.asarray(subject.region_weights)
        regions = np.clip(amyloid_loss + config.atrophy_per_decade * decades
                          + np.asarray(subject.region_offsets), -0.15, 0.6)
        global_loss = (config.global_atrophy_share * config.atrophy_per_decade * decades
                       + subject.global_offset)
        ventricle = (scale * config.ventricle_per_100cl * amyloid
                     + config.ventricle_per_decade * decades + subject.ventricle_offset)
        lesions = subject.wm_lesion_rate * max(age - config.wm_lesion_onset_age, 0.0) / 10.0
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
            cortical_suvr=round(centiloid_to_suvr(true_cl, tracer, config), 4),
            regional_gm_loss=round(float(regions.mean()), 4),
            global_gm_loss=round(float(np.clip(global_loss, -0.1, 0.3)), 4),
            ventricle_expansion=round(float(np.clip(ventricle, -0.1, 0.4)), 4),
            session_index=k, n_sessions=subject.n_sessions, true_centiloid=true_cl,
            region_gm_loss=tuple(round(float(v), 4) for v in regions),
            amyloid_gm_loss=round(float(amyloid_loss.mean()), 4),
            wm_lesion_load=round(float(min(lesions, 1.0)), 4)))
    return sessions


def sample_cohort(n_subjects: int, seed: int, config: PhantomConfig | None = None
                  ) -> list[SessionTruth]:
    """Every session's ground truth, without any image (cheap: for statistics and tests)."""
    config = config or PhantomConfig()
    out = []
    for i in range(n_subjects):
        out += sample_sessions(sample_subject(i, seed, config), seed, config)
    return out

