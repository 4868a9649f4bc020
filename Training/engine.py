"""The training loop shared by every phase, on HF Accelerate.

Accelerate handles the device (CPU, one or several GPUs), mixed precision (AMP on GPU) and
gradient accumulation, so the same command runs on a laptop and on a GPU node. On top of
it the engine adds what the phases share: per-epoch validation, early stopping, keeping
the best weights by a validation metric, and a complete state saved after every epoch
(weights, optimizer, scheduler, RNG, history) so that ``--resume`` continues from the last
completed epoch after an interruption.

The state folder is Accelerate's ``save_state`` output (weights in safetensors; optimizer,
scheduler and RNG states read back by Accelerate with ``torch.load(weights_only=True)``, so
no arbitrary object is unpickled) plus the engine's ``trainer.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from AmyloidKDLib.atomic import atomic_path, write_json_atomic
from AmyloidKDLib.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

STATE_DIR = "state"
BEST_WEIGHTS = "best_weights.safetensors"
TRAINER_FILE = "trainer.json"
STATE_VERSION = 2  # 2: the state folder is Accelerate's save_state output plus trainer.json

#: The accelerator of the fit in progress (validation shards its cases over its processes).
_active_accelerator: Any = None


def world_size() -> int:
    """Processes training together (``accelerate launch --num_processes``; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in the one process that writes run files (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """A barrier across the launched processes (nothing when training in one process)."""
    if world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def main_process_first(cpu: bool):
    """Context in which the main process runs first and the others after it (e.g. preparing the
    cohort into the shared cache once, then reading it); a no-op in one process.

    ``cpu`` must be what the fit's accelerator will use (``EngineConfig.use_cpu()``): this starts
    Accelerate's process group, gloo on CPU, which the accelerator then joins.
    """
    import contextlib

    if world_size() <= 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState(cpu=cpu).main_process_first()


def active_accelerator() -> Any:
    """The accelerator of the :func:`fit` in progress, or None outside a fit."""
    return _active_accelerator


@dataclass
class EngineConfig:
    """Where and how training runs (shared by all phases)."""

    device: str = "auto"             # auto | cpu | cuda
    mixed_precision: str = "auto"    # auto (bf16/fp16 on GPU, none on CPU) | no | fp16 | bf16
    num_workers: int = 0             # DataLoader worker processes
    progress: bool = True            # tqdm bars
    max_grad_norm: float = 1.0       # gradient clipping (0 = off)
    torch_threads: int = 0           # CPU threads for torch (0 = torch's default)
    # float64: on the CPU, the phases' trainable parts run in float64 (heads on cached features
    # cost little more). float32 training of the teacher's heads moved its logits by ~0.01
    # between AVX2 and AVX-512 kernels and the students' AUCs by 0.02-0.05 (issue 26).
    head_dtype: str = "float32"      # float32 | float64 (CPU only; a GPU trains in float32/AMP)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"engine.device must be auto, cpu or cuda, got {self.device!r}.")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ConfigError(f"engine.mixed_precision must be auto, no, fp16 or bf16, got "
                              f"{self.mixed_precision!r}.")
        if self.head_dtype not in ("float32", "float64"):
            raise ConfigError(f"engine.head_dtype must be float32 or float64, got {self.head_dtype!r}.")

    def training_dtype(self) -> torch.dtype:
        """The dtype phases train in: float64 only when asked for and on the CPU."""
        return torch.float64 if self.head_dtype == "float64" and self.use_cpu() else torch.float32

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
    """An ``accelerate.Accelerator`` for this config (device, AMP, accumulation).

    Accelerate keeps one device/precision state per process. Phases run one after another
    in one process with the same engine settings, so each gets a fresh ``Accelerator`` on
    that state (with its own accumulation); a request for another device or precision in the
    same process is refused instead of silently ignored.
    """
    from accelerate import Accelerator

    use_cpu = config.use_cpu()
    precision = config.resolved_precision(use_cpu)
    try:
        # Schedulers here step once per epoch, not per optimizer step.
        accelerator = Accelerator(cpu=use_cpu, mixed_precision=precision,
                                  gradient_accumulation_steps=grad_accum_steps,
                                  step_scheduler_with_optimizer=False)
    except ValueError as exc:  # Accelerate: "AcceleratorState has already been initialized ..."
        raise ConfigError(f"this process already trains with other engine settings ({exc}); "
                          f"run phases with another engine.device or engine.mixed_precision in "
                          f"a separate command.") from exc
    if (accelerator.device.type == "cpu") != use_cpu or accelerator.mixed_precision != precision:
        raise ConfigError(f"this process already trains on {accelerator.device} with "
                          f"{accelerator.mixed_precision} precision; run phases with another "
                          f"engine.device or engine.mixed_precision in a separate command.")
    return accelerator


def _save_weights(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    with atomic_path(path) as temporary:
        save_model(model, str(temporary))


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


@runtime_checkable
class EpochSampler(Protocol):
    """A (batch) sampler whose draws depend on the epoch (e.g. ``ClassBalancedBatchSampler``)."""

    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class TrainerState:
    """Where a fit stands after its last completed epoch (``state/trainer.json``)."""

    completed_epochs: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_value: float = float("nan")
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON form (NaN/inf as null), with the engine's state version."""
        return {"version": STATE_VERSION, **_json_ready(asdict(self))}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: Path) -> TrainerState:
        """Read :meth:`to_json` output; another engine version is a :class:`CheckpointError`."""
        if data.get("version") != STATE_VERSION:
            raise CheckpointError(f"{where} was written by another version of the engine; "
                                  f"start without --resume.")
        best = data.get("best_value")
        return cls(completed_epochs=int(data["completed_epochs"]), history=list(data["history"]),
                   best_value=float("nan") if best is None else float(best),
                   best_epoch=int(data["best_epoch"]), bad_epochs=int(data["bad_epochs"]),
                   stopped_early=bool(data["stopped_early"]))


def _save_state(accelerator: Any, run_dir: Path, trainer: TrainerState) -> None:
    """Accelerate's ``save_state`` (model, optimizer, scheduler, RNG) plus ``trainer.json``,
    swapped in as a whole folder so an interruption never leaves a half-written state."""
    final, temporary, old = run_dir / STATE_DIR, run_dir / f".{STATE_DIR}.tmp", run_dir / f".{STATE_DIR}.old"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(temporary / TRAINER_FILE, trainer.to_json())
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_state(accelerator: Any, run_dir: Path) -> TrainerState:
    """Restore what :func:`_save_state` wrote into the prepared objects; returns the trainer state."""
    folder = run_dir / STATE_DIR
    trainer = TrainerState.from_json(json.loads((folder / TRAINER_FILE).read_text()), folder)
    try:
        accelerator.load_state(str(folder))
    except (RuntimeError, KeyError, ValueError, FileNotFoundError) as exc:
        raise CheckpointError(f"{folder} does not match this model or optimizer ({exc}); it was "
                              f"saved by a different configuration. Start without --resume or "
                              f"use the matching config.") from exc
    return trainer


def _train_epoch(accelerator: Any, model: nn.Module, optimizer: Any, loader: Any, train_step: TrainStep,
                 epoch: int, settings: FitSettings, engine: EngineConfig, description: str
                 ) -> dict[str, float]:
    """One pass over the training batches; returns the mean of the loss and of every log."""
    model.train()
    sums: dict[str, float] = {}
    n_batches = 0
    from AmyloidKDLib.progress import progress_bar

    bar = progress_bar(loader, desc=f"{description} epoch {epoch}/{settings.epochs}", leave=False,
                       unit="batch", enabled=engine.progress)
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
    if n_batches == 0:  # e.g. one full batch shared by two processes: Accelerate drops it
        raise ConfigError(f"{description}: process {accelerator.process_index} of "
                          f"{accelerator.num_processes} got no training batch in epoch {epoch}; "
                          f"the training fold has fewer full batches than processes. Lower the "
                          f"phase's batch_size or launch fewer processes.")
    return {k: v / n_batches for k, v in sums.items()}


def _end_epoch(accelerator: Any, model: nn.Module, optimizer: Any, scheduler: Any, validate: Validate,
               epoch: int, train_logs: dict[str, float], trainer: TrainerState, settings: FitSettings,
               run_dir: Path, description: str) -> dict[str, float]:
    """Validate, keep the best weights, step the scheduler, count patience, save the state;
    returns the epoch's history row."""
    unwrapped = accelerator.unwrap_model(model)
    row: dict[str, float] = {"epoch": epoch, **train_logs}
    model.eval()
    with torch.no_grad():
        metrics = dict(validate(unwrapped, epoch))
    # monitor "epoch" (mode max) keeps the last epoch: a fixed training budget, no selection
    metrics.setdefault("epoch", float(epoch))
    if settings.monitor not in metrics:
        raise ConfigError(f"{description}: monitored metric {settings.monitor!r} is not among "
                          f"the validation metrics {sorted(metrics)}.")
    row.update({k: float(v) for k, v in metrics.items()})
    row["lr"] = float(optimizer.param_groups[0]["lr"])
    value = float(metrics[settings.monitor])
    # Every process holds the same weights and gathered metrics; only the main one writes.
    if _improved(value, trainer.best_value, settings.mode):
        trainer.best_value, trainer.best_epoch, trainer.bad_epochs = value, epoch, 0
        if accelerator.is_main_process:
            _save_weights(unwrapped, run_dir / BEST_WEIGHTS)
    else:
        trainer.bad_epochs += 1
        if (trainer.best_epoch == 0 and accelerator.is_main_process
                and not (run_dir / BEST_WEIGHTS).exists()):
            _save_weights(unwrapped, run_dir / BEST_WEIGHTS)  # a first epoch with NaN metric
    if scheduler is not None:
        if settings.scheduler_step == "plateau":
            scheduler.step(value if math.isfinite(value) else 0.0)
        else:
            scheduler.step()
    trainer.history.append(row)
    trainer.completed_epochs = epoch
    trainer.stopped_early = trainer.bad_epochs >= settings.patience
    _save_state(accelerator, run_dir, trainer)
    logger.info("%s epoch %d: %s", description, epoch,
                ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
    return row


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: torch.utils.data.DataLoader,
        train_step: TrainStep, validate: Validate, settings: FitSettings, run_dir: str | Path,
        engine: EngineConfig, scheduler: Any = None, resume: bool = False,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
        description: str = "train") -> FitResult:
    """Train ``model`` for up to ``settings.epochs`` epochs with early stopping; keep the best.

    Args:
        model, optimizer: the phase's model and its (parameter-grouped) optimizer.
        train_loader: batches of the training fold; a batch sampler with ``set_epoch``
            (:class:`EpochSampler`) is told the epoch, so a resumed run draws the same batches.
        train_step: the loss of one batch (the engine does backward, accumulation, clipping).
        validate: validation metrics after each epoch (called in eval mode, no grad).
        settings: epochs, patience, monitored metric, accumulation, scheduler stepping.
        run_dir: the phase's folder: ``state/`` (Accelerate's ``save_state`` folder plus
            ``trainer.json``) and ``best_weights.safetensors``.
        scheduler: stepped once per epoch (with the monitored value for ReduceLROnPlateau).
        resume: continue from ``run_dir/state`` if it exists (else start fresh).
        on_epoch_end: called with (epoch, history row) after the state is saved.

    Returns:
        :class:`FitResult`; the model holds the *best* epoch's weights on return.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if engine.torch_threads > 0:
        torch.set_num_threads(engine.torch_threads)
    accelerator = make_accelerator(engine, settings.grad_accum_steps)
    if not resume and accelerator.is_main_process:
        shutil.rmtree(run_dir / STATE_DIR, ignore_errors=True)
        (run_dir / BEST_WEIGHTS).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    if accelerator.num_processes > 1:
        logger.info("%s: process %d of %d", description, accelerator.process_index,
                    accelerator.num_processes)
    dtype = engine.training_dtype()
    if dtype == torch.float64:
        in_dtype(model, dtype)
    prepared = accelerator.prepare(model, optimizer, train_loader,
                                   *([scheduler] if scheduler is not None else []))
    model, optimizer, loader = prepared[:3]
    scheduler = prepared[3] if scheduler is not None else None
    trainer = TrainerState()
    if resume and (run_dir / STATE_DIR / TRAINER_FILE).is_file():
        trainer = _load_state(accelerator, run_dir)
        logger.info("resuming %s after epoch %d", description, trainer.completed_epochs)
    resumed_from = trainer.completed_epochs
    # With several processes Accelerate wraps the batch sampler in a shard that does not pass
    # the epoch on, so the original is told directly.
    epoch_sampler = train_loader.batch_sampler if isinstance(train_loader.batch_sampler, EpochSampler) else None
    start = time.perf_counter()
    global _active_accelerator
    _active_accelerator = accelerator
    try:
        for epoch in range(resumed_from + 1, settings.epochs + 1):
            if trainer.stopped_early:
                break
            loader.set_epoch(epoch)
            if epoch_sampler is not None:
                epoch_sampler.set_epoch(epoch)
            train_logs = _train_epoch(accelerator, model, optimizer, loader, train_step, epoch,
                                      settings, engine, description)
            row = _end_epoch(accelerator, model, optimizer, scheduler, validate, epoch, train_logs,
                             trainer, settings, run_dir, description)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
    finally:
        _active_accelerator = None

    accelerator.wait_for_everyone()
    load_best_weights(accelerator.unwrap_model(model), run_dir)
    accelerator.free_memory()
    if dtype == torch.float64:
        in_dtype(accelerator.unwrap_model(model), torch.float32)
    return FitResult(history=list(trainer.history), best_epoch=trainer.best_epoch,
                     best_value=trainer.best_value, stopped_early=trainer.stopped_early,
                     resumed_from_epoch=resumed_from, seconds=time.perf_counter() - start,
                     extra={"processes": accelerator.num_processes})


def _cast_inputs(dtype: torch.dtype, _module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook of :func:`in_dtype`: floating tensor arguments to ``dtype``."""
    def cast(value: Any) -> Any:
        return value.to(dtype) if torch.is_tensor(value) and value.is_floating_point() else value
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def in_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` converted in place to ``dtype``; for float64, floating inputs are cast on the way
    in (a forward pre-hook), so float32 batches and cached features need no change. Converting
    back to float32 removes the hook. The parameters stay the same objects (an optimizer built
    before keeps working)."""
    handle = getattr(model, "_amyloidkd_cast_hook", None)
    if handle is not None:
        handle.remove()
        model._amyloidkd_cast_hook = None
    model.to(dtype)
    if dtype != torch.float32:
        model._amyloidkd_cast_hook = model.register_forward_pre_hook(
            functools.partial(_cast_inputs, dtype), with_kwargs=True)
    return model


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
