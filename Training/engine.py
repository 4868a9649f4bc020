"""The training loop shared by every phase, on HF Accelerate.

Accelerate handles the device (CPU, one or several GPUs), mixed precision (AMP on GPU) and
gradient accumulation, so the same command runs on a laptop and on a GPU node. On top of
it the engine adds what the phases share: per-epoch validation, early stopping, keeping
the best weights by a validation metric, and a complete state saved after every epoch
(weights, optimizer, scheduler, RNG, history) so that ``--resume`` continues from the last
completed epoch after an interruption.

State files are written by this code only and read back without unpickling arbitrary
objects (``safetensors`` for weights, ``torch.load(weights_only=True)`` for optimizer state).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from AmyloidKDLib.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

STATE_DIR = "state"
BEST_WEIGHTS = "best_weights.safetensors"
STATE_VERSION = 1


@dataclass
class EngineConfig:
    """Where and how training runs (shared by all phases)."""

    device: str = "auto"             # auto | cpu | cuda
    mixed_precision: str = "auto"    # auto (bf16/fp16 on GPU, none on CPU) | no | fp16 | bf16
    num_workers: int = 0             # DataLoader worker processes
    seed: int = 0
    progress: bool = True            # tqdm bars
    max_grad_norm: float = 1.0       # gradient clipping (0 = off)
    torch_threads: int = 0           # CPU threads for torch (0 = torch's default)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"engine.device must be auto, cpu or cuda, got {self.device!r}.")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ConfigError(f"engine.mixed_precision must be auto, no, fp16 or bf16, got "
                              f"{self.mixed_precision!r}.")

    def resolved_precision(self, use_cpu: bool) -> str:
        """The precision actually used: AMP only on a GPU."""
        if use_cpu:
            return "no"
        if self.mixed_precision != "auto":
            return self.mixed_precision
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"

    def use_cpu(self) -> bool:
        """Whether this run stays on the CPU."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("engine.device is 'cuda' but no CUDA GPU is visible; use "
                              "--device cpu or auto.")
        return self.device == "cpu" or not torch.cuda.is_available()


@dataclass
class FitSettings:
    """Loop settings of one phase."""

    epochs: int
    patience: int                     # epochs without improvement before stopping
    monitor: str = "val_loss"         # key of the validation dict that picks the best epoch
    mode: str = "min"                 # "min" or "max"
    grad_accum_steps: int = 1
    scheduler_step: str = "epoch"     # "epoch": scheduler.step(); "plateau": step(monitor value)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}.")
        if self.patience < 1:
            raise ConfigError(f"patience must be >= 1, got {self.patience}.")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"monitor mode must be 'min' or 'max', got {self.mode!r}.")
        if self.grad_accum_steps < 1:
            raise ConfigError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}.")
        if self.scheduler_step not in ("epoch", "plateau"):
            raise ConfigError(f"scheduler_step must be 'epoch' or 'plateau', got {self.scheduler_step!r}.")


#: ``train_step(model, batch, epoch) -> (loss, logs)``: the phase's loss on one batch.
TrainStep = Callable[[nn.Module, Mapping[str, Any], int], tuple[torch.Tensor, Mapping[str, float]]]
#: ``validate(model, epoch) -> metrics``: must contain the monitored key.
Validate = Callable[[nn.Module, int], Mapping[str, float]]


@dataclass
class FitResult:
    """What a finished (or early-stopped) fit produced."""

    history: list[dict[str, float]]
    best_epoch: int
    best_value: float
    stopped_early: bool
    resumed_from_epoch: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def make_accelerator(config: EngineConfig, grad_accum_steps: int = 1):
    """An ``accelerate.Accelerator`` for this config (device, AMP, accumulation)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    use_cpu = config.use_cpu()
    # Phases run one after another in one process with possibly different accumulation:
    # start each from a clean Accelerate state.
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return Accelerator(cpu=use_cpu, mixed_precision=config.resolved_precision(use_cpu),
                       gradient_accumulation_steps=grad_accum_steps)


def _save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_model(model, str(tmp))
    os.replace(tmp, path)


def _load_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the model (missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}); it was saved by a different "
                              f"configuration. Start without --resume or use the matching config.")


def load_best_weights(model: nn.Module, run_dir: str | Path) -> None:
    """Load the best epoch's weights that :func:`fit` kept in ``run_dir``."""
    path = Path(run_dir) / BEST_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"no best weights in {run_dir}: the phase has not completed an epoch.")
    _load_weights(model, path)


