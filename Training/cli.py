"""The ``amyloidkd`` console script: the library's subcommands plus the training pipeline's.

Also runnable as a module, which is what ``accelerate launch`` needs for multi-GPU training:
``accelerate launch -m Training.cli train all ...`` (or ``python -m Training.cli ...``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from AmyloidKDLib.cli import run

#: Pipeline subcommand modules (each has ``register(subparsers)``).
TRAINING_COMMANDS: tuple[str, ...] = tuple(
    f"Training.commands.{name}" for name in ("train", "evaluate", "demo", "cv", "ceilings", "benchmark"))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``amyloidkd`` command."""
    sys.exit(run(argv, TRAINING_COMMANDS))


if __name__ == "__main__":
    main()
