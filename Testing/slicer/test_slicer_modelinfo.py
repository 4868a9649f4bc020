"""The model's own settings by default, and nothing misleading (no Qt: the logic layer).

Real checkpoints: the shipped synthetic demo, and copies of its checkpoint.json edited the
way other models differ (a ViT student with LoRA, a real-data model trained with HD-BET v1).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "AmyloidKD"))

from AmyloidKDModuleLib import batch  # noqa: E402
from AmyloidKDModuleLib.errors import ModuleError  # noqa: E402
from AmyloidKDModuleLib.modelinfo import (  # noqa: E402
    SKULL_STRIP_AS_TRAINED,
    SampleCaseWarning,
    effective_skull_strip,
    read_model_info,
    skull_strip_argument,
)
from AmyloidKDModuleLib.runner import PredictRequest, build_predict_command  # noqa: E402

DEMO = REPO / "AmyloidKD" / "Resources" / "Models" / "synthetic-demo"


def edited_checkpoint(tmp_path: Path, name: str, edit) -> Path:
    """A copy of the demo checkpoint folder whose checkpoint.json went through ``edit(dict)``."""
    folder = tmp_path / name
    folder.mkdir()
    data = json.loads((DEMO / "checkpoint.json").read_text(encoding="utf-8"))
    edit(data)
    (folder / "checkpoint.json").write_text(json.dumps(data), encoding="utf-8")
    shutil.copy(DEMO / "model.safetensors", folder / "model.safetensors")
    return folder


def real_vit_model(data: dict) -> None:
    data["provenance"] = {"name": "site student fold 0", "trained_on": "ADNI T1w"}
    data["model_config"].update(kind="student", encoder="biomedclip", lora_rank=10)
    data["prep_config"]["skull_strip"]["backend"] = "hd-bet-v1"


def test_demo_model_describes_itself_as_synthetic_and_research_only():
    info = read_model_info(DEMO / "checkpoint.json")
    assert info.name == "AmyloidKD synthetic demo (light student)"
    assert info.synthetic and info.skull_strip == "none" and info.kind == "light_student"
    assert "SYNTHETIC / RESEARCH USE ONLY" in info.notice and info.name in info.notice
    assert not info.needs_open_clip and not info.needs_peft


def test_a_real_data_model_is_named_and_research_only_but_not_called_synthetic(tmp_path):
    info = read_model_info(edited_checkpoint(tmp_path, "vit", real_vit_model))
    assert info.notice == "Model: site student fold 0. Research use only, not for diagnosis."
    assert info.needs_open_clip and info.needs_peft and info.skull_strip == "hd-bet-v1"


def test_skull_stripping_follows_the_model_unless_overridden(tmp_path):
    demo = read_model_info(DEMO)
    real = read_model_info(edited_checkpoint(tmp_path, "vit", real_vit_model))
    assert effective_skull_strip(SKULL_STRIP_AS_TRAINED, demo) == "none"
    assert effective_skull_strip(SKULL_STRIP_AS_TRAINED, real) == "hd-bet-v1"
    assert effective_skull_strip("hd-bet", demo) == "hd-bet"
    # "as trained" passes no --skull-strip, so the library uses the checkpoint's own setting
    command = build_predict_command("python", PredictRequest(Path("t1.nii.gz"), DEMO, Path("out"),
                                                            skull_strip=skull_strip_argument(SKULL_STRIP_AS_TRAINED)))
    assert "--skull-strip" not in command
    override = build_predict_command("python", PredictRequest(Path("t1.nii.gz"), DEMO, Path("out"),
                                                             skull_strip=skull_strip_argument("hd-bet-v1")))
    assert override[override.index("--skull-strip") + 1] == "hd-bet-v1"


def test_batch_default_is_the_models_own_skull_stripping(tmp_path):
    args = batch.parse_batch_arguments(["--input", str(tmp_path), "--out", "o"])
    assert args.skull_strip is None


def test_demo_on_another_scan_warns_once_and_never_on_its_sample_case(tmp_path):
    demo = read_model_info(DEMO)
    warning = SampleCaseWarning()
    assert warning.check(demo, "AmyloidKD synthetic T1w") is None
    assert warning.check(demo, "T1", "/cache/AmyloidKD-synthetic-T1w.nii.gz") is None
    first = warning.check(demo, "sub-01 T1w", "/data/sub-01_T1w.nii.gz")
    assert first and "synthetic demo model" in first and "sub-01 T1w" in first
    assert warning.check(demo, "sub-02 T1w") is None  # once per model and session
    real = read_model_info(edited_checkpoint(tmp_path, "vit", real_vit_model))
    assert warning.check(real, "sub-01 T1w") is None


def test_a_broken_checkpoint_description_is_a_clear_error(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "checkpoint.json").write_text("{not json", encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModuleError, match="cannot read .*checkpoint.json"):
        read_model_info(folder)
