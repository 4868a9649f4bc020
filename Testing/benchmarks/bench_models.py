"""Micro-benchmark of the models: one case of 15 slices (224 px) through the BiomedCLIP student
and the light students, and one training step of the cpu-preset teacher/student on 4 cases.

Prints a table (median of ``--repeats`` runs after one warm-up). Random weights: speed does not
depend on their values. Run: ``python Testing/benchmarks/bench_models.py [--device cuda]``.
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


def time_forward(config: ModelConfig, device: str, repeats: int) -> list[float]:
    """Seconds per no-grad forward of one case ``[1, N, 3, S, S]``."""
    model = build_model(config, load_pretrained=False).to(device).eval()
    mri = torch.randn(1, config.n_slices, 3, config.image_size, config.image_size, device=device)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            model(mri)
            _sync(device)
            times.append(time.perf_counter() - start)
    return times[1:]


def time_train_step(config: ModelConfig, device: str, repeats: int, batch: int = 4) -> list[float]:
    """Seconds per forward + backward + AdamW step on ``batch`` cases."""
    model = build_model(config, load_pretrained=False).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    shape = (batch, config.n_slices, 3, config.image_size, config.image_size)
    mri, pet = torch.randn(shape, device=device), torch.randn(shape, device=device)
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        if config.kind == "teacher":
            out = model(mri, pet)
            loss = out.guided.pow(2).mean() + out.pet.pow(2).mean() + model.embed_pet(pet).mean()
        else:
            loss = model(mri).logits.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times[1:]


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
            ("light student efficientnet_b0", ModelConfig.preset("paper", "light_student")),
            ("light student mobilenetv3_small_100",
             ModelConfig.preset("paper", "light_student", encoder="mobilenetv3_small_100"))]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, median of {args.repeats}")
    print(f"\n{'15-slice forward, 1 case, 224 px':<38} {'params':>12} {'seconds':>9} {'speed-up':>9}")
    reference = None
    for name, config in rows:
        seconds = statistics.median(time_forward(config, args.device, args.repeats))
        reference = reference or seconds
        report = trainable_parameter_report(build_model(config, load_pretrained=False))
        print(f"{name:<38} {report.total:>12,} {seconds:>9.3f} {reference / seconds:>8.1f}x")

    print(f"\n{'train step, 4 cases (cpu preset)':<38} {'trainable':>12} {'seconds':>9}")
    for kind in ("teacher", "student", "light_student"):
        config = ModelConfig.preset("cpu", kind)
        seconds = statistics.median(time_train_step(config, args.device, args.repeats))
        report = trainable_parameter_report(build_model(config, load_pretrained=False))
        label = f"{kind} ({config.encoder}, {config.n_slices}x{config.image_size} px)"
        print(f"{label:<38} {report.trainable:>12,} {seconds:>9.3f}")
    print("\n" + str(trainable_parameter_report(build_model(paper_student, load_pretrained=False))))


if __name__ == "__main__":
    main()
