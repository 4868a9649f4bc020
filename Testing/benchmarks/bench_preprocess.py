"""Per-step time and accuracy of the image path on one 1 mm T1 (the MNI template, moved).

The subject: the MNI152 template moved by a known rotation, translation, scaling and
smooth deformation, stored on a 1 mm LIA grid, wrapped in a synthetic CSF/skull/scalp
shell (for HD-BET) and multiplied by a smooth bias field (for N4). Accuracy is measured
against the same motion applied to the template's own masks.

    python Testing/benchmarks/bench_preprocess.py [--skip-hdbet] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]


def main(argv: list[str] | None = None) -> int:
    """Run each step once, print a table of seconds and accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-hdbet", action="store_true", help="leave out HD-BET v1")
    parser.add_argument("--skip-full-affine", action="store_true",
                        help="leave out ANTs' default (slow) affine schedule")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for ANTs and torch")
    args = parser.parse_args(argv)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from test_preprocess import bias_field, synthetic_head, white_matter_cv
    from test_registration import known_motion, move_volume

    from AmyloidKDLib.pipeline import PrepConfig, prepare_case
    from AmyloidKDLib.preprocess import n4_bias_correction, normalize_intensity
    from AmyloidKDLib.registration import RegistrationConfig, dice, register_to_mni
    from AmyloidKDLib.skullstrip import SkullStripConfig, skull_strip
    from AmyloidKDLib.slicing import SliceConfig, sagittal_slices
    from AmyloidKDLib.template import load_template
    from AmyloidKDLib.volume import Volume

    rows: list[tuple[str, str, float, str]] = []
    cpu: dict[int, float] = {}

    def timed(function, *a, **k):
        """Result and wall seconds; CPU seconds (all threads) kept in ``cpu``, keyed by row."""
        start, start_cpu = time.perf_counter(), time.process_time()
        result = function(*a, **k)
        cpu[len(rows)] = time.process_time() - start_cpu
        return result, time.perf_counter() - start

    template = load_template(1)
    affine = np.array([[-1.0, 0, 0, 105.0], [0, 0, 1.0, -125.0], [0, -1.0, 0, 95.0], [0, 0, 0, 1]])
    shape = (210, 190, 230)
    motion = known_motion()
    head_template = template.t1.with_data(synthetic_head(template))
    moved = {name: move_volume(volume, motion, affine, shape, order, 2.5) for name, volume, order in
             [("head", head_template, 1), ("brain", template.t1, 1), ("mask", template.mask, 0),
              ("wm", template.wm, 1)]}
    field = bias_field(shape)
    t1_head = Volume(moved["head"] * field, affine)
    brain_truth = Volume(moved["brain"] * field, affine)
    mask_truth = Volume(moved["mask"], affine, "mask")
    wm = (moved["wm"] > 0.9) & (moved["mask"] > 0.5)
    paper, fast = PrepConfig.preset("paper"), PrepConfig.preset("fast")

    if not args.skip_hdbet:
        stripped, seconds = timed(skull_strip, t1_head, SkullStripConfig(device="cpu"))
        rows.append(("skull strip", "HD-BET v1 fast, no TTA, CPU", seconds,
                     f"Dice {dice(stripped.mask.data, mask_truth.data):.3f}"))
    stripped, seconds = timed(skull_strip, brain_truth, SkullStripConfig(backend="none"))
    rows.append(("skull strip", "none (skull-free input)", seconds,
                 f"Dice {dice(stripped.mask.data, mask_truth.data):.3f}"))

    cv_before = white_matter_cv(brain_truth.data, wm)
    for label, config in (("paper", paper.n4), ("fast", fast.n4)):
        corrected, seconds = timed(n4_bias_correction, brain_truth, mask_truth, config)
        rows.append(("N4 (masked)", f"{label}: shrink {config.shrink_factor}, iters {list(config.iterations)}",
                     seconds, f"WM CV {cv_before:.3f} -> {white_matter_cv(corrected.data, wm):.3f}"))

    normalized, seconds = timed(normalize_intensity, corrected, mask_truth, paper.normalization)
    rows.append(("normalise", "0.5-99.5 pct in mask, gamma 0.9", seconds, "-"))

    schedules = [("paper", paper.registration), ("fast", fast.registration)]
    if not args.skip_full_affine:
        schedules.insert(0, ("ANTs default", RegistrationConfig(
            shrink_factors=(6, 4, 2, 1), smoothing_sigmas=(3, 2, 1, 0), iterations=(2100, 1200, 1200, 10))))
    for label, config in schedules:
        transform, seconds = timed(register_to_mni, normalized, config, mask_truth)
        target = load_template(config.template_resolution)
        forward = dice(transform.apply(mask_truth, "forward", "nearest").data, target.mask.data)
        inverse = dice(transform.apply(target.mask, "inverse", "nearest", reference=mask_truth).data,
                       mask_truth.data)
        rows.append(("affine to MNI", f"{label}: {config.template_resolution} mm, shrink "
                     f"{list(config.shrink_factors)}, iters {list(config.iterations)}", seconds,
                     f"Dice fwd {forward:.3f} / inv {inverse:.3f}"))

    prepared, seconds = timed(prepare_case, brain_truth, None, fast)
    stack, slice_seconds = timed(sagittal_slices, prepared.mri, prepared.mask, SliceConfig())
    rows.append(("slicing", "15 planes, 224 px, CLIP norm", slice_seconds, f"planes {stack.positions[0]}..{stack.positions[-1]}"))
    native = prepared.mri_to_mni.apply(prepared.mask, "inverse", "nearest", reference=brain_truth)
    rows.append(("whole MRI path", "fast preset (prepare_case + slicing)", seconds + slice_seconds,
                 f"native Dice {dice(native.data, mask_truth.data):.3f}"))
    paper_total = sum(r[2] for r in rows if r[1].startswith(("HD-BET", "paper")) or r[0] == "normalise") + slice_seconds
    if not args.skip_hdbet:
        rows.append(("whole MRI path", "paper preset (sum of the paper steps above)", paper_total, "-"))

    load = os.getloadavg()[0]
    print(f"\n1 mm T1 {shape}, {args.threads} threads, load average {load:.1f} on {os.cpu_count()} cores\n")
    print(f"| {'step':<15} | {'setting':<58} | wall s | CPU s | accuracy |")
    print(f"|{'-' * 17}|{'-' * 60}|--------|-------|----------|")
    for index, (step, setting, seconds, accuracy) in enumerate(rows):
        cpu_seconds = f"{cpu[index]:5.1f}" if index in cpu else "    -"
        print(f"| {step:<15} | {setting:<58} | {seconds:6.1f} | {cpu_seconds} | {accuracy} |")
    for step in prepared.steps:
        print(f"  fast prepare_case step {step['name']:<24} {step['seconds']:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
