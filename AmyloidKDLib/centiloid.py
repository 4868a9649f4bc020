"""PET quantification: SUVR in the standard Centiloid VOIs and the tracer's Centiloid equation.

One place for the PET side of the Centiloid scale (Klunk et al. 2015), used by the
``amyloidkd centiloid`` command, the Slicer module and dataset readers:

- the tracer equations, kept as data with their published source (:data:`TRACER_EQUATIONS`);
- the VOI sets: the GAAIN standard cortical target (CTX) and whole-cerebellum reference
  (WhlCbl) read from a folder the user gives, or an approximation built here from the MNI152
  2009 template that nilearn ships (:func:`load_voi_set`; ``docs/centiloid.md`` says why the
  GAAIN files are not shipped);
- SUVR = mean(CTX) / mean(WhlCbl) on unscaled PET resampled into MNI space
  (:func:`suvr_in_mni`), and the whole path from a PET and its MRI (:func:`quantify_pet`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from AmyloidKDLib.errors import ConfigError, InputError
from AmyloidKDLib.volume import Volume


@dataclass(frozen=True)
class TracerEquation:
    """``centiloid = slope * suvr + intercept`` for one tracer, standard VOIs, WhlCbl reference.

    Attributes:
        name: the tracer's short name, as written in results.
        slope, intercept: the published linear conversion.
        source: the publication the numbers come from.
        checked: what was checked against the source when the numbers were entered.
        aliases: other spellings accepted for ``name`` (case-insensitive).
    """

    name: str
    slope: float
    intercept: float
    source: str
    checked: str = ""
    aliases: tuple[str, ...] = ()

    def centiloid(self, suvr: float) -> float:
        """The Centiloid value of a whole-cerebellum SUVR."""
        return self.slope * float(suvr) + self.intercept

    def suvr(self, centiloid: float) -> float:
        """The SUVR that this equation turns into ``centiloid``."""
        return (float(centiloid) - self.intercept) / self.slope


def _scaled(name: str, suvr_0: float, suvr_100: float, **kwargs) -> TracerEquation:
    # Equations published as CL = 100 (SUVR - SUVR_0) / (SUVR_100 - SUVR_0)
    span = suvr_100 - suvr_0
    return TracerEquation(name, 100.0 / span, -100.0 * suvr_0 / span, **kwargs)


#: The published equations (standard GAAIN VOIs, whole-cerebellum reference, SPM8 pipeline).
TRACER_EQUATIONS: dict[str, TracerEquation] = {eq.name: eq for eq in (
    _scaled("PiB", 1.009, 1.009 + 1.067,
            source="Klunk et al. 2015, Alzheimer's & Dementia 11:1-15 (the Centiloid Project): "
                   "CL = 100 (SUVR - 1.009) / 1.067",
            checked="anchors 1.009 (young controls) and 2.076 (typical AD) taken from the "
                    "issue; the paper's abstract found here names the anchors but not the "
                    "numbers; Navitsky's replication on GAAIN data gave 1.004 and 2.067",
            aliases=("PIB", "11C-PiB", "C11-PiB", "pittsburgh")),
    TracerEquation("florbetapir", 175.4, -182.3,
                   source="Navitsky et al. 2018, Alzheimer's & Dementia 14:1565-1571",
                   checked="not found in the texts searchable here; numbers from the issue",
                   aliases=("AV45", "AV-45", "FBP", "18F-florbetapir", "amyvid")),
    TracerEquation("florbetaben", 153.4, -154.9,
                   source="Rowe et al. 2017, Eur J Nucl Med Mol Imaging 44:2053-2059",
                   checked="equation as printed in the abstract; with its regression "
                           "SUVR_FBB = 0.61 SUVR_PiB + 0.39 it maps the PiB anchors to -0.7 "
                           "and 99.2 CL",
                   aliases=("FBB", "18F-florbetaben", "neuraceq", "AV1")),
    TracerEquation("flutemetamol", 121.42, -121.16,
                   source="Battle et al. 2018, EJNMMI Research 8:107",
                   checked="equation as printed in the abstract; with its regression "
                           "SUVR_FMM = 0.77 SUVR_PiB + 0.22 it maps the PiB anchors to -0.1 "
                           "and 99.6 CL",
                   aliases=("FMM", "18F-flutemetamol", "vizamyl", "GE067")),
    _scaled("NAV4694", 1.028, 1.028 + 1.174,
            source="Rowe et al. 2016, J Nucl Med 57:1233-1237: CL = 100 (SUVR - 1.028) / 1.174",
            checked="not found in the texts searchable here; numbers from the issue",
            aliases=("NAV", "18F-NAV4694", "flutafuranol", "AZD4694")),
)}


def tracer_equation(name: str, equations: dict[str, TracerEquation] | None = None
                    ) -> TracerEquation:
    """The equation for a tracer name or alias (case-insensitive).

    Raises:
        InputError: the tracer is not known (the message lists the known names).
    """
    table = TRACER_EQUATIONS if equations is None else equations
    wanted = str(name).strip().lower()
    for equation in table.values():
        if wanted in {equation.name.lower(), *(a.lower() for a in equation.aliases)}:
            return equation
    raise InputError(f"unknown tracer {name!r}; use one of {', '.join(table)} (or an alias such "
                     "as AV45, FBB, FMM), or give your own equation with --equations FILE")


def read_equations(path: str | os.PathLike) -> dict[str, TracerEquation]:
    """The built-in equations plus those in a JSON file (same names replace built-in ones).

    The file maps a tracer name to ``{"slope", "intercept", "source"}`` (optional
    ``"aliases"``), e.g. a site's own Centiloid calibration (Klunk 2015 "level 2").

    Raises:
        ConfigError: unreadable file or an entry without numeric slope and intercept.
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the equations file ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the equations file must map tracer names to "
                          '{"slope": ..., "intercept": ..., "source": ...}')
    table = dict(TRACER_EQUATIONS)
    for name, entry in raw.items():
        try:
            slope, intercept = float(entry["slope"]), float(entry["intercept"])
        except (TypeError, KeyError, ValueError):
            raise ConfigError(f"{path}: entry {name!r} needs numeric 'slope' and "
                              "'intercept'") from None
        if not (math.isfinite(slope) and math.isfinite(intercept)) or slope == 0:
            raise ConfigError(f"{path}: entry {name!r} needs a finite, non-zero slope")
        table[name] = TracerEquation(name, slope, intercept, str(entry.get("source", path)),
                                     str(entry.get("checked", "user-supplied")),
                                     tuple(entry.get("aliases", ())))
    return table


