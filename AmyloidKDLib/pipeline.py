"""One call from a native MRI (and optional PET) to MNI-space model inputs: ``prepare_case``.

Training and inference both go through here, so the student sees at inference exactly
what it saw in training. Results are cached on disk under a key made of the input bytes,
the configuration and the pipeline version: preparing the same case again costs a read.

The cache is safe for several processes at once (batch jobs, parallel workers): an entry is
written once, complete, by an atomic folder rename, and never replaced or deleted. When two
processes prepare the same case, the first to finish stores its result and every process
(the other one too) returns the stored entry, so all users of one cache see one preparation.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from AmyloidKDLib import configs
from AmyloidKDLib.atomic import write_json_atomic
from AmyloidKDLib.errors import AmyloidKDError, ConfigError, InputError
from AmyloidKDLib.preprocess import (N4Config, NormalizationConfig, SUVRWindow, n4_bias_correction,
                                     normalize_intensity, suvr_window)
from AmyloidKDLib.registration import RegistrationConfig, Transform, register_to_mni, rigid_pet_to_mri
from AmyloidKDLib.skullstrip import SkullStripConfig, skull_strip
from AmyloidKDLib.volume import MRI_MODALITIES, Volume, load_volume, save_volume

#: Bump when a change to the image path alters its output (invalidates the cache).
PIPELINE_VERSION = "2"  # 2: fast preset N4 fitted at 2 mm, registration stops at shrink 2

log = logging.getLogger(__name__)


@dataclass
class PETConfig:
    """PET handling: rigid registration to the MRI and the fixed SUVR window."""

    window: SUVRWindow = field(default_factory=SUVRWindow)
    registration: RegistrationConfig = field(default_factory=lambda: RegistrationConfig(
        transform="rigid", shrink_factors=(4, 2, 1), smoothing_sigmas=(2.0, 1.0, 0.0),
        iterations=(1000, 500, 50)))
    mask_to_brain: bool = True

    def __post_init__(self) -> None:
        if self.registration.transform != "rigid":
            raise ConfigError("PET-to-MRI registration must be 'rigid' (same head, same session)")


@dataclass
class PrepConfig(configs.DictConfig):
    """Every setting of the image path; the defaults are the paper's (``preset("paper")``)."""

    skull_strip: SkullStripConfig = field(default_factory=SkullStripConfig)
    n4: N4Config = field(default_factory=N4Config)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    pet: PETConfig = field(default_factory=PETConfig)

    @classmethod
    def preset(cls, name: str) -> "PrepConfig":
        """A named preset (``resources/presets/prep/<name>.json``).

        ``paper`` (N4, HD-BET v1, affine at 1 mm; the defaults) or ``fast`` (skull-free input,
        2 mm, coarse).
        """
        return cls.from_dict(configs.load_preset("prep", name))


@dataclass
class PreparedCase:
    """A case in MNI space, ready for slicing, with the transforms that put it there.

    Attributes:
        mri: the brain in MNI space, normalised to [0, 1] (0 outside the brain).
        mask: the subject's brain mask in MNI space (0/1).
        pet: SUVR in MNI space scaled by the fixed window to [0, 1], or None.
        mri_to_mni: native MRI grid -> MNI grid (its inverse maps MNI maps to the user's MRI).
        pet_to_mri: native PET grid -> native MRI grid, or None.
        steps: what ran, in order: ``{"name", "parameters", "seconds", "cpu_seconds"}`` per step.
        cache_key: the content hash this result is stored under.
    """

    mri: Volume
    mask: Volume
    pet: Volume | None
    mri_to_mni: Transform
    pet_to_mri: Transform | None
    steps: list[dict[str, Any]]
    cache_key: str = ""


