"""Command-line entry point of the library (``python -m AmyloidKDLib`` / ``amyloidkd``).

Each subcommand lives in ``AmyloidKDLib/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
arguments, returning an exit code). The training pipeline adds its own subcommands on top
(``Training/cli.py``), so the library never imports the pipeline.

Errors a user can cause are :class:`AmyloidKDError`: they become one line on stderr and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable, Sequence

from AmyloidKDLib.errors import AmyloidKDError, DependencyError

#: Library subcommand modules, in the order `amyloidkd --help` lists them.
LIBRARY_COMMANDS = ("info", "predict", "preprocess", "phantom")

EXIT_USAGE = 2
#: Top-level modules of the ``[train]`` extra (accelerate, scikit-learn, pyyaml): without them
#: the pipeline's subcommands are listed but say how to install them.
TRAIN_EXTRA = ("accelerate", "sklearn", "yaml")


def build_parser(command_modules: Iterable[str] = ()) -> argparse.ArgumentParser:
    """The ``amyloidkd`` parser with the library's subcommands plus ``command_modules``."""
    parser = argparse.ArgumentParser(
        prog="amyloidkd",
        description="PET-free amyloid-beta positivity from structural MRI (AmyloidKD).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [f"AmyloidKDLib.commands.{name}" for name in LIBRARY_COMMANDS] + list(command_modules)
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if module_name.startswith("AmyloidKDLib.") or missing not in TRAIN_EXTRA:
                raise
            _register_unavailable(subparsers, module_name.rsplit(".", 1)[-1], missing)
            continue
        module.register(subparsers)
    return parser


def _register_unavailable(subparsers, name: str, missing: str) -> None:
    """List pipeline command ``name`` whose module needs ``missing`` (not installed): running
    it says which extra to install instead of failing at start-up for every command."""
    message = (f"'amyloidkd {name}' needs the training extra (the '{missing}' module is not "
               "installed): pip install 'amyloidkd[train]'")
    # no option prefix: every argument is taken as is, so any command line reaches the message
    command = subparsers.add_parser(name, help="(not installed: pip install 'amyloidkd[train]')",
                                    prefix_chars="\x00", add_help=False)
    command.add_argument("arguments", nargs="*", help=argparse.SUPPRESS)

    def unavailable(args: argparse.Namespace) -> int:
        raise DependencyError(message)

    command.set_defaults(func=unavailable)


def run(argv: Sequence[str] | None, command_modules: Iterable[str] = ()) -> int:
    """Parse ``argv``, run the chosen subcommand and return its exit code."""
    parser = build_parser(command_modules)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except AmyloidKDError as exc:
        print(f"amyloidkd {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"amyloidkd {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> None:
    """Library-only entry point (used inside Slicer, where Training is not installed)."""
    sys.exit(run(argv))