# ----------------------------------------------------------------------------------- VOIs

#: File names of the GAAIN standard VOIs (as GAAIN and the amypet wheel distribute them).
GAAIN_FILES = {"ctx": "voi_ctx_{res}mm.nii", "reference": "voi_WhlCbl_{res}mm.nii"}
#: Environment variable naming the folder of the GAAIN VOIs (``--voi-dir`` wins over it).
VOI_DIR_ENV = "AMYLOIDKD_VOI_DIR"
GAAIN_SET = "gaain"
APPROXIMATE_SET = "approx-mni152-2009"
REFERENCE_REGION = "WhlCbl"


@dataclass(frozen=True)
class VoiSet:
    """A cortical target (CTX) and reference (WhlCbl) VOI pair in MNI space (0/1 volumes).

    ``approximate`` is True for the set built here from the MNI152 template; results computed
    with it are not standard Centiloid values and say so (``voi_set`` in the results).
    """

    name: str
    ctx: Volume
    reference: Volume
    source: str
    approximate: bool

    def on_grid(self, grid_volume: Volume) -> "VoiSet":
        """The same VOIs resampled (nearest neighbour, by world position) onto another grid."""
        if (grid_volume.shape == self.ctx.shape
                and np.allclose(grid_volume.affine, self.ctx.affine, atol=1e-4)):
            return self
        return VoiSet(self.name, _nearest(self.ctx, grid_volume),
                      _nearest(self.reference, grid_volume), self.source, self.approximate)


