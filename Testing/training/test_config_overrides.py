"""``--set`` overrides reach every nested config typed, including the library's model and
preparation configs (PyYAML reads ``1e-3`` as a string)."""

from __future__ import annotations

import pytest

from Training.config import load_config


@pytest.mark.parametrize("override, read, expected", [
    ("teacher.lr_encoder=1e-3", lambda c: c.teacher.lr_encoder, 1e-3),
    ("schedule.temperature_start=3e0", lambda c: c.schedule.temperature_start, 3.0),
    ("augment.max_scale=5e-2", lambda c: c.augment.max_scale, 0.05),
    ("model.student.lora_alpha=1e-3", lambda c: c.model_config("student").lora_alpha, 1e-3),
    ("model.teacher.projection_dropout=1e-1",
     lambda c: c.model_config("teacher").projection_dropout, 0.1),
    ("model.light_student.embed_dim=6.4e1", lambda c: c.model_config("light_student").embed_dim, 64),
    ("data.prep_overrides.n4.tolerance=1e-6", lambda c: c.prep_config().n4.tolerance, 1e-6),
    ("data.prep_overrides.registration.sampling_rate=2.5e-1",
     lambda c: c.prep_config().registration.sampling_rate, 0.25),
])
def test_override_arrives_as_a_number(override, read, expected):
    value = read(load_config("cpu", [override]))
    assert value == pytest.approx(expected)
    assert type(value) is type(expected)


def test_a_run_config_of_an_older_version_still_loads(tmp_path):
    """Run folders written before `engine.seed` was retired can still be evaluated."""
    import json

    from Training.config import config_from_json, load_config

    data = load_config("cpu").to_dict()
    data["engine"]["seed"] = 0
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert config_from_json(tmp_path / "config.json").to_dict() == load_config("cpu").to_dict()
    data["engine"]["typo"] = 1
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(Exception, match="typo"):
        config_from_json(tmp_path / "config.json")
