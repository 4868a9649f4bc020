"""Benchmark of the synthetic cohort generator: seconds per subject, and what the cohort shows.

Writes a cohort (manifest layout, 1 mm MRI by default) into a temporary folder and prints a
table: wall and CPU seconds per subject (the issue's target is <= 2 s per subject at 1 mm on
2 cores), the machine's load average (other processes slow the wall time on a shared machine),
and the two correlations with Centiloid: cortical PET SUVR and the regional MRI grey-matter
measure (``AmyloidKDLib.phantom.measure_cohort``).

Run: ``python Testing/benchmarks/bench_phantom.py [--subjects 100] [--mri-spacing 1] [--threads 2]``
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    """Time one cohort and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mri-spacing", type=float, default=1.0, choices=(1.0, 2.0))
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the target: 2)")
    parser.add_argument("--no-correlations", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from AmyloidKDLib.phantom import (PhantomConfig, build_template_maps, generate_cohort,
                                      measure_cohort)

    torch.set_num_threads(args.threads)
    config = PhantomConfig(mri_spacing_mm=args.mri_spacing)
    start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
    build_template_maps(config.mri_spacing_mm, 4.0, config)
    build_template_maps(config.pet_spacing_mm, 16.0, config)
    setup_wall, setup_cpu = time.perf_counter() - start_wall, _cpu_seconds() - start_cpu
    with tempfile.TemporaryDirectory() as tmp:
        load_before = os.getloadavg()[0]
        start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
        manifest = generate_cohort(Path(tmp) / "cohort", args.subjects, args.seed,
                                   layout="manifest", config=config, progress=False)
        wall, cpu = time.perf_counter() - start_wall, _cpu_seconds() - start_cpu
        load_after = os.getloadavg()[0]
        n_cases = sum(1 for _ in open(manifest)) - 1
        size_mb = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file()) / 2**20
        rows = [
            ("subjects / PET-MRI cases", f"{args.subjects} / {n_cases}"),
            ("MRI spacing, contrasts", f"{args.mri_spacing:g} mm, {', '.join(config.contrasts)}"),
            ("torch threads", str(args.threads)),
            ("template maps (once per process)", f"{setup_wall:.1f} s wall, {setup_cpu:.1f} s CPU"),
            ("cohort total", f"{wall:.1f} s wall, {cpu:.1f} s CPU"),
            ("per subject", f"{wall / args.subjects:.2f} s wall, {cpu / args.subjects:.2f} s CPU"),
            ("per PET-MRI case", f"{wall / n_cases:.2f} s wall, {cpu / n_cases:.2f} s CPU"),
            ("disk", f"{size_mb:.0f} MiB"),
            ("load average (1 min) before / after", f"{load_before:.1f} / {load_after:.1f}"),
        ]
        if not args.no_correlations:
            features = measure_cohort(manifest.parent)
            r_pet = stats.pearsonr(features["suvr"], features["centiloid"])
            r_mri = stats.pearsonr(features["gm"], features["centiloid"])
            for tracer in ("AV45", "PIB"):
                chosen = features["tracer"] == tracer
                if chosen.sum() > 2:
                    r = stats.pearsonr(features["suvr"][chosen], features["centiloid"][chosen])[0]
                    rows.append((f"r(cortical PET SUVR, Centiloid), {tracer}", f"{r:.3f}"))
            rows.append(("r(cortical PET SUVR, Centiloid), both", f"{r_pet[0]:.3f}"))
            rows.append(("r(regional MRI GM, Centiloid)", f"{r_mri[0]:.3f} (p = {r_mri[1]:.1g})"))
            rows.append(("prevalence (Centiloid > 20)", f"{np.mean(features['centiloid'] > 20):.2f}"))
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 30}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