def _nearest(mask: Volume, target: Volume) -> Volume:
    from scipy import ndimage

    to_mask = np.linalg.inv(mask.affine) @ target.affine
    data = ndimage.affine_transform((mask.data > 0.5).astype(np.float32), to_mask[:3, :3],
                                    to_mask[:3, 3], output_shape=target.shape, order=0)
    return target.with_data((data > 0.5).astype(np.float32), "mask")


def _find_gaain_file(folder: Path, key: str) -> Path:
    for res in (2, 1):
        for suffix in ("", ".gz"):
            candidate = folder / (GAAIN_FILES[key].format(res=res) + suffix)
            if candidate.is_file():
                return candidate
    names = " or ".join(GAAIN_FILES[key].format(res=r) for r in (2, 1))
    raise InputError(f"{folder}: no {names} in this folder; point --voi-dir (or "
                     f"{VOI_DIR_ENV}) at the folder holding GAAIN's Centiloid VOIs")


def read_gaain_vois(folder: str | os.PathLike) -> VoiSet:
    """The GAAIN standard VOIs (``voi_ctx_2mm.nii``, ``voi_WhlCbl_2mm.nii``, or 1 mm) from a folder.

    Raises:
        InputError: the folder or a file is missing or not a usable mask.
    """
    from AmyloidKDLib.volume import load_volume

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; --voi-dir / {VOI_DIR_ENV} must name the "
                         "folder holding voi_ctx_2mm.nii and voi_WhlCbl_2mm.nii")
    masks = {}
    for key in GAAIN_FILES:
        path = _find_gaain_file(folder, key)
        volume = load_volume(path, "mask")
        masks[key] = volume.with_data((volume.data > 0.5).astype(np.float32), "mask")
    return VoiSet(GAAIN_SET, masks["ctx"], masks["reference"],
                  f"GAAIN Centiloid standard VOIs from {folder}", approximate=False)


#: How the approximate VOIs are cut from the template (MNI mm); see docs/centiloid.md.
APPROXIMATION = {
    "ctx_gm_min": 0.3,                   # template GM probability
    "frontal": {"y": (12.0, 66.0), "z": (-20.0, 58.0)},
    "posterior": {"y": (-78.0, -36.0), "z": (15.0, 62.0)},     # precuneus, PCC, parietal
    "temporal": {"y": (-66.0, -10.0), "z": (-30.0, 2.0), "abs_x_min": 40.0},
    "tentorium": {"z_at_y_minus_40": -20.0, "slope": 0.2},      # z below it: infratentorial
    "cerebellum": {"y_max": -40.0, "z_min": -52.0, "tissue_min": 0.5,
                   "brainstem_abs_x": 10.0, "brainstem_y_min": -48.0},
}


