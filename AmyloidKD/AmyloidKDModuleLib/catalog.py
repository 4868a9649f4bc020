"""The model catalogue: which checkpoints the panel offers, and fetching one safely.

A catalogue is a JSON file: ``{"models": [{"name", "description", "trained_on", "url",
"sha256", "size"}, ...]}``. ``url`` points to a ``.zip`` of a checkpoint folder
(``model.safetensors`` + ``checkpoint.json``); ``http(s)://`` and ``file://`` both work, so
an air-gapped site can serve its own catalogue from a share. An entry may instead name a
``folder`` next to the catalogue (the synthetic demo shipped with the module). Nothing is
downloaded unless the user asks; a download is checked against its size and SHA-256 before
anything is unpacked, into ``<cache>/<name>/`` (Slicer's cache folder in the module).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from AmyloidKDModuleLib.errors import ModuleError
from AmyloidKDModuleLib.runner import resolve_checkpoint

REQUIRED_FIELDS = ("name", "description", "trained_on")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class CatalogEntry:
    """One model the panel can offer."""

    name: str
    description: str
    trained_on: str
    url: str | None = None
    sha256: str | None = None
    size: int | None = None
    folder: Path | None = None  # a checkpoint shipped next to the catalogue (no download)

    @property
    def label(self) -> str:
        """What the panel's list shows."""
        where = "included" if self.folder else (f"download, {self.size / 2**20:.1f} MiB" if self.size else "download")
        return f"{self.name} - trained on {self.trained_on} ({where})"


