"""The model catalogue: reading it, downloading from a real HTTP server on 127.0.0.1, refusing bad files."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import sys
import threading
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "AmyloidKD"))

from AmyloidKDModuleLib import catalog  # noqa: E402
from AmyloidKDModuleLib.errors import ModuleError  # noqa: E402

SHIPPED = REPO / "AmyloidKD" / "Resources" / "Models" / "catalog.json"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A zipped checkpoint folder served by http.server on 127.0.0.1 (an ephemeral port)."""
    from AmyloidKDLib.checkpoint import save_checkpoint
    from AmyloidKDLib.models import ModelConfig, build_model
    from AmyloidKDLib.pipeline import PrepConfig
    from AmyloidKDLib.slicing import SliceConfig

    root = tmp_path_factory.mktemp("served")
    config = ModelConfig.preset("cpu", "light_student", n_slices=4, image_size=64)
    folder = save_checkpoint(root / "build" / "tiny", build_model(config, load_pretrained=False), config,
                             prep_config=PrepConfig.preset("fast").to_dict(),
                             slice_config=SliceConfig(n_slices=4, image_size=64).to_dict(), threshold=0.5)
    archive = root / "www" / "tiny.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in Path(folder).iterdir():
            bundle.write(path, f"tiny/{path.name}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    data = archive.read_bytes()
    yield {"url": f"http://127.0.0.1:{server.server_port}/tiny.zip", "sha256": hashlib.sha256(data).hexdigest(),
           "size": len(data), "root": root}
    server.shutdown()


def _entry(served, **changes) -> catalog.CatalogEntry:
    values = dict(name="tiny", description="untrained test model", trained_on="nothing (untrained)",
                  url=served["url"], sha256=served["sha256"], size=served["size"])
    values.update(changes)
    return catalog.CatalogEntry(**values)


def test_download_with_progress_and_checksum_into_the_cache(served, tmp_path):
    seen = []
    folder = catalog.fetch_model(_entry(served), tmp_path / "cache", progress=lambda done, total: seen.append((done, total)))
    assert folder == (tmp_path / "cache" / "tiny").resolve()
    assert (folder / "model.safetensors").is_file() and (folder / "checkpoint.json").is_file()
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (served["size"], served["size"])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["tiny"]  # no archive, no .part left
    from AmyloidKDLib.checkpoint import load_checkpoint

    model, info = load_checkpoint(folder)
    assert info.threshold == 0.5
    # fetched again: served from the cache, no request (a dead URL is not touched)
    again = catalog.fetch_model(_entry(served, url="http://127.0.0.1:9/gone.zip"), tmp_path / "cache")
    assert again == folder


@pytest.mark.parametrize("change, message", [
    ({"sha256": "0" * 64}, "does not match its checksum"),
    ({"size": 1000}, "larger than the catalogue's 1000 bytes"),
])
def test_a_file_that_does_not_match_the_catalogue_is_refused_and_deleted(served, tmp_path, change, message):
    with pytest.raises(ModuleError, match=message):
        catalog.fetch_model(_entry(served, **change), tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())


def test_an_unreachable_server_is_a_clear_error(served, tmp_path):
    with pytest.raises(ModuleError, match="could not download .*choose the checkpoint folder"):
        catalog.fetch_model(_entry(served, url="http://127.0.0.1:9/missing.zip"), tmp_path / "cache")


def test_catalogue_entries_are_validated(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": [{"name": "x", "description": "d", "trained_on": "t",
                                            "url": "http://h/x.zip", "sha256": "abc", "size": 3}]}))
    with pytest.raises(ModuleError, match="needs a url, a 64-digit sha256"):
        catalog.read_catalog(path)
    path.write_text(json.dumps({"models": [{"name": "../x", "description": "d", "trained_on": "t"}]}))
    with pytest.raises(ModuleError, match="may only use letters"):
        catalog.read_catalog(path)
    path.write_text("[]")
    with pytest.raises(ModuleError, match="needs a list"):
        catalog.read_catalog(path)


def test_shipped_catalogue_offers_the_synthetic_demo_labelled_synthetic():
    entries = catalog.read_catalog(SHIPPED)
    demo = next(e for e in entries if e.folder is not None)
    assert "synthetic" in demo.name.lower() and "synthetic" in demo.trained_on.lower()
    assert "synthetic" in demo.description.lower() and "synthetic" in demo.label.lower()
    info = json.loads((catalog.fetch_model(demo, "/nonexistent") / "checkpoint.json").read_text())
    assert info["provenance"]["synthetic"] is True
    assert info["provenance"]["rebuild_command"].startswith("PYTHONPATH=$PWD python Testing/slicer/build_demo_checkpoint.py")
    assert (demo.folder / "model.safetensors").stat().st_size <= 8 * 2**20


# --- the synthetic sample case for Slicer's Sample Data module --------------------------------


def test_sample_case_files_match_their_checksums_through_file_uris(tmp_path):
    """What Sample Data does with the registered URIs: fetch (file://), check SHA-256, load."""
    import urllib.request

    import nibabel as nib

    from AmyloidKDModuleLib import sampledata

    arguments = sampledata.sample_data_arguments(REPO / "AmyloidKD" / "Resources" / "SampleData")
    assert "synthetic" in arguments["sampleName"].lower()
    assert len(arguments["uris"]) == len(arguments["fileNames"]) == len(arguments["checksums"]) == 2
    for uri, name, checksum in zip(arguments["uris"], arguments["fileNames"], arguments["checksums"]):
        assert uri.startswith("file://")
        target, _ = urllib.request.urlretrieve(uri, tmp_path / name)
        algorithm, digest = checksum.split(":")
        assert algorithm == "SHA256" and sampledata.sha256_of(target) == digest, f"{name}: rebuild changed it?"
        image = nib.load(str(target))
        assert image.ndim == 3 and max(image.header.get_zooms()) <= 4.0
    if "thumbnailFileName" in arguments:
        assert Path(arguments["thumbnailFileName"]).read_bytes()[:4] == b"\x89PNG"


#: ``SampleData.SampleDataLogic.registerCustomSampleDataSource``'s parameters in Slicer 5.4
#: (Modules/Scripted/SampleData/SampleData.py; later releases only add ``loadFileTypes``).
REGISTER_SAMPLE_PARAMETERS_5_4 = {"category", "sampleName", "uris", "fileNames", "nodeNames", "customDownloader",
                                  "thumbnailFileName", "loadFileType", "loadFiles", "loadFileProperties", "checksums"}


def test_sample_registration_uses_only_parameters_slicer_5_4_has():
    from AmyloidKDModuleLib import sampledata

    arguments = sampledata.sample_data_arguments(REPO / "AmyloidKD" / "Resources" / "SampleData")
    assert set(arguments) <= REGISTER_SAMPLE_PARAMETERS_5_4
    assert {"category", "sampleName", "uris", "fileNames", "nodeNames", "checksums"} <= set(arguments)
