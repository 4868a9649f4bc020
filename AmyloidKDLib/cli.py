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

from AmyloidKDLib.atomic import is_disk_full
from AmyloidKDLib.errors import AmyloidKDError

#: Library subcommand modules, in the order `amyloidkd --help` lists them.
LIBRARY_COMMANDS = ("info", "predict", "preprocess", "phantom")

EXIT_USAGE = 2


def build_parser(command_modules: Iterable[str] = ()) -> argparse.ArgumentParser:
    """The ``amyloidkd`` parser with the library's subcommands plus ``command_modules``."""
    parser = argparse.ArgumentParser(
        prog="amyloidkd",
        description="PET-free amyloid-beta positivity from structural MRI (AmyloidKD).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [f"AmyloidKDLib.commands.{name}" for name in LIBRARY_COMMANDS] + list(command_modules)
    for module_name in modules:
        importlib.import_module(module_name).register(subparsers)
    return parser


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
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        filename, reason = getattr(exc, "filename", None), getattr(exc, "strerror", None) or exc
        where = f" while writing {filename}" if filename else ""
        print(f"amyloidkd {args.command}: error: no room to write{where} ({reason}: the disk "
              "is full or a file-size limit was reached); nothing half-written was kept - free "
              "space and run the same command again", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"amyloidkd {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> None:
    """Library-only entry point (used inside Slicer, where Training is not installed)."""
    sys.exit(run(argv))
