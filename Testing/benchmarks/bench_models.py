"""Micro-benchmark of the models: one case of 15 slices (224 px) through the BiomedCLIP student
and the light students, and one training step of the cpu-preset teacher/student on 4 cases.

Prints a table (median of ``--repeats`` runs after one warm-up): wall seconds and the process's
CPU seconds. On a shared, busy machine run with ``--threads 1``: the CPU seconds then stay close
to what an idle single core would take even when the wall time is inflated by other jobs.
Random weights: speed does not depend on their values. Run: ``python Testing/benchmarks/bench_models.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from AmyloidKDLib.models import ModelConfig, build_model, trainable_parameter_report


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _clock(device: str, step) -> tuple[float, float]:
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _median(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)


def time_forward(config: ModelConfig, device: str, repeats: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per no-grad forward of one case ``[1, N, 3, S, S]``."""
    model = build_model(config, load_pretrained=False).to(device).eval()
    mri = torch.randn(1, config.n_slices, 3, config.image_size, config.image_size, device=device)
    with torch.no_grad():
        return [_clock(device, lambda: model(mri)) for _ in range(repeats + 1)][1:]


def time_train_step(config: ModelConfig, device: str, repeats: int,
                    batch: int = 4) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per forward + backward + AdamW step on ``batch`` cases."""
    model = build_model(config, load_pretrained=False).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    shape = (batch, config.n_slices, 3, config.image_size, config.image_size)
    mri, pet = torch.randn(shape, device=device), torch.randn(shape, device=device)

    def step() -> None:
        if config.kind == "teacher":
            out = model(mri, pet)
            loss = out.guided.pow(2).mean() + out.pet.pow(2).mean() + model.embed_pet(pet).mean()
        else:
            loss = model(mri).logits.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return [_clock(device, step) for _ in range(repeats + 1)][1:]


def main() -> None:
    """Print the benchmark table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(0)

    paper_student = ModelConfig.preset("paper", "student", weights="none")
    rows = [("BiomedCLIP student (paper)", paper_student),
            ("light student mobilenetv3_small_100", ModelConfig.preset("paper", "light_student")),
            ("light student efficientnet_b0",
             ModelConfig.preset("paper", "light_student", encoder="efficientnet_b0"))]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, median of {args.repeats}")
    header = f"{'wall s':>8} {'CPU s':>8}"
    print(f"\n{'15-slice forward, 1 case, 224 px':<38} {'params':>12} {header} {'speed-up (wall, CPU)':>21}")
    reference = None
    for name, config in rows:
        wall, cpu = _median(time_forward(config, args.device, args.repeats))
        reference = reference or (wall, cpu)
        report = trainable_parameter_report(build_model(config, load_pretrained=False))
        print(f"{name:<38} {report.total:>12,} {wall:>8.3f} {cpu:>8.3f} "
              f"{reference[0] / wall:>9.1f}x {reference[1] / max(cpu, 1e-9):>9.1f}x")

    print(f"\n{'train step, 4 cases (cpu preset)':<46} {'trainable':>12} {header}")
    for kind in ("teacher", "student", "light_student"):
        config = ModelConfig.preset("cpu", kind)
        wall, cpu = _median(time_train_step(config, args.device, args.repeats))
        report = trainable_parameter_report(build_model(config, load_pretrained=False))
        label = f"{kind} ({config.encoder}, {config.n_slices}x{config.image_size} px)"
        print(f"{label:<46} {report.trainable:>12,} {wall:>8.3f} {cpu:>8.3f}")
    print("\n" + str(trainable_parameter_report(build_model(paper_student, load_pretrained=False))))


if __name__ == "__main__":
    main()