def read_catalog(path: str | os.PathLike) -> list[CatalogEntry]:
    """The entries of a catalogue file; ModuleError names the first problem found."""
    catalog = Path(path)
    try:
        data = json.loads(catalog.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModuleError(f"cannot read the model catalogue {catalog}: {error}") from error
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise ModuleError(f"{catalog} is not a model catalogue: it needs a list under \"models\".")
    entries = []
    for index, item in enumerate(models, start=1):
        where = f"{catalog}, model {index}"
        if not isinstance(item, dict):
            raise ModuleError(f"{where} is not an object.")
        missing = [f for f in REQUIRED_FIELDS if not str(item.get(f) or "").strip()]
        if missing:
            raise ModuleError(f"{where} lacks {', '.join(missing)}.")
        name = str(item["name"])
        if not _NAME.match(name):
            raise ModuleError(f"{where}: the name {name!r} may only use letters, digits, '.', '_' and '-'.")
        folder = item.get("folder")
        if folder:
            entries.append(CatalogEntry(name, item["description"], item["trained_on"],
                                        folder=(catalog.parent / folder).resolve()))
            continue
        url, sha256, size = item.get("url"), str(item.get("sha256") or "").lower(), item.get("size")
        if not url or not _SHA256.match(sha256) or not isinstance(size, int) or size <= 0:
            raise ModuleError(f"{where} ({name}) needs a url, a 64-digit sha256 and a size in bytes "
                              "(or a folder next to the catalogue).")
        entries.append(CatalogEntry(name, item["description"], item["trained_on"], url, sha256, size))
    return entries


def download(url: str, target: str | os.PathLike, sha256: str, size: int | None = None,
             progress: Callable[[int, int], None] | None = None, timeout: float = 60.0,
             cancelled: Callable[[], bool] | None = None) -> Path:
    """Fetch ``url`` into ``target``, checking size and SHA-256; nothing is left on failure.

    ``progress(bytes_so_far, total)`` is called as blocks arrive; when ``cancelled()`` turns
    true the download stops with a ModuleError. Data goes to ``target.part`` and is renamed
    only after the checks pass.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as handle:
            total = size or int(response.headers.get("Content-Length") or 0)
            for block in iter(lambda: response.read(1 << 16), b""):
                if cancelled is not None and cancelled():
                    raise ModuleError(f"the download of {url} was cancelled; nothing was kept.")
                handle.write(block)
                digest.update(block)
                received += len(block)
                if size is not None and received > size:
                    raise ModuleError(f"{url} is larger than the catalogue's {size} bytes; not used.")
                if progress is not None:
                    progress(received, total)
        if size is not None and received != size:
            raise ModuleError(f"{url} gave {received} bytes, the catalogue says {size}; not used.")
        if digest.hexdigest() != sha256.lower():
            raise ModuleError(f"{url} does not match its checksum (sha256 {digest.hexdigest()}, the catalogue "
                              f"says {sha256}); the file was deleted. Ask the catalogue's maintainer, or "
                              "download the model yourself and choose its folder.")
        os.replace(partial, target)
    except OSError as error:
        raise ModuleError(f"could not download {url}: {error}. Check the connection, or download it by "
                          "other means and choose the checkpoint folder instead.") from error
    finally:
        if partial.exists():
            partial.unlink()
    return target


def _unpack(archive: Path, destination: Path) -> Path:
    staging = destination.with_name(destination.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                resolved = (staging / member).resolve()
                if staging.resolve() not in resolved.parents and resolved != staging.resolve():
                    raise ModuleError(f"{archive.name} holds a path outside its folder ({member}); not used.")
            bundle.extractall(staging)
        found = [p.parent for p in staging.rglob("checkpoint.json")]
        if len(found) != 1:
            raise ModuleError(f"{archive.name} should hold exactly one checkpoint folder, found {len(found)}.")
        resolve_checkpoint(found[0])
        shutil.rmtree(destination, ignore_errors=True)
        found[0].rename(destination)
    except zipfile.BadZipFile as error:
        raise ModuleError(f"{archive.name} is not a zip archive: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def fetch_model(entry: CatalogEntry, cache_dir: str | os.PathLike,
                progress: Callable[[int, int], None] | None = None,
                cancelled: Callable[[], bool] | None = None) -> Path:
    """The checkpoint folder of ``entry``: shipped, already in the cache, or downloaded now."""
    if entry.folder is not None:
        return resolve_checkpoint(entry.folder)
    cache = Path(cache_dir)
    destination = cache / entry.name
    marker = destination / ".sha256"
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == entry.sha256:
        return resolve_checkpoint(destination)
    archive = download(entry.url, cache / f"{entry.name}.zip", entry.sha256, entry.size, progress,
                       cancelled=cancelled)
    try:
        _unpack(archive, destination)
        staged_marker = destination / ".sha256.part"
        staged_marker.write_text(entry.sha256 + "\n", encoding="utf-8")
        os.replace(staged_marker, marker)
    finally:
        archive.unlink(missing_ok=True)
    return resolve_checkpoint(destination)


class FetchTask:
    """:func:`fetch_model` on a worker thread, so the panel stays responsive and can cancel it.

    The panel's timer reads :attr:`done_bytes` / :attr:`total_bytes` and :attr:`finished`;
    :meth:`result` gives the checkpoint folder or raises the download's ModuleError.
    """

    def __init__(self, entry: CatalogEntry, cache_dir: str | os.PathLike) -> None:
        self.entry = entry
        self.done_bytes = 0
        self.total_bytes = entry.size or 0
        self._cancel = threading.Event()
        self._folder: Path | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(Path(cache_dir),), name="AmyloidKD-download",
                                        daemon=True)

    def start(self) -> FetchTask:
        """Begin in the background; returns at once."""
        self._thread.start()
        return self

    def _progress(self, done: int, total: int) -> None:
        self.done_bytes, self.total_bytes = done, total

    def _run(self, cache: Path) -> None:
        try:
            self._folder = fetch_model(self.entry, cache, self._progress, cancelled=self._cancel.is_set)
        except BaseException as error:  # handed to the GUI thread by result()
            self._error = error

    @property
    def finished(self) -> bool:
        """True once the worker has ended (done, failed or cancelled)."""
        return self._thread.ident is not None and not self._thread.is_alive()

    def cancel(self, timeout: float = 10.0) -> None:
        """Ask the worker to stop and wait for it (the partial file is removed)."""
        self._cancel.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def result(self) -> Path:
        """The checkpoint folder; raises the worker's error (a cancelled download included)."""
        if not self.finished:
            raise ModuleError("the download is still running.")
        if self._error is not None:
            raise self._error
        assert self._folder is not None
        return self._folder
