"""Atomic file output: every writer in the project goes through here.

A file appears under its final name complete or not at all: content is written to a
temporary name in the same folder (same file system, so the rename is atomic) and renamed
over the target. On any failure (full disk, kill, exception) the temporary file is removed
and an existing target is left untouched.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_open", "write_text_atomic", "write_json_atomic", "is_disk_full"]

#: errno values of "no room to write": a full disk, a quota, or a file-size limit (ulimit -f).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def is_disk_full(exc: BaseException) -> bool:
    """True for the error of a full disk, an exhausted quota or a file-size limit.

    An OSError with one of ``DISK_FULL_ERRNOS``, or a writer written in Rust (safetensors)
    that reports the same errno only in its message ("... (os error 28)").
    """
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    return any(f"(os error {number})" in str(exc) for number in DISK_FULL_ERRNOS)


def _suffix(target: Path) -> str:
    # Keep the real extension last: some writers (nibabel, matplotlib) choose the format by it.
    name = target.name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if name.endswith(double):
            return ".tmp" + double
    return ".tmp" + target.suffix


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on normal exit rename it onto ``target``.

    For writers that want a file name (``nib.save``, ``savefig``, safetensors). The parent
    folder is created if needed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_suffix(target),
                                         dir=target.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                newline: str | None = "") -> Iterator[IO]:
    """Open a temporary file beside ``target`` for writing; rename it onto ``target`` on success.

    ``mode`` is "w" (text, UTF-8, no newline translation, as the csv module wants) or "wb".
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), not {mode!r}")
    binary = mode == "wb"
    with atomic_path(target) as temporary:
        with open(temporary, mode, encoding=None if binary else encoding,
                  newline=None if binary else newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def write_text_atomic(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return the path."""
    with atomic_open(target) as handle:
        handle.write(text)
    return Path(target)


def write_json_atomic(target: str | os.PathLike, data: object,
                      default: Callable[[object], object] | None = None) -> Path:
    """Write ``data`` as indented JSON to ``target`` atomically and return the path."""
    return write_text_atomic(target, json.dumps(data, indent=2, default=default) + "\n")