def _below_tentorium(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    t = APPROXIMATION["tentorium"]
    return z < t["z_at_y_minus_40"] - t["slope"] * np.maximum(-40.0 - y, 0.0)


@lru_cache(maxsize=2)
def approximate_voi_set(resolution: int = 2) -> VoiSet:
    """CTX and WhlCbl approximations cut from the nilearn MNI152 2009 template.

    CTX: template grey matter inside prefrontal, posterior (precuneus, posterior cingulate,
    lateral parietal) and lateral temporal boxes, above the tentorium. WhlCbl: template
    tissue (GM + WM) below a tentorium plane, without the brainstem. Measured against the
    GAAIN files on the 2 mm grid: Dice 0.46 (CTX) and 0.81 (WhlCbl), see docs/centiloid.md.
    """
    from AmyloidKDLib.template import load_template

    template = load_template(resolution)
    shape, affine = template.shape, template.affine
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    x = (affine[0, 0] * i + affine[0, 3])[:, None, None]
    y = (affine[1, 1] * j + affine[1, 3])[None, :, None]
    z = (affine[2, 2] * k + affine[2, 3])[None, None, :]
    a = APPROXIMATION

    def box(spec: dict) -> np.ndarray:
        inside = ((y >= spec["y"][0]) & (y <= spec["y"][1]) & (z >= spec["z"][0])
                  & (z <= spec["z"][1]))
        return inside & (np.abs(x) >= spec.get("abs_x_min", 0.0))

    gm, wm = template.gm.data, template.wm.data
    ctx = ((gm > a["ctx_gm_min"]) & (box(a["frontal"]) | box(a["posterior"]) | box(a["temporal"]))
           & ~_below_tentorium(y, z))
    c = a["cerebellum"]
    brainstem = (np.abs(x) < c["brainstem_abs_x"]) & (y > c["brainstem_y_min"])
    cerebellum = ((gm + wm > c["tissue_min"]) & _below_tentorium(y, z) & (y <= c["y_max"])
                  & (z >= c["z_min"]) & ~brainstem)
    as_mask = lambda m: Volume(np.ascontiguousarray(m, np.float32), affine, "mask")  # noqa: E731
    return VoiSet(APPROXIMATE_SET, as_mask(ctx), as_mask(cerebellum),
                  f"approximation of the GAAIN VOIs cut from the ICBM152 2009 template "
                  f"(nilearn), {resolution} mm", approximate=True)


def load_voi_set(voi_dir: str | os.PathLike | None = None) -> VoiSet:
    """The VOIs to use: ``voi_dir``, else ``$AMYLOIDKD_VOI_DIR``, else the approximation."""
    folder = voi_dir or os.environ.get(VOI_DIR_ENV) or None
    return read_gaain_vois(folder) if folder else approximate_voi_set(2)


# ----------------------------------------------------------------------------- SUVR, CL

#: A VOI must lie this much inside the PET's field of view (after registration).
MIN_VOI_COVERAGE = 0.9


@dataclass
class VoiMeans:
    """Mean PET value in each VOI and the resulting SUVR (CTX / WhlCbl)."""

    ctx_mean: float
    reference_mean: float
    ctx_voxels: int
    reference_voxels: int

    @property
    def suvr(self) -> float:
        """mean(CTX) / mean(WhlCbl)."""
        return self.ctx_mean / self.reference_mean


def suvr_in_mni(pet_mni: Volume, vois: VoiSet, coverage: Volume | None = None) -> VoiMeans:
    """Mean PET in CTX and in WhlCbl (unscaled PET already in MNI space).

    Args:
        pet_mni: PET values (any unit: Bq/ml, SUV, or an SUVR image) on an MNI grid.
        vois: the VOI set (resampled onto ``pet_mni``'s grid when needed).
        coverage: optional 0..1 map of where the PET had data (its field of view moved into
            MNI); a VOI less than :data:`MIN_VOI_COVERAGE` inside it is an error.

    Raises:
        InputError: a VOI is empty, lies outside the PET's field of view, or the reference
            mean is not positive.
    """
    vois = vois.on_grid(pet_mni)
    means = {}
    for key, mask in ((REFERENCE_REGION, vois.reference), ("CTX", vois.ctx)):
        inside = mask.data > 0.5
        if not inside.any():
            raise InputError(f"the {key} VOI of set {vois.name!r} is empty on the PET's MNI grid; "
                             "check the VOI files (--voi-dir)")
        if coverage is not None:
            covered = float(np.mean(coverage.data[inside] > 0.5))
            if covered < MIN_VOI_COVERAGE:
                raise InputError(
                    f"the PET does not overlap its MRI after registration: only "
                    f"{100 * covered:.0f}% of the {key} VOI lies inside the PET's field of view; "
                    "check that PET and MRI are the same subject and that the PET covers the "
                    "whole brain including the cerebellum")
        means[key] = (float(np.mean(pet_mni.data[inside], dtype=np.float64)), int(inside.sum()))
    if not means[REFERENCE_REGION][0] > 0:
        raise InputError(f"the PET's mean in the {REFERENCE_REGION} reference VOI is "
                         f"{means[REFERENCE_REGION][0]:g}, not positive; the image is not a "
                         "usable static PET or SUVR image")
    return VoiMeans(means["CTX"][0], means[REFERENCE_REGION][0], means["CTX"][1],
                    means[REFERENCE_REGION][1])


@dataclass
class CentiloidResult:
    """One PET quantified: SUVR, Centiloid, and what they were computed with.

    ``pet_mni`` is the unscaled PET in MNI space and ``ctx`` / ``reference`` the VOI masks on
    the same grid (for display, e.g. as a Slicer segmentation); ``mri_mni`` is the prepared
    MRI there. ``input_kind`` is ``static`` (PET in any unit) or ``suvr`` (an SUVR image).
    """

    tracer: str
    suvr: float
    centiloid: float
    ctx_mean: float
    reference_mean: float
    voi_set: str
    approximate_vois: bool
    input_kind: str
    equation: TracerEquation
    pet_mni: Volume
    mri_mni: Volume | None
    ctx: Volume
    reference: Volume
    reference_region: str = REFERENCE_REGION
    steps: list = field(default_factory=list)
    mri_to_mni: object = None  # the MRI's registration (a Transform), to carry the VOIs back

    def row(self) -> dict[str, str]:
        """The result as CSV cells (see ``amyloidkd centiloid``)."""
        return {"tracer": self.equation.name, "suvr": f"{self.suvr:.4f}",
                "centiloid": f"{self.centiloid:.1f}", "reference": self.reference_region,
                "voi_set": self.voi_set, "input_kind": self.input_kind,
                "ctx_mean": f"{self.ctx_mean:.6g}", "reference_mean": f"{self.reference_mean:.6g}"}


INPUT_KINDS = ("static", "suvr")
#: An image given as SUVR must have a reference mean in this range (its values are ratios).
SUVR_IMAGE_RANGE = (0.3, 3.0)


def centiloid_from_means(means: VoiMeans, tracer: str, equations=None) -> float:
    """The Centiloid of VOI means through the tracer's equation."""
    return tracer_equation(tracer, equations).centiloid(means.suvr)


def quantify_pet(pet: Volume, mri: Volume, tracer: str, *, vois: VoiSet | None = None,
                 config=None, input_kind: str = "static",
                 equations: dict[str, TracerEquation] | None = None,
                 cache_dir: str | os.PathLike | None = None) -> CentiloidResult:
    """SUVR and Centiloid of one PET with its same-session T1 MRI.

    PET rigid to the MRI and the MRI to MNI152 go through :func:`AmyloidKDLib.pipeline.prepare_case`
    (``config``: default the ``fast`` preset); the *unscaled* PET is then resampled into MNI
    through both transforms (the prepared PET is windowed for the models and cannot be used)
    and sampled in the VOIs.

    Args:
        pet: a static PET (any unit) or, with ``input_kind="suvr"``, an SUVR image.
        mri: the subject's T1-weighted MRI.
        tracer: a name or alias in ``equations`` (default :data:`TRACER_EQUATIONS`).
        vois: default :func:`load_voi_set` (``$AMYLOIDKD_VOI_DIR`` or the approximation).

    Raises:
        InputError: unknown tracer, a PET outside its MRI after registration, an "SUVR"
            image whose values are not ratios.
    """
    from AmyloidKDLib.pipeline import PrepConfig, prepare_case

    equation = tracer_equation(tracer, equations)  # fail before any work
    if input_kind not in INPUT_KINDS:
        raise ConfigError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    vois = vois or load_voi_set()
    config = config or PrepConfig.preset("fast")
    prepared = prepare_case(mri, pet, config, cache_dir=cache_dir)
    to_mni = prepared.pet_to_mri.then(prepared.mri_to_mni)
    pet_mni = to_mni.apply(pet, "forward", "linear", reference=prepared.mri)
    field_of_view = to_mni.apply(pet.with_data(np.ones(pet.shape, np.float32), "mask"),
                                 "forward", "linear", reference=prepared.mri)
    vois = vois.on_grid(pet_mni)
    means = suvr_in_mni(pet_mni, vois, coverage=field_of_view)
    if input_kind == "suvr" and not SUVR_IMAGE_RANGE[0] <= means.reference_mean <= SUVR_IMAGE_RANGE[1]:
        raise InputError(
            f"the image was given as SUVR but its mean in {REFERENCE_REGION} is "
            f"{means.reference_mean:.4g}, not a ratio near 1; give it as a static PET "
            "(without --suvr-input)")
    return CentiloidResult(
        tracer=equation.name, suvr=means.suvr, centiloid=equation.centiloid(means.suvr),
        ctx_mean=means.ctx_mean, reference_mean=means.reference_mean, voi_set=vois.name,
        approximate_vois=vois.approximate, input_kind=input_kind, equation=equation,
        pet_mni=pet_mni, mri_mni=prepared.mri, ctx=vois.ctx, reference=vois.reference,
        steps=prepared.steps, mri_to_mni=prepared.mri_to_mni)


#: Labels of the VOI map on the MRI's grid (:func:`vois_on_mri`, ``<case>_vois.nii.gz``).
VOI_LABELS = {1: "CTX", 2: REFERENCE_REGION}


def vois_on_mri(result: CentiloidResult, mri: Volume) -> Volume:
    """The VOIs of ``result`` on ``mri``'s own grid (label 1 CTX, 2 WhlCbl, 0 elsewhere), carried
    back through the inverse of the MRI's registration (nearest voxel), for display over the MRI."""
    from AmyloidKDLib.saliency import warp_to_native

    if result.mri_to_mni is None:
        raise ConfigError("this CentiloidResult keeps no registration; quantify_pet makes one that does")
    labels = np.where(result.reference.data > 0.5, 2, np.where(result.ctx.data > 0.5, 1, 0))
    moved = warp_to_native(result.mri_to_mni, result.ctx.with_data(labels.astype(np.float32), "label"),
                           labels > 0, mri, "nearest")
    return Volume(np.rint(moved), mri.affine.copy(), "label", mri.source)


def parse_frames(text: str | None) -> slice | None:
    """``--frame`` values: ``K`` (one frame, 0-based), ``A:B`` (mean of frames A..B-1), ``all``."""
    if text is None:
        return None
    value = str(text).strip().lower()
    try:
        if value == "all":
            return slice(None)
        if ":" in value:
            start, stop = value.split(":", 1)
            return slice(int(start) if start else None, int(stop) if stop else None)
        index = int(value)
        return slice(index, index + 1 if index != -1 else None)
    except ValueError:
        raise ConfigError(f"--frame {text!r}: give a frame number (0-based), A:B (mean of frames "
                          "A to B-1) or 'all'") from None


def load_pet(path: str | os.PathLike, frames: slice | None = None, **load_options) -> Volume:
    """Read a PET; a 4-D (dynamic) file needs ``frames`` (their mean is used).

    Raises:
        InputError: a 4-D file without ``frames``, an empty frame selection, or any reason
            :func:`AmyloidKDLib.volume.load_volume` refuses a file.
    """
    import nibabel as nib

    from AmyloidKDLib.volume import load_volume

    path = Path(path)
    name = path.name.lower()
    if path.is_file() and name.endswith((".nii", ".nii.gz")):
        try:
            image = nib.load(str(path))
            shape = tuple(image.shape)
        except Exception:
            shape = ()
        if len(shape) == 4 and shape[3] > 1:
            if frames is None:
                raise InputError(f"{path}: a 4-D dynamic PET with {shape[3]} frames; choose the "
                                 "frames with --frame K, --frame A:B (their mean, e.g. the "
                                 "50-70 min frames) or --frame all")
            chosen = np.asarray(image.dataobj[..., frames], dtype=np.float32)
            if chosen.ndim != 4 or chosen.shape[3] == 0:
                raise InputError(f"{path}: --frame selects no frame of the {shape[3]}")
            header = image.header.copy()
            header.set_data_shape(shape[:3])
            with tempfile.TemporaryDirectory(prefix="amyloidkd-pet-") as folder:
                single = Path(folder) / "pet.nii.gz"
                nib.save(nib.Nifti1Image(chosen.mean(axis=3), image.affine, header), str(single))
                volume = load_volume(single, "PET", **load_options)
            volume.source = str(path)
            return volume
    return load_volume(path, "PET", **load_options)


__all__ = [
    "APPROXIMATE_SET", "CentiloidResult", "GAAIN_SET", "INPUT_KINDS", "REFERENCE_REGION",
    "TRACER_EQUATIONS", "TracerEquation", "VOI_DIR_ENV", "VoiMeans", "VoiSet",
    "approximate_voi_set", "centiloid_from_means", "load_pet", "load_voi_set", "parse_frames",
    "quantify_pet", "read_equations", "read_gaain_vois", "suvr_in_mni", "tracer_equation",
]
