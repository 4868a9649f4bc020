"""Synthetic PET/MRI cohorts built on the real MNI152 2009 template (the embedded default data).

Real OASIS-3 and ADNI data need credentials, so the demo, the tests and the benchmarks use a
cohort this module makes in minutes. It behaves like the real problem: amyloid PET shows the
amyloid burden clearly (cortical SUVR in the regions where amyloid accumulates first rises with
Centiloid), MRI shows it only weakly (tunable temporo-parietal and hippocampal grey-matter loss
and ventricular enlargement, mixed with an age-related confound), labels near the 20 Centiloid
threshold are uncertain, and some subjects come back for several sessions.

Each subject gets its own smooth deformation of the template; each scan its own rigid pose,
grid and (sometimes) a non-RAS storage orientation, as scanners write them. The cohort is
written in the two layouts a real user prepares (see ``docs/data_layouts.md``): an OASIS-3
style tree with the OASIS-3 CSVs, and a plain manifest CSV. Everything is deterministic per
seed; the ground truth of every session (Centiloid, atrophy, poses, deformation) is saved
next to the images, so tests can check the images against it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.volume import Volume

log = logging.getLogger(__name__)

LAYOUTS = ("manifest", "oasis3", "both")
TRACERS = ("AV45", "PIB")
PHANTOM_CONTRASTS = ("T1w", "T2w", "FLAIR")
#: Manifest columns, in order; MRI paths, ``pet_path`` are relative to the CSV's folder.
MANIFEST_COLUMNS = ("subject_id", "session_id", "t1w", "t2w", "flair", "pet_path", "tracer",
                    "centiloid", "label", "age")
CONTRAST_COLUMNS = {"T1w": "t1w", "T2w": "t2w", "FLAIR": "flair"}
#: OASIS-3 file and column names the OASIS-3 layout uses.
OASIS_CENTILOID_CSV = "OASIS3_amyloid_centiloid.csv"
OASIS_DEMOGRAPHICS_CSV = "OASIS3_demographics.csv"
OASIS_CLINICAL_CSV = "OASIS3_UDSb4_cdr.csv"
OASIS_CENTILOID_COLUMNS = ("subject_id", "oasis_session_id", "tracer",
                           "Centiloid_fBP_TOT_CORTMEAN", "Centiloid_fSUVR_TOT_CORTMEAN",
                           "Centiloid_fBP_rsf_TOT_CORTMEAN", "Centiloid_fSUVR_rsf_TOT_CORTMEAN")

#: Regions where amyloid accumulates first: MNI centre (mm, right hemisphere; mirrored to the
#: left) and sphere radius (mm). Intersected with the template's GM map.
EARLY_AMYLOID_REGIONS: dict[str, tuple[tuple[float, float, float], float]] = {
    "precuneus": ((8.0, -60.0, 40.0), 14.0),
    "posterior_cingulate": ((5.0, -40.0, 30.0), 12.0),
    "medial_frontal": ((8.0, 50.0, 20.0), 14.0),
    "lateral_temporal": ((58.0, -20.0, -10.0), 14.0),
    "lateral_parietal": ((45.0, -60.0, 40.0), 14.0),
}
#: Regions of amyloid-linked grey-matter loss (temporo-parietal cortex and hippocampus).
ATROPHY_REGIONS: dict[str, tuple[tuple[float, float, float], float]] = {
    "hippocampus": ((28.0, -22.0, -14.0), 10.0),
    "lateral_temporal": ((58.0, -20.0, -10.0), 16.0),
    "lateral_parietal": ((45.0, -60.0, 40.0), 16.0),
    "precuneus": ((8.0, -60.0, 40.0), 14.0),
}
#: Centre of the lateral ventricles in MNI space (mm), where enlargement is centred.
VENTRICLE_CENTRE_MM = (0.0, -10.0, 15.0)
#: Point the rigid poses rotate around (roughly the brain's centre in MNI space).
BRAIN_CENTRE_MM = (0.0, -18.0, 10.0)
#: Template-typical partial-volume intensities used for contrasts (fractions of full scale).
T2_TISSUE = {"gm": 0.45, "wm": 0.32, "csf": 1.0}
FLAIR_TISSUE = {"gm": 0.62, "wm": 0.48, "csf": 0.08}
#: Skull shell layers (mm outside the brain mask) and intensities per contrast.
SHELL_LAYERS_MM = (3.0, 8.0, 13.0)  # CSF up to 3, bone up to 8, scalp up to 13
SHELL_INTENSITY = {"T1w": (0.30, 0.05, 0.85), "T2w": (1.0, 0.05, 0.50),
                   "FLAIR": (0.08, 0.05, 0.60)}
MRI_FULL_SCALE = 1000.0
#: Spacing (mm) at which the exact scan->template mapping is evaluated before upsampling.
COARSE_MAPPING_MM = 8.0


@dataclass
class PhantomConfig:
    """Every knob of the synthetic cohort (JSON-serialisable; defaults are the demo's).

    Amyloid: a two-component Gaussian mixture of baseline Centiloid whose mixing weight is
    solved so that ``prevalence`` of baseline sessions lie above ``label_threshold``.
    MRI effects are fractions of grey matter turned into CSF; ventricle effects are linear
    expansion factors around the ventricles' centre.
    """

    prevalence: float = 0.32
    label_threshold: float = 20.0
    negative_centiloid: tuple[float, float] = (2.0, 9.0)    # mean, sd
    positive_centiloid: tuple[float, float] = (72.0, 32.0)  # mean, sd
    centiloid_range: tuple[float, float] = (-30.0, 180.0)
    centiloid_per_year: tuple[float, float] = (0.5, 4.0)    # negatives, positives
    pib_share: float = 0.5
    # composite cortical SUVR = intercept + slope * Centiloid (Klunk 2015 PiB; Navitsky 2018 AV45)
    suvr_intercept: dict[str, float] = field(default_factory=lambda: {"PIB": 1.009, "AV45": 1.039})
    suvr_slope: dict[str, float] = field(default_factory=lambda: {"PIB": 0.0094, "AV45": 0.0057})
    white_matter_suvr: dict[str, float] = field(default_factory=lambda: {"PIB": 1.35, "AV45": 1.55})
    cortical_background_weight: float = 0.35  # amyloid in cortex outside the early regions
    age_mean: float = 71.0
    age_sd: float = 7.0
    age_range: tuple[float, float] = (50.0, 95.0)
    age_shift_positive: float = 4.0           # amyloid-positive subjects are older: confound
    atrophy_per_100cl: float = 0.06           # regional GM fraction lost at 100 Centiloid
    atrophy_per_decade: float = 0.05          # regional GM fraction lost per decade above 70
    global_atrophy_share: float = 0.5         # age atrophy elsewhere, relative to regional
    anatomy_sd: float = 0.06                  # a subject's own regional GM variation
    ventricle_per_100cl: float = 0.06
    ventricle_per_decade: float = 0.06
    ventricle_sd: float = 0.04
    deformation_mm: float = 2.5               # sd of the smooth random displacement
    deformation_spacing_mm: float = 24.0      # control-point spacing of that displacement
    rotation_deg: float = 6.0                 # largest rigid rotation per axis
    translation_mm: float = 8.0
    mri_spacing_mm: float = 1.0
    pet_spacing_mm: float = 2.0
    pet_fwhm_mm: float = 7.0
    pet_noise: float = 0.04                   # relative noise left after PET smoothing
    mri_noise: float = 0.03                   # Rician sigma, fraction of full scale
    bias_strength: float = 0.15
    skull: bool = False
    contrasts: tuple[str, ...] = PHANTOM_CONTRASTS
    longitudinal_share: float = 0.3           # subjects with 2-3 sessions
    max_sessions: int = 3
    session_gap_days: tuple[int, int] = (800, 1400)
    mr_pet_gap_days: int = 120                # |PET day - its MR day| at most this
    unpaired_pet_share: float = 0.05          # PET with no MR within 365 days (OASIS layout)
    extra_mr_share: float = 0.1               # subjects with an extra MR-only session
    orientation_mix: float = 0.5              # share of files stored in a non-RAS orientation
    orientations: tuple[str, ...] = ("LPS", "LAS", "PIR", "ASL", "RPI")
    montage_subjects: int = 6

    def __post_init__(self) -> None:
        for name in ("negative_centiloid", "positive_centiloid", "centiloid_range",
                     "centiloid_per_year", "age_range", "session_gap_days"):
            setattr(self, name, tuple(getattr(self, name)))
        self.contrasts = tuple(self.contrasts)
        self.orientations = tuple(self.orientations)
        self.suvr_intercept = dict(self.suvr_intercept)
        self.suvr_slope = dict(self.suvr_slope)
        self.white_matter_suvr = dict(self.white_matter_suvr)
        for name in ("prevalence", "pib_share", "longitudinal_share", "unpaired_pet_share",
                     "extra_mr_share", "orientation_mix"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"PhantomConfig.{name} must lie in [0, 1], got {value}")
        if not 0.0 < self.prevalence < 1.0:
            raise ConfigError(f"PhantomConfig.prevalence must lie strictly between 0 and 1, "
                              f"got {self.prevalence}")
        if self.mri_spacing_mm not in (1.0, 2.0):
            raise ConfigError(f"PhantomConfig.mri_spacing_mm must be 1.0 or 2.0 (mm), "
                              f"got {self.mri_spacing_mm}")
        if self.pet_spacing_mm not in (2.0, 4.0):
            raise ConfigError(f"PhantomConfig.pet_spacing_mm must be 2.0 or 4.0 (mm), "
                              f"got {self.pet_spacing_mm}")
        bad = [c for c in self.contrasts if c not in PHANTOM_CONTRASTS]
        if bad or "T1w" not in self.contrasts:
            raise ConfigError(f"PhantomConfig.contrasts must include T1w and only "
                              f"{', '.join(PHANTOM_CONTRASTS)}; got {list(self.contrasts)}")
        for code in self.orientations:
            if sorted(code) == sorted("RAS") or len(set(code)) != 3 or not _valid_axcodes(code):
                raise ConfigError(f"PhantomConfig.orientations: {code!r} is not a non-RAS "
                                  "axis code such as 'LPS' or 'PIR'")
        for tracer in TRACERS:
            for table in ("suvr_intercept", "suvr_slope", "white_matter_suvr"):
                if tracer not in getattr(self, table):
                    raise ConfigError(f"PhantomConfig.{table} needs a value for {tracer}")
        if self.montage_subjects < 0:
            raise ConfigError(f"PhantomConfig.montage_subjects must be >= 0 (0: no montage), "
                              f"got {self.montage_subjects}")
        if self.max_sessions < 2:
            raise ConfigError(f"PhantomConfig.max_sessions must be >= 2, got {self.max_sessions}")
        if self.mr_pet_gap_days * 2 + 365 >= self.session_gap_days[0]:
            raise ConfigError("PhantomConfig.session_gap_days must exceed 2*mr_pet_gap_days + 365 "
                              "so that each PET pairs with its own MR session")
        mixture_weight(self)  # raises when the prevalence is unreachable

    def to_dict(self) -> dict:
        """Plain JSON-serialisable values (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, values: dict) -> "PhantomConfig":
        """Build from a dict; an unknown key raises ConfigError naming it and the valid keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown PhantomConfig key(s) {unknown}; valid keys: "
                              f"{', '.join(sorted(known))}")
        return cls(**values)


def _valid_axcodes(code: str) -> bool:
    pairs = ({"L", "R"}, {"A", "P"}, {"S", "I"})
    return all(sum(c in pair for c in code) == 1 for pair in pairs)


def mixture_weight(config: PhantomConfig) -> float:
    """Weight of the amyloid-positive Centiloid component that yields ``config.prevalence``."""
    from scipy.stats import norm

    threshold = config.label_threshold
    q_pos = norm.sf(threshold, *config.positive_centiloid)
    q_neg = norm.sf(threshold, *config.negative_centiloid)
    if not q_neg < config.prevalence < q_pos:
        raise ConfigError(
            f"prevalence {config.prevalence} is unreachable with these Centiloid components: "
            f"it must lie between {q_neg:.3f} and {q_pos:.3f}; move positive_centiloid / "
            "negative_centiloid or the label threshold")
    return float((config.prevalence - q_neg) / (q_pos - q_neg))


def centiloid_to_suvr(centiloid: float, tracer: str, config: PhantomConfig) -> float:
    """Composite cortical SUVR of a tracer at a Centiloid value (the Centiloid equations)."""
    return config.suvr_intercept[tracer] + config.suvr_slope[tracer] * centiloid


# ----------------------------------------------------------------------------------- truth
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


# -------------------------------------------------------------------------------- geometry
def _rotation(degrees: Sequence[float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class SessionGeometry:
    """Where a scan's world coordinates come from in MNI space.

    A scan point ``y`` (scanner RAS mm) maps to the subject's brain space by the inverse rigid
    pose, ``x = R^T (y - c - t) + c``, then to MNI by the subject's smooth displacement,
    ``x_mni = x + u(x)``, with ``u`` trilinear on a coarse grid (mm). The image was made by
    sampling the template at ``x_mni`` (pull direction), so this mapping is exact.
    """

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    displacement_origin_mm: tuple[float, float, float]
    displacement_spacing_mm: float
    displacement: np.ndarray            # (3, nx, ny, nz) mm
    grid_affine: np.ndarray             # 4x4 RAS affine of the image grid
    grid_shape: tuple[int, int, int]
    stored_orientation: str             # axis code the file is written in

    def world_to_mni(self, points: np.ndarray) -> np.ndarray:
        """MNI coordinates (N, 3) of scanner points ``points`` (N, 3), in mm."""
        centre = np.asarray(BRAIN_CENTRE_MM)
        rot = _rotation(self.rotation_deg)
        x = (np.asarray(points, np.float64) - centre - np.asarray(self.translation_mm)) @ rot + centre
        grid = (x - np.asarray(self.displacement_origin_mm)) / self.displacement_spacing_mm
        u = np.stack([ndimage.map_coordinates(self.displacement[c], grid.T, order=1,
                                              mode="nearest") for c in range(3)], axis=1)
        return x + u

    def mni_to_world(self, points: np.ndarray, iterations: int = 12) -> np.ndarray:
        """Scanner coordinates (N, 3) of MNI points (N, 3): the inverse of :meth:`world_to_mni`.

        Solves ``x + u(x) = x_mni`` by fixed-point iteration (``u`` is smooth and small).
        """
        target = np.asarray(points, np.float64)
        x = target.copy()
        for _ in range(iterations):
            grid = (x - np.asarray(self.displacement_origin_mm)) / self.displacement_spacing_mm
            u = np.stack([ndimage.map_coordinates(self.displacement[c], grid.T, order=1,
                                                  mode="nearest") for c in range(3)], axis=1)
            x = target - u
        centre = np.asarray(BRAIN_CENTRE_MM)
        return (x - centre) @ _rotation(self.rotation_deg).T + centre + np.asarray(self.translation_mm)

    def voxel_world(self, ijk: np.ndarray) -> np.ndarray:
        """Scanner coordinates (N, 3) of RAS-grid voxel indices (N, 3)."""
        return np.asarray(ijk, np.float64) @ self.grid_affine[:3, :3].T + self.grid_affine[:3, 3]

    def to_dict(self) -> dict:
        """JSON-serialisable form (the ground truth file)."""
        return {"rotation_deg": list(self.rotation_deg),
                "translation_mm": list(self.translation_mm),
                "displacement_origin_mm": list(self.displacement_origin_mm),
                "displacement_spacing_mm": self.displacement_spacing_mm,
                "displacement": self.displacement.tolist(),
                "grid_affine": self.grid_affine.tolist(), "grid_shape": list(self.grid_shape),
                "stored_orientation": self.stored_orientation}

    @classmethod
    def from_dict(cls, values: dict) -> "SessionGeometry":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(values["rotation_deg"]), tuple(values["translation_mm"]),
                   tuple(values["displacement_origin_mm"]), float(values["displacement_spacing_mm"]),
                   np.asarray(values["displacement"], np.float64),
                   np.asarray(values["grid_affine"], np.float64), tuple(values["grid_shape"]),
                   values["stored_orientation"])


# -------------------------------------------------------------------------------- anatomy
@dataclass
class TemplateMaps:
    """Template-derived maps on one grid, built once per cohort (not per subject)."""

    affine: np.ndarray
    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    amyloid_weight: np.ndarray    # 1 in early-amyloid cortex, background elsewhere, 0 cerebellum
    atrophy_weight: np.ndarray
    outside_mm: np.ndarray        # distance outside the brain mask (0 inside)
    t1_gm: float
    t1_csf: float

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid size."""
        return self.t1.shape  # type: ignore[return-value]

    def mni_coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable MNI x, y, z (mm) of the grid (axis-aligned template grid)."""
        axes = [self.affine[a, a] * np.arange(n) + self.affine[a, 3]
                for a, n in enumerate(self.shape)]
        return (axes[0][:, None, None].astype(np.float32), axes[1][None, :, None].astype(np.float32),
                axes[2][None, None, :].astype(np.float32))


def _sphere_weight(coords, regions, sharp: bool, fwhm_scale: float = 1.0) -> np.ndarray:
    x, y, z = coords
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)
    for (cx, cy, cz), radius in regions.values():
        for side in (1.0, -1.0):
            d2 = (x - side * cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2
            if sharp:
                np.maximum(out, (d2 <= radius ** 2).astype(np.float32), out=out)
            else:
                np.maximum(out, np.exp(-d2 / (2 * (radius * fwhm_scale) ** 2)), out=out)
    return out


def build_template_maps(spacing_mm: float = 1.0, margin_mm: float = 16.0,
                        config: PhantomConfig | None = None) -> TemplateMaps:
    """The MNI152 maps cropped to the brain plus ``margin_mm`` at ``spacing_mm`` (1 or 2).

    Cached per process (the arrays are read-only): cohorts and tests share them.
    """
    config = config or PhantomConfig()
    return _template_maps(float(spacing_mm), float(margin_mm), config.cortical_background_weight)


@lru_cache(maxsize=4)
def _template_maps(spacing_mm: float, margin_mm: float, cortex: float) -> TemplateMaps:
    from AmyloidKDLib.template import load_template

    template = load_template(1)
    brain = template.mask.data > 0
    idx = np.argwhere(brain)
    margin = int(round(margin_mm))
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, brain.shape)
    factor = int(spacing_mm)
    hi = lo + (hi - lo) // factor * factor
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))

    def take(array: np.ndarray) -> np.ndarray:
        a = np.asarray(array[crop], np.float32)
        if factor > 1:
            s = a.shape
            a = a.reshape(s[0] // factor, factor, s[1] // factor, factor, s[2] // factor,
                          factor).mean(axis=(1, 3, 5))
        return np.ascontiguousarray(a, np.float32)

    affine = template.affine.copy()
    affine[:3, 3] = template.affine[:3, :3] @ (lo + (factor - 1) / 2.0) + template.affine[:3, 3]
    affine[:3, :3] = template.affine[:3, :3] * factor
    t1, gm, wm = take(template.t1.data), take(template.gm.data), take(template.wm.data)
    brain_f = take(brain.astype(np.float32))
    gm = np.minimum(gm, brain_f)
    wm = np.minimum(wm, brain_f - gm)
    csf = np.clip(brain_f - gm - wm, 0.0, 1.0)
    outside = ndimage.distance_transform_edt(brain_f < 0.5).astype(np.float32) * factor
    maps = TemplateMaps(affine, t1, gm, wm, csf, brain_f, t1, t1, outside,
                        float(np.median(t1[gm > 0.8])), float(np.median(t1[(csf > 0.8)])))
    coords = maps.mni_coordinates()
    early = _sphere_weight(coords, EARLY_AMYLOID_REGIONS, sharp=False)
    weight = cortex + (1.0 - cortex) * early
    x, y, z = coords
    cerebellum = (y < -40) & (z < -20)
    maps.amyloid_weight = np.where(cerebellum, 0.0, weight).astype(np.float32)
    maps.atrophy_weight = _sphere_weight(coords, ATROPHY_REGIONS, sharp=False)
    for name in ("t1", "gm", "wm", "csf", "brain", "amyloid_weight", "atrophy_weight", "outside_mm"):
        getattr(maps, name).flags.writeable = False
    return maps


def region_masks(maps: TemplateMaps, gm_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Boolean masks on the maps' grid: ``cortical_amyloid`` (early-amyloid regions in GM),
    ``atrophy`` (atrophy regions in GM), ``cerebellum_gm`` (the SUVR reference)."""
    coords = maps.mni_coordinates()
    gm = maps.gm > gm_threshold
    x, y, z = coords
    return {
        "cortical_amyloid": gm & (_sphere_weight(coords, EARLY_AMYLOID_REGIONS, sharp=True) > 0),
        "atrophy": gm & (_sphere_weight(coords, ATROPHY_REGIONS, sharp=True) > 0),
        "cerebellum_gm": gm & np.broadcast_to((y < -50) & (z < -25), gm.shape),
    }


# ------------------------------------------------------------------------------ synthesis
def _brain_box_mm(maps: TemplateMaps) -> tuple[np.ndarray, np.ndarray]:
    idx = np.argwhere(maps.brain > 0.5)
    corners = np.stack([idx.min(0), idx.max(0)]) @ maps.affine[:3, :3].T + maps.affine[:3, 3]
    return corners.min(0), corners.max(0)


def subject_displacement(subject: SubjectTruth, seed: int, config: PhantomConfig,
                         box: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A subject's own smooth random displacement (3, nx, ny, nz) in mm and its grid origin."""
    spacing = config.deformation_spacing_mm
    origin = np.floor(box[0] - 2 * spacing)
    n = np.ceil((box[1] - origin) / spacing).astype(int) + 3
    rng = _rng(seed, subject.index, 2)
    field_ = rng.normal(size=(3, *n))
    field_ = np.stack([ndimage.gaussian_filter(c, 1.0, mode="nearest") for c in field_])
    field_ *= config.deformation_mm / max(float(field_.std()), 1e-6)
    return field_, origin


def _ventricle_displacement(expansion: float, origin: np.ndarray, spacing: float,
                            shape: Sequence[int]) -> np.ndarray:
    axes = [origin[a] + spacing * np.arange(shape[a]) - VENTRICLE_CENTRE_MM[a] for a in range(3)]
    d = np.stack(np.meshgrid(*axes, indexing="ij"))
    bump = np.exp(-(d ** 2).sum(0) / (2 * 25.0 ** 2))
    return -expansion * d * bump  # pulling towards the centre enlarges the ventricles


def _pose(rng: np.random.Generator, config: PhantomConfig) -> tuple[tuple, tuple]:
    rot = tuple(round(float(v), 3) for v in rng.uniform(-config.rotation_deg, config.rotation_deg, 3))
    shift = tuple(round(float(v), 3) for v in rng.uniform(-config.translation_mm,
                                                            config.translation_mm, 3))
    return rot, shift


def _grid(box: tuple[np.ndarray, np.ndarray], pad_mm: float, spacing: float,
          shift: Sequence[float], rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, ...]]:
    fov = box[1] - box[0] + 2 * pad_mm
    shape = tuple(int(v) for v in np.ceil(fov / spacing))
    centre = (box[0] + box[1]) / 2 + np.asarray(shift) + rng.uniform(-3, 3, 3)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = np.round(centre - spacing * (np.asarray(shape) - 1) / 2, 3)
    return affine, shape


def _orientation(rng: np.random.Generator, config: PhantomConfig) -> str:
    if rng.random() < config.orientation_mix:
        return str(config.orientations[int(rng.integers(len(config.orientations)))])
    return "RAS"


def _sample(channels: np.ndarray, maps: TemplateMaps, geometry: SessionGeometry,
            coarse_mm: float = COARSE_MAPPING_MM, bias_coefficients: np.ndarray | None = None,
            support_channel: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Pull template-space ``channels`` (C, X, Y, Z) onto the session grid (trilinear).

    The exact mapping is evaluated on a coarse grid (every ``coarse_mm``) and upsampled
    trilinearly, which is accurate because it is smooth; the smooth bias field rides along.
    torch's grid_sample is used rather than scipy's map_coordinates: it samples several
    channels per coordinate computation and uses every core. With ``support_channel``, only
    voxels near where that channel is non-zero are sampled (the rest stay 0).
    """
    import torch
    import torch.nn.functional as F

    shape = geometry.grid_shape
    step = max(1, int(round(coarse_mm / float(np.linalg.norm(geometry.grid_affine[:3, 0])))))
    coarse = [np.arange(0, s - 1 + step, step) for s in shape]  # may overshoot: exact anyway
    n_coarse = [len(c) for c in coarse]
    ijk = np.stack(np.meshgrid(*coarse, indexing="ij"), axis=-1).reshape(-1, 3)
    world = geometry.voxel_world(ijk)
    mni = geometry.world_to_mni(world)
    inv = np.linalg.inv(maps.affine)
    vox = mni @ inv[:3, :3].T + inv[:3, 3]
    # only the part of the grid that sees the template crop needs sampling; the rest is 0
    seen = np.all((vox > -1) & (vox < np.asarray(maps.shape)), axis=1).reshape(n_coarse)
    out_channels = np.zeros((len(channels), *shape), np.float32)
    bias = np.ones(shape, np.float32) if bias_coefficients is not None else None
    if not seen.any():
        return out_channels, bias
    where = np.argwhere(seen)
    lo = np.maximum(where.min(0) - 1, 0)
    hi = np.minimum(where.max(0) + 1, np.asarray(n_coarse) - 1)
    norm_ = 2.0 * vox / (np.asarray(maps.shape) - 1) - 1.0
    planes = [norm_[:, 2], norm_[:, 1], norm_[:, 0]]  # grid_sample wants (W, H, D) order
    if bias_coefficients is not None:
        p = (world - world.mean(0)) / 80.0
        linear, quad = bias_coefficients[:3], bias_coefficients[3:].reshape(3, 3)
        planes.append(np.exp(p @ linear + np.einsum("ni,ij,nj->n", p, quad, p)))
    block = np.stack(planes).astype(np.float32).reshape(len(planes), *n_coarse)
    block = block[:, lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
    start = lo * step
    stop = np.minimum(hi * step, np.asarray(shape) - 1)
    box = tuple(slice(a, b + 1) for a, b in zip(start, stop))
    sub_shape = tuple(int(v) for v in stop - start + 1)
    coarse_block = torch.from_numpy(np.ascontiguousarray(block))[None]
    source = torch.from_numpy(np.ascontiguousarray(channels, np.float32))[None]
    if support_channel is None:
        dense = F.interpolate(coarse_block, size=tuple(int(v) for v in (hi - lo) * step + 1),
                              mode="trilinear", align_corners=True)
        dense = dense[:, :, :sub_shape[0], :sub_shape[1], :sub_shape[2]]
        grid = dense[:, :3].permute(0, 2, 3, 4, 1).contiguous()
        sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=True)
        out_channels[(slice(None),) + box] = sampled[0].numpy()
        if bias is not None:
            bias[box] = dense[0, 3].numpy()
        return out_channels, bias
    # Only voxels near the support (the brain) are sampled: find them at half resolution
    # first, then sample the full-resolution voxels of that neighbourhood as a point list.
    half = np.stack(np.meshgrid(*[np.arange(0, n, 2) for n in sub_shape], indexing="ij"), -1)
    support = _sample_points(coarse_block, step, half.reshape(-1, 3),
                             source[:, support_channel:support_channel + 1])[0]
    near = ndimage.binary_dilation(support.reshape(half.shape[:3]) > 0.01)
    for axis in range(3):
        near = np.repeat(near, 2, axis=axis)
    near = near[:sub_shape[0], :sub_shape[1], :sub_shape[2]]
    points = np.argwhere(near)
    values, planes_at = _sample_points(coarse_block, step, points, source, with_planes=True)
    view = out_channels[(slice(None),) + box]
    view[:, near] = values
    if bias is not None:
        bias[box][near] = planes_at[3]
    return out_channels, bias


def _sample_points(coarse_block, step: int, points: np.ndarray, source, with_planes: bool = False):
    """Sample ``source`` at sub-box voxel ``points`` (N, 3), whose template coordinates (and
    bias) are trilinear in ``coarse_block`` (1, P, n0, n1, n2) with ``step`` voxels per cell."""
    import torch
    import torch.nn.functional as F

    n_block = np.asarray(coarse_block.shape[2:], np.float64)
    where = 2.0 * (points / step) / np.maximum(n_block - 1, 1) - 1.0
    grid = torch.from_numpy(where[:, ::-1].astype(np.float32).copy()).view(1, 1, 1, -1, 3)
    planes = F.grid_sample(coarse_block, grid, mode="bilinear", align_corners=True)
    template_grid = planes[:, :3].reshape(1, 3, -1).permute(0, 2, 1).reshape(1, 1, 1, -1, 3)
    values = F.grid_sample(source, template_grid.contiguous(), mode="bilinear",
                           padding_mode="zeros", align_corners=True)
    values = values.reshape(source.shape[1], -1).numpy()
    if with_planes:
        return values, planes.reshape(planes.shape[1], -1).numpy()
    return values


def _gm_loss(maps: TemplateMaps, truth: SessionTruth) -> np.ndarray:
    loss = maps.gm * (truth.regional_gm_loss * maps.atrophy_weight + truth.global_gm_loss)
    return np.clip(loss, -maps.csf, maps.gm)


def _shell(maps: TemplateMaps, contrast: str) -> np.ndarray:
    d = maps.outside_mm
    csf, bone, scalp = SHELL_INTENSITY[contrast]
    layers = np.select([d <= 0, d <= SHELL_LAYERS_MM[0], d <= SHELL_LAYERS_MM[1],
                        d <= SHELL_LAYERS_MM[2]], [0.0, csf, bone, scalp], 0.0)
    return layers.astype(np.float32)


def synthesize_mri(maps: TemplateMaps, truth: SessionTruth, geometry: SessionGeometry,
                   rng: np.random.Generator, config: PhantomConfig) -> dict[str, Volume]:
    """The session's MRI contrasts as RAS Volumes (scanner-like integer intensities)."""
    loss = _gm_loss(maps, truth)
    names = list(config.contrasts)
    channels = np.empty((len(names) + (0 if config.skull else 1), *maps.shape), np.float32)
    gm, csf = maps.gm - loss, maps.csf + loss
    for c, name in enumerate(names):
        out = channels[c]
        if name == "T1w":
            np.multiply(loss, -(maps.t1_gm - maps.t1_csf), out=out)
            out += maps.t1
        else:
            weights = T2_TISSUE if name == "T2w" else FLAIR_TISSUE
            np.multiply(gm, weights["gm"], out=out)
            out += weights["wm"] * maps.wm
            out += weights["csf"] * csf
        if config.skull:
            out += _shell(maps, name)
    if not config.skull:
        channels[-1] = maps.brain
    bias_coefficients = rng.normal(0.0, config.bias_strength, 12)
    bias_coefficients[3:] *= 0.5
    sampled, bias = _sample(channels, maps, geometry, bias_coefficients=bias_coefficients,
                            support_channel=None if config.skull else len(channels) - 1)
    gain = float(rng.uniform(0.85, 1.15)) * MRI_FULL_SCALE
    sigma = config.mri_noise * MRI_FULL_SCALE
    n_voxels = int(np.prod(geometry.grid_shape))
    # skull-free scans are zero outside the brain, so only brain voxels need noise
    inside = (np.arange(n_voxels) if config.skull
              else np.flatnonzero(sampled[-1].reshape(-1) > 0.5))
    scale = bias.reshape(-1)[inside] * gain
    volumes = {}
    for c, name in enumerate(names):
        signal = sampled[c].reshape(-1)[inside] * scale
        noisy = np.hypot(signal + sigma * rng.standard_normal(signal.shape, np.float32),
                         sigma * rng.standard_normal(signal.shape, np.float32))
        data = np.zeros(n_voxels, np.float32)
        data[inside] = np.minimum(np.rint(noisy), 32767)
        volumes[name] = Volume(data.reshape(geometry.grid_shape), geometry.grid_affine, name,
                               truth.mr_session_id)
    return volumes


def synthesize_pet(maps: TemplateMaps, truth: SessionTruth, geometry: SessionGeometry,
                   rng: np.random.Generator, config: PhantomConfig) -> Volume:
    """The session's amyloid PET as an SUVR Volume (cerebellar grey matter = 1)."""
    loss = _gm_loss(maps, truth)
    gm, csf = maps.gm - loss, maps.csf + loss
    jitter = float(rng.normal(1.0, 0.03))
    uptake = 1.0 + maps.amyloid_weight * (truth.cortical_suvr - 1.0) * jitter
    d = maps.outside_mm
    extracerebral = np.where(d > 0, 0.3 * np.clip((12.0 - d) / 4.0, 0.0, 1.0), 0.0)
    suvr = (gm * uptake + maps.wm * config.white_matter_suvr[truth.tracer] + 0.2 * csf
            + extracerebral).astype(np.float32)
    sampled, _ = _sample(suvr[None], maps, geometry)
    data = sampled[0]
    sigma = config.pet_fwhm_mm / (2 * math.sqrt(2 * math.log(2))) / config.pet_spacing_mm
    amplitude = config.pet_noise * (2 * math.sqrt(math.pi) * sigma) ** 1.5
    data += amplitude * np.sqrt(np.maximum(data, 0.05)) * rng.standard_normal(
        data.shape, dtype=np.float32)
    data = ndimage.gaussian_filter(data, sigma, mode="constant")
    return Volume(np.maximum(data, 0.0), geometry.grid_affine, "PET", truth.session_id)


def write_scan(volume: Volume, code: str, path: Path, dtype: type) -> Path:
    """Write ``volume`` stored in axis code ``code`` as ``dtype``, atomically.

    The data are cast once here (MRI values are already integers); handing float32 to
    nibabel with an int16 target makes it scale chunk by chunk, several times slower.
    """
    import nibabel as nib

    stored = reorient_for_storage(volume, code)
    img = nib.Nifti1Image(np.ascontiguousarray(stored.data.astype(dtype)), stored.affine)
    img.set_qform(stored.affine, code=1)
    img.set_sform(stored.affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.nii.gz", dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def reorient_for_storage(volume: Volume, code: str) -> Volume:
    """The same image with data and affine permuted/flipped to axis code ``code`` (e.g. LPS)."""
    from nibabel import orientations as ornt_

    if code == "RAS":
        return volume
    transform = ornt_.ornt_transform(ornt_.axcodes2ornt("RAS"), ornt_.axcodes2ornt(tuple(code)))
    data = ornt_.apply_orientation(volume.data, transform)
    affine = volume.affine @ ornt_.inv_ornt_aff(transform, volume.shape)
    return Volume(data, affine, volume.modality, volume.source)


# -------------------------------------------------------------------------------- writing
def mri_relpath(subject_id: str, day: int, contrast: str) -> str:
    """Path of an MR contrast inside the OASIS-3 style tree (BIDS-like)."""
    ses = f"ses-d{day:04d}"
    return f"sub-{subject_id}/{ses}/anat/sub-{subject_id}_{ses}_{contrast}.nii.gz"


def pet_relpath(pet_session_id: str) -> str:
    """Path of a PUP-like SUVR image inside the OASIS-3 style tree."""
    return f"PUP/{pet_session_id}/{pet_session_id}_SUVR.nii.gz"


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _csv_text(header: Sequence[str], rows: list[dict]) -> str:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


@dataclass
class _Scan:
    """One MR session or PET image to synthesise."""

    truth: SessionTruth
    kind: str                   # "mri" or "pet"
    day: int
    label: str                  # session label used for its geometry file


def _plan(subjects: list[SubjectTruth], sessions: dict[str, list[SessionTruth]], seed: int,
          layout: str, config: PhantomConfig) -> list[_Scan]:
    scans = []
    for subject in subjects:
        own = sessions[subject.subject_id]
        for truth in own:
            if truth.mr_day is None and layout == "manifest":
                continue
            if truth.mr_day is not None:
                scans.append(_Scan(truth, "mri", truth.mr_day, truth.mr_session_id))
            scans.append(_Scan(truth, "pet", truth.pet_day, truth.session_id))
        if subject.extra_mr and layout != "manifest":
            last = own[-1]
            rng = _rng(seed, subject.index, 3)
            offset = int(rng.integers(200, 331) if last.mr_day is not None else rng.integers(400, 601))
            day = last.pet_day + offset
            scans.append(_Scan(last, "mri", day, f"{subject.subject_id}_MR_d{day:04d}"))
    return scans


def _montage(path: Path, shown: list[tuple[SessionTruth, Volume, Volume]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.4 * len(shown), 5.2), dpi=90)
    FigureCanvasAgg(fig)
    for col, (truth, t1, pet) in enumerate(shown):
        for row, (volume, cmap, window) in enumerate(((t1, "gray", None), (pet, "hot", (0.0, 3.0)))):
            inv = np.linalg.inv(volume.affine)
            k = int(round((inv @ np.array([0.0, -30.0, 35.0, 1.0]))[2]))
            k = min(max(k, 0), volume.shape[2] - 1)
            ax = fig.add_subplot(2, len(shown), row * len(shown) + col + 1)
            image = volume.data[:, :, k].T
            vmin, vmax = window or (0.0, float(np.percentile(volume.data, 99.5)) or 1.0)
            ax.imshow(image, cmap=cmap, origin="lower", vmin=vmin, vmax=vmax)
            ax.set_axis_off()
            if row == 0:
                status = "A+" if truth.label else "A-"
                ax.set_title(f"{truth.subject_id}\n{status}  CL {truth.centiloid:.0f}  {truth.tracer}",
                             fontsize=8)
            elif col == 0:
                ax.set_title("PET SUVR 0-3", fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, metadata={"Software": None})
    os.replace(tmp, path)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; choose a folder for the cohort")
    if out_dir.exists() and any(out_dir.iterdir()):
        marker = out_dir / "ground_truth" / "cohort.json"
        if not overwrite or not marker.exists():
            raise InputError(
                f"{out_dir}: folder is not empty; choose an empty or new folder"
                + (" (or pass overwrite=True / --overwrite to replace the cohort in it)"
                   if marker.exists() else ""))
        import shutil

        shutil.rmtree(out_dir)


def _make_scan(scan: _Scan, subject: SubjectTruth, displacement: tuple[np.ndarray, np.ndarray],
               maps_by_kind: dict[str, TemplateMaps], box: tuple[np.ndarray, np.ndarray], seed: int,
               config: PhantomConfig, out_dir: Path, writer: ThreadPoolExecutor,
               pending: list[Future]) -> dict[str, Volume]:
    """Synthesise one scan, queue its files for writing and save its geometry."""
    truth = scan.truth
    is_mri = scan.kind == "mri"
    rng = _rng(seed, subject.index, 10 + truth.session_index, 0 if is_mri else 1, scan.day)
    base, origin = displacement
    spacing = config.deformation_spacing_mm
    disp = np.round(base + _ventricle_displacement(truth.ventricle_expansion, origin, spacing,
                                                   base.shape[1:]), 3)
    rot, shift = _pose(rng, config)
    grid_spacing = config.mri_spacing_mm if is_mri else config.pet_spacing_mm
    pad = (26.0 if config.skull else 10.0) if is_mri else 18.0
    affine, shape = _grid(box, pad, grid_spacing, shift, rng)
    geometry = SessionGeometry(rot, shift, tuple(float(v) for v in origin), spacing, disp,
                               affine, shape, "RAS")
    if is_mri:
        volumes = synthesize_mri(maps_by_kind["mri"], truth, geometry, rng, config)
        paths = {name: mri_relpath(truth.subject_id, scan.day, name) for name in volumes}
    else:
        volumes = {"PET": synthesize_pet(maps_by_kind["pet"], truth, geometry, rng, config)}
        paths = {"PET": pet_relpath(truth.session_id)}
    codes = {}
    for name, volume in volumes.items():
        codes[name] = _orientation(rng, config)
        pending.append(writer.submit(write_scan, volume, codes[name], out_dir / paths[name],
                                     np.float32 if name == "PET" else np.int16))
    while len(pending) > 3:
        pending.pop(0).result()
    record = geometry.to_dict()
    record.update(stored_orientation=codes, files=paths, kind=scan.kind)
    _atomic_text(out_dir / "ground_truth" / "geometry" / f"{scan.label}.json",
                 json.dumps(record, sort_keys=True))
    return volumes


def generate_cohort(out_dir: str | os.PathLike, n_subjects: int, seed: int,
                    layout: str = "manifest", config: PhantomConfig | None = None, *,
                    overwrite: bool = False, progress: bool = True) -> Path:
    """Write a synthetic PET/MRI cohort to ``out_dir``; deterministic per ``seed``.

    Args:
        out_dir: a new or empty folder (a previous cohort is replaced with ``overwrite``).
        n_subjects: number of subjects (each with 1 to ``config.max_sessions`` PET sessions).
        seed: the same seed and config give byte-identical files.
        layout: ``manifest`` (``manifest.csv`` + images), ``oasis3`` (OASIS-3 style tree and
            CSVs, including PET sessions without an MR within 365 days and extra MR-only
            sessions) or ``both``.
        config: every knob; the defaults are the demo's.

    Returns:
        ``out_dir/manifest.csv`` for ``manifest`` and ``both``; ``out_dir`` (the OASIS-3
        root) for ``oasis3``. Ground truth goes to ``out_dir/ground_truth/``, a montage of a
        few subjects to ``out_dir/montage.png``.
    """
    from tqdm import tqdm

    config = config or PhantomConfig()
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if int(n_subjects) < 1:
        raise ConfigError(f"n_subjects must be >= 1, got {n_subjects}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)

    subjects = [sample_subject(i, seed, config) for i in range(int(n_subjects))]
    sessions = {s.subject_id: sample_sessions(s, seed, config) for s in subjects}
    maps_by_kind = {"mri": build_template_maps(config.mri_spacing_mm,
                                               16.0 if config.skull else 4.0, config),
                    "pet": build_template_maps(config.pet_spacing_mm, 16.0, config)}
    box = _brain_box_mm(maps_by_kind["mri"])
    displacements = {s.subject_id: subject_displacement(s, seed, config, box) for s in subjects}

    scans = _plan(subjects, sessions, seed, layout, config)
    by_id = {s.subject_id: s for s in subjects}
    t1_by_session: dict[str, Volume] = {}
    shown: list[tuple[SessionTruth, Volume, Volume]] = []
    # compression runs in a second thread (zlib releases the GIL) while the next scan is built
    writer = ThreadPoolExecutor(max_workers=1)
    pending: list[Future] = []
    try:
        for scan in tqdm(scans, desc="phantom scans", unit="scan", disable=not progress):
            truth = scan.truth
            volumes = _make_scan(scan, by_id[truth.subject_id], displacements[truth.subject_id],
                                 maps_by_kind, box, seed, config, out_dir, writer, pending)
            quota = math.ceil(config.montage_subjects / 2)  # as many A+ as A- where possible
            if (len(shown) >= config.montage_subjects or truth.session_index
                    or sum(t.label == truth.label for t, _, _ in shown) >= quota):
                continue
            if scan.kind == "mri" and scan.label == truth.mr_session_id:
                t1_by_session[truth.session_id] = volumes["T1w"]
            elif scan.kind == "pet" and truth.session_id in t1_by_session:
                shown.append((truth, t1_by_session.pop(truth.session_id), volumes["PET"]))
        t1_by_session.clear()
    finally:
        for future in pending:
            future.result()
        writer.shutdown()

    all_sessions = [t for s in subjects for t in sessions[s.subject_id]]
    _write_truth(out_dir, all_sessions, subjects, seed, layout, config)
    if shown:
        _montage(out_dir / "montage.png", shown)
    manifest = out_dir / "manifest.csv"
    if layout in ("manifest", "both"):
        _write_manifest(manifest, all_sessions, config)
    if layout in ("oasis3", "both"):
        _write_oasis_csvs(out_dir, all_sessions, subjects)
    return out_dir if layout == "oasis3" else manifest


def _write_truth(out_dir: Path, sessions: list[SessionTruth], subjects: list[SubjectTruth],
                 seed: int, layout: str, config: PhantomConfig) -> None:
    header = [f.name for f in fields(SessionTruth)]
    rows = [{k: ("" if v is None else v) for k, v in asdict(s).items()} for s in sessions]
    _atomic_text(out_dir / "ground_truth" / "sessions.csv", _csv_text(header, rows))
    cohort = {"seed": seed, "n_subjects": len(subjects), "layout": layout,
              "config": config.to_dict(), "mixture_weight": mixture_weight(config),
              "early_amyloid_regions": EARLY_AMYLOID_REGIONS, "atrophy_regions": ATROPHY_REGIONS,
              "subjects": [asdict(s) for s in subjects]}
    _atomic_text(out_dir / "ground_truth" / "cohort.json", json.dumps(cohort, indent=1))


def _write_manifest(path: Path, sessions: list[SessionTruth], config: PhantomConfig) -> None:
    rows = []
    for s in sessions:
        if s.mr_day is None:
            continue
        row = {"subject_id": s.subject_id, "session_id": s.session_id,
               "pet_path": pet_relpath(s.session_id), "tracer": s.tracer,
               "centiloid": _fmt(s.centiloid), "label": s.label, "age": _fmt(s.age, 1)}
        for contrast, column in CONTRAST_COLUMNS.items():
            row[column] = mri_relpath(s.subject_id, s.mr_day, contrast) if contrast in config.contrasts else ""
        rows.append(row)
    _atomic_text(path, _csv_text(MANIFEST_COLUMNS, rows))


def _write_oasis_csvs(root: Path, sessions: list[SessionTruth], subjects: list[SubjectTruth]) -> None:
    rows = []
    for s in sessions:
        rows.append({"subject_id": s.subject_id, "oasis_session_id": s.session_id,
                     "tracer": s.tracer,
                     "Centiloid_fBP_TOT_CORTMEAN": _fmt(0.97 * s.centiloid) if s.tracer == "PIB" else "",
                     "Centiloid_fSUVR_TOT_CORTMEAN": _fmt(s.centiloid),
                     "Centiloid_fBP_rsf_TOT_CORTMEAN": _fmt(1.05 * s.centiloid) if s.tracer == "PIB" else "",
                     "Centiloid_fSUVR_rsf_TOT_CORTMEAN": _fmt(1.08 * s.centiloid)})
    _atomic_text(root / OASIS_CENTILOID_CSV, _csv_text(OASIS_CENTILOID_COLUMNS, rows))
    demo = [{"OASISID": s.subject_id, "AgeatEntry": _fmt(s.age_at_entry)} for s in subjects]
    _atomic_text(root / OASIS_DEMOGRAPHICS_CSV, _csv_text(("OASISID", "AgeatEntry"), demo))
    clinical = [{"OASISID": s.subject_id, "OASIS_session_label": f"{s.subject_id}_UDSb4_d{s.pet_day:04d}",
                 "days_to_visit": s.pet_day, "age at visit": _fmt(s.age, 1)} for s in sessions]
    _atomic_text(root / OASIS_CLINICAL_CSV,
                 _csv_text(("OASISID", "OASIS_session_label", "days_to_visit", "age at visit"), clinical))


# ------------------------------------------------------------------------------ measuring
def _mni_points(maps: TemplateMaps, mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask) @ maps.affine[:3, :3].T + maps.affine[:3, 3]


def _values_at(volume: Volume, geometry: SessionGeometry, mni_points: np.ndarray) -> np.ndarray:
    world = geometry.mni_to_world(mni_points)
    inv = np.linalg.inv(volume.affine)
    return ndimage.map_coordinates(volume.data, (world @ inv[:3, :3].T + inv[:3, 3]).T, order=1)


def measure_cohort(root: str | os.PathLike, maps: TemplateMaps | None = None
                   ) -> dict[str, np.ndarray]:
    """Simple read-outs of a written cohort, through the real loader and the true geometry.

    Per paired session: ``suvr`` (mean PET in the early-amyloid GM regions over cerebellar
    GM), ``gm`` (mean T1 in the atrophy regions' GM over nearby WM: a regional grey-matter
    measure that cancels the bias field), with ``centiloid``, ``tracer`` and ``age`` from the
    ground truth. Used to check (and report) how strongly each modality shows amyloid.
    """
    from AmyloidKDLib.volume import load_volume

    root = Path(root)
    maps = maps or build_template_maps(2.0, 4.0)
    masks = region_masks(maps)
    cortical = _mni_points(maps, masks["cortical_amyloid"])
    cerebellum = _mni_points(maps, masks["cerebellum_gm"])
    coords = maps.mni_coordinates()
    regions = []
    for name, (centre, radius) in ATROPHY_REGIONS.items():
        inner = _sphere_weight(coords, {name: (centre, radius)}, sharp=True) > 0
        outer = _sphere_weight(coords, {name: (centre, radius + 12.0)}, sharp=True) > 0
        regions.append((_mni_points(maps, inner & (maps.gm > 0.5)),
                        _mni_points(maps, outer & (maps.wm > 0.9))))

    def geometry(label: str) -> tuple[SessionGeometry, dict]:
        record = json.loads((root / "ground_truth" / "geometry" / f"{label}.json").read_text())
        return SessionGeometry.from_dict(record), record

    with open(root / "ground_truth" / "sessions.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["mr_session_id"]]
    out: dict[str, list] = {"centiloid": [], "suvr": [], "gm": [], "tracer": [], "age": []}
    for row in rows:
        pet_geometry, record = geometry(row["session_id"])
        if not (root / record["files"]["PET"]).exists():
            continue
        pet = load_volume(root / record["files"]["PET"], "PET")
        out["suvr"].append(float(_values_at(pet, pet_geometry, cortical).mean()
                                 / _values_at(pet, pet_geometry, cerebellum).mean()))
        mri_geometry, record = geometry(row["mr_session_id"])
        t1 = load_volume(root / record["files"]["T1w"], "T1w")
        out["gm"].append(float(np.mean([
            _values_at(t1, mri_geometry, gm).mean() / _values_at(t1, mri_geometry, wm).mean()
            for gm, wm in regions])))
        out["centiloid"].append(float(row["centiloid"]))
        out["tracer"].append(row["tracer"])
        out["age"].append(float(row["age"]))
    return {k: np.asarray(v) for k, v in out.items()}
