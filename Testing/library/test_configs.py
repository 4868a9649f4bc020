"""The one config loader (AmyloidKDLib.configs): typed values, named errors, presets as data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest

from AmyloidKDLib import configs
from AmyloidKDLib.errors import ConfigError
from AmyloidKDLib.losses import LossScheduleConfig
from AmyloidKDLib.models import ModelConfig, list_presets
from AmyloidKDLib.phantom import PhantomConfig
from AmyloidKDLib.pipeline import PrepConfig
from AmyloidKDLib.saliency import SaliencyConfig
from AmyloidKDLib.slicing import SliceConfig


def _get(config, path: str):
    for name in path.split("."):
        config = getattr(config, name)
    return config


# PyYAML reads 1e-3 (no dot) as a string: every config must turn such strings into numbers.
@pytest.mark.parametrize("cls, values, path, expected", [
    (ModelConfig, {"lora_alpha": "1e-3"}, "lora_alpha", 1e-3),
    (ModelConfig, {"embed_dim": "1.28e2"}, "embed_dim", 128),
    (ModelConfig, {"lora_alpha": 16}, "lora_alpha", 16.0),
    (PrepConfig, {"n4": {"tolerance": "1e-6"}}, "n4.tolerance", 1e-6),
    (PrepConfig, {"registration": {"smoothing_sigmas": ["3", 2, 1]}},
     "registration.smoothing_sigmas", (3.0, 2.0, 1.0)),
    (PrepConfig, {"registration": {"random_seed": None}}, "registration.random_seed", None),
    (PrepConfig, {"pet": {"window": {"high": "2.5e0"}}}, "pet.window.high", 2.5),
    (LossScheduleConfig, {"temperature_start": "4e0"}, "temperature_start", 4.0),
    (SaliencyConfig, {"top_percentile": "9.5e1"}, "top_percentile", 95.0),
    (SliceConfig, {"min_brain_fraction": "2e-1"}, "min_brain_fraction", 0.2),
    (PhantomConfig, {"positive_centiloid": ["7.2e1", 32]}, "positive_centiloid", (72.0, 32.0)),
    (PhantomConfig, {"suvr_slope": {"PIB": "9.4e-3", "AV45": 5.7e-3}}, "suvr_slope",
     {"PIB": 9.4e-3, "AV45": 5.7e-3}),
])
def test_values_arrive_with_the_fields_type(cls, values, path, expected):
    value = _get(configs.from_dict(cls, values), path)
    assert value == expected
    assert type(value) is type(expected)
    items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else []
    assert all(type(v) is float for v in items)


@pytest.mark.parametrize("cls, values, message", [
    (ModelConfig, {"lora_alpah": 1}, r"unknown ModelConfig key\(s\): lora_alpah; valid keys: .*lora_alpha"),
    (PrepConfig, {"n4": {"iters": [1]}}, r"unknown N4Config key\(s\): n4\.iters"),
    (PrepConfig, {"n4": {"tolerance": "small"}}, "n4.tolerance must be a number"),
    (PrepConfig, {"n4": {"shrink_factor": 2.5}}, "n4.shrink_factor must be a whole number"),
    (PrepConfig, {"n4": {"enabled": "yes"}}, "n4.enabled must be true or false"),
    (PrepConfig, {"n4": 3}, "config section n4 must be a mapping"),
    (PrepConfig, {"registration": {"iterations": 5}}, "registration.iterations must be a list"),
    (PrepConfig, {"pet": {"registration": {"iterations": [1, "x"]}}},
     r"pet\.registration\.iterations\[1\] must be a number"),
    (PhantomConfig, {"positive_centiloid": [1, 2, 3]}, "positive_centiloid must have 2 values"),
    (SaliencyConfig, {"target": 1}, "target must be text"),
    (SliceConfig, [], "SliceConfig must be a mapping"),
])
def test_bad_values_are_named_by_their_path(cls, values, message):
    with pytest.raises(ConfigError, match=message):
        configs.from_dict(cls, values)


@pytest.mark.parametrize("config", [
    ModelConfig.preset("cpu", "light_student"), PrepConfig.preset("fast"), LossScheduleConfig(),
    SaliencyConfig(top_percentile=80.0), SliceConfig(n_slices=7), PhantomConfig(skull=True),
], ids=lambda c: type(c).__name__)
def test_configs_round_trip_through_json(config):
    text = json.dumps(configs.to_dict(config))
    assert configs.from_dict(type(config), json.loads(text)) == config
    assert type(config).from_dict(json.loads(text)) == config


@dataclass
class _Choice:
    mode: Literal["min", "max"] = "min"
    level: Literal[1, 2] = 1
    limit: float | None = None


@pytest.mark.parametrize("values, expected", [
    ({"mode": "max", "level": "2"}, _Choice("max", 2)),
    ({"limit": "1e-2"}, _Choice(limit=0.01)),
    ({"limit": None}, _Choice()),
])
def test_literal_and_optional_fields(values, expected):
    assert configs.from_dict(_Choice, values) == expected


def test_literal_lists_the_choices():
    with pytest.raises(ConfigError, match="mode must be one of min, max"):
        configs.from_dict(_Choice, {"mode": "median"})


def test_merge_keeps_untouched_nested_keys():
    base = {"n4": {"tolerance": 1e-7, "enabled": True}, "pet": {"window": {"low": 0.0}}}
    merged = configs.merge(base, {"n4": {"tolerance": "1e-6"}, "extra": 1})
    assert merged == {"n4": {"tolerance": "1e-6", "enabled": True},
                      "pet": {"window": {"low": 0.0}}, "extra": 1}
    assert base["n4"]["tolerance"] == 1e-7


def test_presets_are_data_files():
    assert configs.preset_names("model") == list_presets() == ["cpu", "frozen", "paper"]
    assert configs.preset_names("prep") == ["fast", "paper"]
    assert PrepConfig.preset("paper") == PrepConfig()  # the defaults are the paper's
    cpu = ModelConfig.preset("cpu", "student", image_size="2.24e2")
    assert (cpu.encoder, cpu.n_slices, cpu.image_size) == ("vit_tiny", 8, 224)
    light = ModelConfig.preset("paper", "light_student")
    assert (light.encoder, light.lora_rank, light.weights) == ("mobilenetv3_small_100", 0, "none")
    with pytest.raises(ConfigError, match="unknown model preset 'gpu'; choose one of cpu, frozen, paper"):
        ModelConfig.preset("gpu")
