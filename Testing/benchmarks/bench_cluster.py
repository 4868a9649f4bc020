"""Wall time of `amyloidkd preprocess` on N phantom cases: serial vs a 2-worker Dask LocalCluster.

Both runs are the real command (a fresh process each, `fast` preset, one ITK thread per case,
no cache), one right after the other, so they see the same machine load; the load average
before each run is printed with the times. The prepared images of both runs are compared
voxel for voxel.

    python Testing/benchmarks/bench_cluster.py [--cases 8] [--spacing 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]


def _manifest(folder: Path, n_cases: int, spacing: float) -> Path:
    from AmyloidKDLib.phantom.measure import t1_case_manifest

    return t1_case_manifest(folder / "cohort", n_cases, folder / "cases.csv", spacing_mm=spacing)


def _run(manifest: Path, out: Path, jobs: int) -> tuple[float, str]:
    env = {k: v for k, v in os.environ.items() if k != "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    load = "%.2f %.2f %.2f" % os.getloadavg()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "AmyloidKDLib", "preprocess", str(manifest),
                           "--out", str(out), "--preset", "fast", "--jobs", str(jobs),
                           "--threads", "1", "--progress", "none"],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return seconds, load


def main(argv: list[str] | None = None) -> int:
    """Print serial and LocalCluster wall times, their ratio, and whether the outputs agree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8, help="phantom cases")
    parser.add_argument("--spacing", type=float, default=2.0, help="phantom MRI voxel size, mm")
    parser.add_argument("--jobs", type=int, default=2, help="LocalCluster worker processes")
    args = parser.parse_args(argv)

    import nibabel as nib
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = _manifest(tmp, args.cases, args.spacing)
        serial, serial_load = _run(manifest, tmp / "serial", 1)
        cluster, cluster_load = _run(manifest, tmp / "cluster", args.jobs)
        cases = sorted(p.name for p in (tmp / "serial").iterdir() if p.is_dir())
        equal = all(np.array_equal(np.asarray(nib.load(tmp / "serial" / c / n).dataobj),
                                   np.asarray(nib.load(tmp / "cluster" / c / n).dataobj))
                    for c in cases for n in ("mri.nii.gz", "mask.nii.gz"))
    print(f"{len(cases)} cases, {args.spacing:g} mm phantom, fast preset, 1 ITK thread per case, "
          f"{os.cpu_count()} CPUs")
    print("| run | wall s | s / case | load avg before (1, 5, 15 min) |")
    print("| --- | --- | --- | --- |")
    print(f"| serial (--jobs 1, no Dask) | {serial:.1f} | {serial / len(cases):.1f} | {serial_load} |")
    print(f"| LocalCluster, {args.jobs} workers (--jobs {args.jobs}) | {cluster:.1f} | "
          f"{cluster / len(cases):.1f} | {cluster_load} |")
    print(f"serial / LocalCluster = {serial / cluster:.2f}; outputs voxel-identical: {equal}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
