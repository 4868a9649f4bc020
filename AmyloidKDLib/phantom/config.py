"""The phantom's knobs (:class:`PhantomConfig`) and the amyloid relations they set."""

from __future__ import annotations

from dataclasses import dataclass, field

from AmyloidKDLib import configs
from AmyloidKDLib.errors import ConfigError

TRACERS = ("AV45", "PIB")
#: Tracers a cohort can draw with ``pet_relation="centiloid"`` (``tracer_mix``); the default
#: cohort draws only ``TRACERS``.
CENTILOID_TRACERS = ("AV45", "PIB", "FBB", "FMM", "NAV4694")
#: White-matter SUVR of the tracers beyond ``TRACERS`` (phantom knobs, not measurements:
#: florbetaben and flutemetamol bind white matter more than PiB, NAV4694 less).
EXTRA_WHITE_MATTER_SUVR = {"FBB": 1.6, "FMM": 1.8, "NAV4694": 1.3}
PET_RELATIONS = ("regional", "centiloid")
PHANTOM_CONTRASTS = ("T1w", "T2w", "FLAIR")


@dataclass
class PhantomConfig(configs.DictConfig):
    """Every knob of the synthetic cohort (JSON-serialisable; defaults are the demo's).

    Amyloid: a two-component Gaussian mixture of baseline Centiloid whose mixing weight is
    solved so that ``prevalence`` of baseline sessions lie above ``label_threshold``.
    MRI effects are fractions of grey matter turned into CSF; ventricle effects are linear
    expansion factors around the ventricles' centre.

    Generator v2 (see ``docs/synthetic_cohort.md``): the *true* Centiloid drives PET uptake and
    amyloid-related atrophy; the Centiloid written out (and the label) is a PET measurement of
    it with ``centiloid_noise_sd`` of noise. Each subject has its own atrophy slope (lognormal
    around ``atrophy_per_100cl``, spread ``atrophy_slope_sd``) and its own weights over the
    ``ATROPHY_REGIONS`` (Dirichlet, concentration ``atrophy_pattern_concentration``). MRI also
    shows changes unrelated to amyloid: age, white-matter lesions (``wm_lesion_*``) and a few
    random cortical spheres of grey-matter loss per subject (``random_atrophy_*``).
    ``mri_effect_scale`` multiplies every amyloid-related MRI effect (1: the realistic
    default, calibrated so the generator's own best MRI measure reaches AUC ~0.8).
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
    # "regional" (default): cortical_suvr above is the early-amyloid grey matter's SUVR.
    # "centiloid": the PET's SUVR in the built-in CTX/WhlCbl VOIs follows the tracer's published
    # Centiloid equation (AmyloidKDLib.centiloid); phantom/centiloid_scale.py, docs/centiloid.md
    pet_relation: str = "regional"
    # tracer -> weight of the tracer draw (empty: PIB with pib_share, else AV45); tracers other
    # than AV45/PIB need pet_relation "centiloid" and a white_matter_suvr entry
    tracer_mix: dict[str, float] = field(default_factory=dict)
    cortical_background_weight: float = 0.35  # amyloid in cortex outside the early regions
    age_mean: float = 71.0
    age_sd: float = 7.0
    age_range: tuple[float, float] = (50.0, 95.0)
    age_shift_positive: float = 4.0           # amyloid-positive subjects are older: confound
    # Measured Centiloid = true + N(0, sd): the manifest's centiloid and the label use it
    centiloid_noise_sd: float = 4.0           # CL; PET test-retest scale
    atrophy_per_100cl: float = 0.06           # median regional GM fraction lost at 100 Centiloid
    atrophy_slope_sd: float = 0.6             # log-sd of a subject's own slope (lognormal)
    atrophy_onset_cl: float = 0.0             # no amyloid-related loss below this true Centiloid
    atrophy_pattern_concentration: float = 2.0  # Dirichlet over ATROPHY_REGIONS (small: focal)
    mri_effect_scale: float = 1.0             # multiplies every amyloid-related MRI effect
    atrophy_per_decade: float = 0.05          # regional GM fraction lost per decade above 70
    global_atrophy_share: float = 0.5         # age atrophy elsewhere, relative to regional
    anatomy_sd: float = 0.06                  # a subject's own GM variation, per region
    global_atrophy_sd: float = 0.02           # a subject's own global GM variation
    # white-matter lesions (vascular, unrelated to amyloid): load = median * lognormal(sd) *
    # max(age - wm_lesion_onset_age, 0) / 10 (fraction of the periventricular/deep WM map)
    wm_lesion_per_decade: float = 0.12
    wm_lesion_sd: float = 0.8
    wm_lesion_onset_age: float = 50.0
    # random cortical GM loss unrelated to amyloid: 0..max spheres per subject
    random_atrophy_max_spheres: int = 3
    random_atrophy_radius_mm: tuple[float, float] = (8.0, 16.0)
    random_atrophy_loss: tuple[float, float] = (0.05, 0.25)   # GM fraction lost at the centre
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
                     "centiloid_per_year", "age_range", "session_gap_days",
                     "random_atrophy_radius_mm", "random_atrophy_loss"):
            setattr(self, name, tuple(getattr(self, name)))
        self.contrasts = tuple(self.contrasts)
        self.orientations = tuple(self.orientations)
        self.suvr_intercept = dict(self.suvr_intercept)
        self.suvr_slope = dict(self.suvr_slope)
        self.white_matter_suvr = dict(self.white_matter_suvr)
        self.tracer_mix = {str(k): float(v) for k, v in dict(self.tracer_mix).items()}
        if self.pet_relation == "centiloid":
            for tracer, value in EXTRA_WHITE_MATTER_SUVR.items():
                self.white_matter_suvr.setdefault(tracer, value)
        if self.pet_relation not in PET_RELATIONS:
            raise ConfigError(f"PhantomConfig.pet_relation must be one of {PET_RELATIONS}, "
                              f"got {self.pet_relation!r}")
        for tracer, weight in self.tracer_mix.items():
            allowed = CENTILOID_TRACERS if self.pet_relation == "centiloid" else TRACERS
            if tracer not in allowed:
                raise ConfigError(f"PhantomConfig.tracer_mix: {tracer!r} needs one of {allowed} "
                                  "(FBB, FMM and NAV4694 need pet_relation 'centiloid')")
            if tracer not in self.white_matter_suvr:
                raise ConfigError(f"PhantomConfig.white_matter_suvr needs a value for {tracer}")
            if not weight >= 0:
                raise ConfigError(f"PhantomConfig.tracer_mix[{tracer!r}] must be >= 0")
        if self.tracer_mix and not sum(self.tracer_mix.values()) > 0:
            raise ConfigError("PhantomConfig.tracer_mix needs a positive weight")
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
        for name in ("centiloid_noise_sd", "atrophy_slope_sd", "mri_effect_scale",
                     "wm_lesion_per_decade", "wm_lesion_sd", "global_atrophy_sd"):
            if getattr(self, name) < 0:
                raise ConfigError(f"PhantomConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.atrophy_pattern_concentration <= 0:
            raise ConfigError("PhantomConfig.atrophy_pattern_concentration must be > 0, got "
                              f"{self.atrophy_pattern_concentration}")
        if self.random_atrophy_max_spheres < 0:
            raise ConfigError("PhantomConfig.random_atrophy_max_spheres must be >= 0, got "
                              f"{self.random_atrophy_max_spheres}")
        if self.montage_subjects < 0:
            raise ConfigError(f"PhantomConfig.montage_subjects must be >= 0 (0: no montage), "
                              f"got {self.montage_subjects}")
        if self.max_sessions < 2:
            raise ConfigError(f"PhantomConfig.max_sessions must be >= 2, got {self.max_sessions}")
        if self.mr_pet_gap_days * 2 + 365 >= self.session_gap_days[0]:
            raise ConfigError("PhantomConfig.session_gap_days must exceed 2*mr_pet_gap_days + 365 "
                              "so that each PET pairs with its own MR session")
        mixture_weight(self)  # raises when the prevalence is unreachable


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
    """The SUVR a session's PET is built with at a true Centiloid.

    ``regional``: the early-amyloid grey matter's SUVR, ``suvr_intercept + suvr_slope * CL``.
    ``centiloid``: the standard-VOI SUVR of the tracer's published equation.
    """
    if config.pet_relation == "centiloid":
        from AmyloidKDLib.centiloid import tracer_equation

        return tracer_equation(tracer).suvr(centiloid)
    return config.suvr_intercept[tracer] + config.suvr_slope[tracer] * centiloid


def draw_tracer(uniform: float, config: PhantomConfig) -> str:
    """The tracer of a subject from one uniform draw in [0, 1) (``tracer_mix`` or ``pib_share``)."""
    if not config.tracer_mix:
        return "PIB" if uniform < config.pib_share else "AV45"
    total = sum(config.tracer_mix.values())
    edge = 0.0
    for tracer, weight in config.tracer_mix.items():
        edge += weight / total
        if uniform < edge:
            return tracer
    return next(t for t, w in reversed(config.tracer_mix.items()) if w > 0)