def cache_key(mri: Volume, pet: Volume | None, config: PrepConfig) -> str:
    """SHA-256 of the input voxels and geometry, the config and the pipeline version."""
    digest = hashlib.sha256()
    digest.update(f"amyloidkd-prep-{PIPELINE_VERSION}".encode())
    for volume in (mri, pet):
        if volume is None:
            digest.update(b"none")
            continue
        digest.update(str(volume.shape).encode())
        digest.update(np.ascontiguousarray(volume.affine, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(volume.data, dtype=np.float32).tobytes())
    digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()


class _Steps:
    """Collects the step record: name, parameters, wall time and CPU time of each step.

    ``cpu_seconds`` is the CPU time of the whole process (all its threads) during the step:
    steadier than the wall time on a shared machine.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def run(self, name: str, parameters: Any, function, *args, **kwargs):
        start, cpu_start = time.perf_counter(), time.process_time()
        result = function(*args, **kwargs)
        if dataclasses.is_dataclass(parameters):
            parameters = configs.to_dict(parameters)
        self.records.append({"name": name, "parameters": parameters,
                             "seconds": round(time.perf_counter() - start, 3),
                             "cpu_seconds": round(time.process_time() - cpu_start, 3)})
        return result


def _prepare(mri: Volume, pet: Volume | None, config: PrepConfig) -> PreparedCase:
    steps = _Steps()
    stripped = steps.run("skull_strip", config.skull_strip, skull_strip, mri, config.skull_strip)
    brain, native_mask = stripped.brain, stripped.mask
    if config.n4.enabled:
        brain = steps.run("n4", config.n4, n4_bias_correction, brain, native_mask, config.n4)
    normalized = steps.run("normalize", config.normalization, normalize_intensity, brain,
                           native_mask, config.normalization)
    mri_to_mni = steps.run("register_mri_to_mni", config.registration, register_to_mni,
                           normalized, config.registration, native_mask)

    def to_mni() -> tuple[Volume, Volume]:
        mask = mri_to_mni.apply(native_mask, "forward", "nearest")
        image = mri_to_mni.apply(normalized, "forward", "linear")
        image.data[:] = np.clip(image.data, 0.0, 1.0) * (mask.data > 0.5)
        return image, mask

    mri_mni, mask_mni = steps.run("resample_mri_to_mni", {"interpolation": "linear/nearest",
                                                          "template_resolution": config.registration.template_resolution},
                                  to_mni)
    pet_mni, pet_to_mri = None, None
    if pet is not None:
        pet_to_mri = steps.run("register_pet_to_mri", config.pet.registration, rigid_pet_to_mri,
                               pet, brain, config.pet.registration, native_mask)

        def pet_to_mni() -> Volume:
            moved = pet_to_mri.then(mri_to_mni).apply(pet, "forward", "linear")
            windowed = suvr_window(moved, config.pet.window)
            if config.pet.mask_to_brain:
                windowed.data *= mask_mni.data > 0.5
            return windowed

        pet_mni = steps.run("pet_to_mni_suvr_window", config.pet, pet_to_mni)
    return PreparedCase(mri_mni, mask_mni, pet_mni, mri_to_mni, pet_to_mri, steps.records)


def _save(case: PreparedCase, folder: Path) -> None:
    save_volume(case.mri, folder / "mri.nii.gz")
    save_volume(case.mask, folder / "mask.nii.gz", np.uint8)
    if case.pet is not None:
        save_volume(case.pet, folder / "pet.nii.gz")
    case.mri_to_mni.save(folder / "mri_to_mni")
    if case.pet_to_mri is not None:
        case.pet_to_mri.save(folder / "pet_to_mri")
    # Written last: a folder with steps.json is complete.
    write_json_atomic(folder / "steps.json", {"key": case.cache_key, "steps": case.steps})


def load_prepared(folder: str | os.PathLike) -> PreparedCase:
    """Read a prepared case written by ``prepare_case`` (its cache entry or a save folder)."""
    folder = Path(folder)
    if not (folder / "steps.json").is_file():
        raise InputError(f"{folder}: not a prepared case (steps.json is missing)")
    record = json.loads((folder / "steps.json").read_text())
    has_pet = (folder / "pet.nii.gz").is_file()
    return PreparedCase(
        mri=load_volume(folder / "mri.nii.gz", "T1w"),
        mask=load_volume(folder / "mask.nii.gz", "mask"),
        pet=load_volume(folder / "pet.nii.gz", "PET") if has_pet else None,
        mri_to_mni=Transform.load(folder / "mri_to_mni"),
        pet_to_mri=Transform.load(folder / "pet_to_mri") if has_pet else None,
        steps=record["steps"], cache_key=record.get("key", ""))


def _writer_prefix(folder: Path, pid: int | None = None) -> str:
    """Name prefix of this host's process ``pid``'s (default: this one's) temporaries of ``folder``."""
    return f".{folder.name}.{socket.gethostname()}-{os.getpid() if pid is None else pid}."


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:  # it exists but belongs to someone else
        return False
    return False


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the hidden temporaries of ``folder`` whose writer, a process on this host, is gone;
    return them. A worker killed while writing a case (SIGKILL: no cleanup runs) leaves its
    temporary behind; the next writer of that case removes it here. Writers on other hosts
    (a cluster on a shared disk) and live ones are never touched; on Windows, where signal 0
    is not a liveness check, nothing is removed."""
    if os.name != "posix" or not folder.parent.is_dir():
        return []
    mine = _writer_prefix(folder)
    host_prefix = mine[:mine.rindex("-") + 1]
    removed = []
    for path in folder.parent.iterdir():
        pid = path.name[len(host_prefix):].split(".", 1)[0]
        if path.name.startswith(host_prefix) and pid.isdigit() and _process_is_gone(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _write_folder(case: PreparedCase, folder: Path) -> Path:
    # The case, complete, in a new hidden folder beside ``folder`` (removed again on failure),
    # named after this host and process so that a killed writer's leftover can be recognised.
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    tmp = Path(tempfile.mkdtemp(prefix=_writer_prefix(folder), dir=folder.parent))
    try:
        _save(case, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def save_prepared(case: PreparedCase, folder: str | os.PathLike) -> Path:
    """Write a prepared case to ``folder`` atomically, replacing what was there.

    The case is written to a temporary folder that is then renamed onto ``folder``; an older
    folder is first renamed aside and removed afterwards, so ``folder`` is never half-written.
    For cache entries, which other processes may be reading, see :func:`store_prepared`.
    """
    folder = Path(folder)
    tmp = _write_folder(case, folder)
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    moved_aside = False
    try:
        if folder.exists():
            os.rename(folder, old)
            moved_aside = True
        os.rename(tmp, folder)
    except BaseException:
        if moved_aside and not folder.exists():
            os.rename(old, folder)  # put the previous result back
            moved_aside = False
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if moved_aside:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def store_prepared(case: PreparedCase, entry: str | os.PathLike) -> bool:
    """Store ``case`` as the write-once cache entry ``entry``; False if one was there first.

    The entry appears complete in one atomic rename or not at all; an existing entry is never
    replaced or deleted (another process may be reading it), so readers never see a partial one.
    """
    entry = Path(entry)
    if (entry / "steps.json").is_file():
        return False
    tmp = _write_folder(case, entry)
    try:
        os.rename(tmp, entry)  # fails if another writer's (non-empty) entry is already there
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (entry / "steps.json").is_file():
            raise
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_case(mri: Volume, pet: Volume | None = None, config: PrepConfig | None = None,
                 cache_dir: str | os.PathLike | None = None) -> PreparedCase:
    """Native MRI (+ optional SUVR PET) -> MNI-space brain, mask, PET and transforms.

    MRI path: skull strip -> N4 inside the brain mask -> normalise (percentiles inside the
    brain, [0, 1], gamma) -> register to MNI152 -> resample. The skull is removed before N4
    so the field is estimated on brain only (HD-BET does not need bias-corrected input).
    PET path: rigid to the subject's MRI, into MNI through the MRI's transform, fixed SUVR
    window. With ``cache_dir`` the result is stored under :func:`cache_key` and re-used; the
    returned case is always the stored entry (first writer wins, see :func:`store_prepared`).
    """
    config = config or PrepConfig()
    if mri.modality not in MRI_MODALITIES:
        raise InputError(f"prepare_case needs a structural MRI as `mri`, got modality "
                         f"{mri.modality!r}; pass PET as `pet`")
    key = cache_key(mri, pet, config)
    entry = Path(cache_dir) / key if cache_dir is not None else None
    if entry is not None and (entry / "steps.json").is_file():
        try:
            return load_prepared(entry)
        except AmyloidKDError as exc:  # damaged entry: never deleted here (others may read it)
            log.warning("cache entry %s cannot be read (%s); preparing the case again without "
                        "caching it; remove the entry to re-cache", entry, exc)
            entry = None
    case = _prepare(mri, pet, config)
    case.cache_key = key
    if entry is not None:
        store_prepared(case, entry)
        return load_prepared(entry)  # ours or the first writer's; transforms live in the cache
    return case
