"""Is preparing the same T1 twice identical? Per ITK thread count, with the registration seeded.

Each run is a fresh process (ITK reads its thread count once per process) that prepares one
moved 2 mm MNI T1 with the ``fast`` preset and prints a digest of the prepared MRI, its sum
and the affine parameters. Runs with the same digest are bit-identical.

    python Testing/benchmarks/bench_repeatability.py [--threads 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

ONE_RUN = r"""
import hashlib, json, sys, time
import numpy as np
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from AmyloidKDLib.pipeline import PrepConfig, prepare_case
from AmyloidKDLib.volume import load_volume
config = PrepConfig.preset("fast")
config.registration.random_seed = None if sys.argv[4] == "none" else int(sys.argv[4])
start = time.perf_counter()
case = prepare_case(load_volume(sys.argv[1]), None, config)
seconds = time.perf_counter() - start
import ants
params = ants.read_transform(case.mri_to_mni.forward_files[0]).parameters
print(json.dumps({"digest": hashlib.sha256(case.mri.data.tobytes()).hexdigest()[:12],
                  "sum": float(case.mri.data.sum(dtype=np.float64)),
                  "params": [float(p) for p in params], "seconds": seconds}))
"""


def main(argv: list[str] | None = None) -> int:
    """Prepare one case ``repeats`` times per thread count; print digests and differences."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", default="1234", help="registration seed, or 'none'")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(ROOT), str(HERE.parent / "library")]
    from nilearn.datasets import load_mni152_template
    from test_inference import write_moved_mni_t1

    with tempfile.TemporaryDirectory() as folder:
        t1 = write_moved_mni_t1(Path(folder) / "t1.nii.gz", load_mni152_template(resolution=1))
        print(f"{'threads':>7} {'run':>3} {'digest':>12} {'sum of MRI':>14} {'max |dparam|':>12} {'s':>6}")
        for threads in args.threads:
            env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads),
                   "OMP_NUM_THREADS": str(threads)}
            first = None
            for run in range(args.repeats):
                start = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", ONE_RUN, str(t1), str(ROOT),
                                      str(HERE.parent / "library"), args.seed],
                                     env=env, capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                first = first or result
                delta = max(abs(a - b) for a, b in zip(result["params"], first["params"]))
                print(f"{threads:>7} {run:>3} {result['digest']:>12} {result['sum']:>14.3f} "
                      f"{delta:>12.3g} {time.perf_counter() - start:>6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