def _improved(value: float, best: float, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value > best if mode == "max" else value < best


class _State:
    """The per-epoch training state in ``run_dir/state`` (written atomically as a folder)."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / STATE_DIR

    def exists(self) -> bool:
        return (self.dir / "trainer.json").is_file()

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             trainer: dict[str, Any]) -> None:
        tmp = Path(tempfile.mkdtemp(dir=self.dir.parent, prefix=".state."))
        _save_weights(model, tmp / "model.safetensors")
        torch.save({"optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   tmp / "optimizer.pt")
        (tmp / "trainer.json").write_text(json.dumps(trainer, indent=2))
        old = self.dir.with_name(".state.old")
        if self.dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.dir, old)
        os.replace(tmp, self.dir)
        shutil.rmtree(old, ignore_errors=True)

    def load(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
        trainer = json.loads((self.dir / "trainer.json").read_text())
        if trainer.get("version") != STATE_VERSION:
            raise CheckpointError(f"{self.dir} was written by another version of the engine; "
                                  f"start without --resume.")
        _load_weights(model, self.dir / "model.safetensors")
        blob = torch.load(self.dir / "optimizer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None and blob["scheduler"]:
            scheduler.load_state_dict(blob["scheduler"])
        torch.set_rng_state(blob["torch_rng"])
        if blob["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["cuda_rng"])
        if trainer.get("best_value") is None:
            trainer["best_value"] = float("nan")
        return trainer


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: torch.utils.data.DataLoader,
        train_step: TrainStep, validate: Validate, settings: FitSettings, run_dir: str | Path,
        engine: EngineConfig, scheduler: Any = None, resume: bool = False,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
        description: str = "train") -> FitResult:
    """Train ``model`` for up to ``settings.epochs`` epochs with early stopping; keep the best.

    Args:
        model, optimizer: the phase's model and its (parameter-grouped) optimizer.
        train_loader: batches of the training fold; a batch sampler with ``set_epoch`` is
            told the epoch, so a resumed run draws the same batches.
        train_step: the loss of one batch (the engine does backward, accumulation, clipping).
        validate: validation metrics after each epoch (called in eval mode, no grad).
        settings: epochs, patience, monitored metric, accumulation, scheduler stepping.
        run_dir: the phase's folder: ``state/`` (resumable state) and ``best_weights.safetensors``.
        scheduler: stepped once per epoch (with the monitored value for ReduceLROnPlateau).
        resume: continue from ``run_dir/state`` if it exists (else start fresh).
        on_epoch_end: called with (epoch, history row) after the state is saved.

    Returns:
        :class:`FitResult`; the model holds the *best* epoch's weights on return.
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if engine.torch_threads > 0:
        torch.set_num_threads(engine.torch_threads)
    accelerator = make_accelerator(engine, settings.grad_accum_steps)
    state = _State(run_dir)
    trainer: dict[str, Any] = {"version": STATE_VERSION, "completed_epochs": 0, "history": [],
                               "best_value": float("nan"), "best_epoch": 0, "bad_epochs": 0,
                               "stopped_early": False}
    if resume and state.exists():
        trainer = state.load(model, optimizer, scheduler)
        logger.info("resuming %s after epoch %d", description, trainer["completed_epochs"])
    elif not resume:
        shutil.rmtree(state.dir, ignore_errors=True)
        (run_dir / BEST_WEIGHTS).unlink(missing_ok=True)
    resumed_from = int(trainer["completed_epochs"])
    model, optimizer, loader = accelerator.prepare(model, optimizer, train_loader)
    unwrapped = accelerator.unwrap_model(model)
    start = time.perf_counter()
    batch_sampler = getattr(train_loader, "batch_sampler", None)

    for epoch in range(resumed_from + 1, settings.epochs + 1):
        if trainer["stopped_early"]:
            break
        for sampler in (batch_sampler, getattr(batch_sampler, "batch_sampler", None), loader):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
        model.train()
        sums: dict[str, float] = {}
        n_batches = 0
        bar = tqdm(loader, desc=f"{description} epoch {epoch}/{settings.epochs}", leave=False,
                   disable=not engine.progress)
        for batch in bar:
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss, logs = train_step(model, batch, epoch)
                if not torch.isfinite(loss):
                    raise ConfigError(f"{description}: the loss became {float(loss)} in epoch "
                                      f"{epoch}; lower the learning rate or disable AMP.")
                accelerator.backward(loss)
                if accelerator.sync_gradients and engine.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), engine.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            n_batches += 1
            sums["train_loss"] = sums.get("train_loss", 0.0) + float(loss.detach())
            for key, value in logs.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            bar.set_postfix(loss=f"{sums['train_loss'] / n_batches:.4f}")
        row: dict[str, float] = {"epoch": epoch}
        row.update({k: v / max(n_batches, 1) for k, v in sums.items()})
        model.eval()
        with torch.no_grad():
            metrics = dict(validate(unwrapped, epoch))
        if settings.monitor not in metrics:
            raise ConfigError(f"{description}: monitored metric {settings.monitor!r} is not among "
                              f"the validation metrics {sorted(metrics)}.")
        row.update({k: float(v) for k, v in metrics.items()})
        row["lr"] = float(optimizer.param_groups[0]["lr"])
        value = float(metrics[settings.monitor])
        if _improved(value, float(trainer["best_value"]), settings.mode):
            trainer.update(best_value=value, best_epoch=epoch, bad_epochs=0)
            _save_weights(unwrapped, run_dir / BEST_WEIGHTS)
        else:
            trainer["bad_epochs"] += 1
            if trainer["best_epoch"] == 0 and not (run_dir / BEST_WEIGHTS).exists():
                _save_weights(unwrapped, run_dir / BEST_WEIGHTS)  # a first epoch with NaN metric
        if scheduler is not None:
            if settings.scheduler_step == "plateau":
                scheduler.step(value if math.isfinite(value) else 0.0)
            else:
                scheduler.step()
        trainer["history"].append(row)
        trainer["completed_epochs"] = epoch
        trainer["stopped_early"] = trainer["bad_epochs"] >= settings.patience
        state.save(unwrapped, optimizer, scheduler, _json_ready(trainer))
        logger.info("%s epoch %d: %s", description, epoch,
                    ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    load_best_weights(unwrapped, run_dir)
    accelerator.free_memory()
    best_value = trainer["best_value"]
    return FitResult(history=list(trainer["history"]), best_epoch=int(trainer["best_epoch"]),
                     best_value=float("nan") if best_value is None else float(best_value),
                     stopped_early=bool(trainer["stopped_early"]), resumed_from_epoch=resumed_from,
                     seconds=time.perf_counter() - start)


def _json_ready(trainer: dict[str, Any]) -> dict[str, Any]:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(trainer)
