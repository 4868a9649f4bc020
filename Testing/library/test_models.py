"""Encoders, LoRA, heads, teacher and students, built for real (BiomedCLIP once, tiny presets
for the rest)."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from AmyloidKDLib.errors import ConfigError, DependencyError, InputError
from AmyloidKDLib.models import (
    ModelConfig,
    StudentModel,
    TeacherModel,
    build_model,
    create_encoder,
    init_student_from_teacher,
    trainable_parameter_report,
)
from AmyloidKDLib.models.lora import block_index

BIOMEDCLIP_PARAMETERS = 86_191_872
# LoRA r=10 on ViT-B/16 (width 768): qkv 10*768 + 2304*10, proj 10*768 + 768*10 -> 46,080 per
# block; blocks 6..11 train.
BIOMEDCLIP_LORA_TRAINABLE = 6 * (10 * 768 + 2304 * 10 + 10 * 768 + 768 * 10)
# Same for ViT-Ti/16 (width 192) in the cpu preset.
VIT_TINY_LORA_TRAINABLE = 6 * (10 * 192 + 576 * 10 + 10 * 192 + 192 * 10)
# The cpu preset with fewer, smaller slices keeps these tests fast; the code path is the same.
SMALL = {"n_slices": 4, "image_size": 64}


@pytest.fixture(scope="session")
def biomedclip_encoder():
    """The BiomedCLIP vision tower from the packaged config, randomly initialised."""
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        return create_encoder("biomedclip", weights="none")


@pytest.fixture(scope="session")
def vit_tiny_state():
    """A state dict of the vit_tiny vision tower with random (non-initial) values."""
    torch.manual_seed(2)
    return {k: torch.randn_like(v) for k, v in create_encoder("vit_tiny").backbone.state_dict().items()}


@pytest.fixture(scope="session")
def cpu_teacher():
    torch.manual_seed(0)
    return build_model(ModelConfig.preset("cpu", "teacher", **SMALL))


def stack(config: ModelConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.n_slices, 3, config.image_size, config.image_size, generator=generator)


# --- encoders -------------------------------------------------------------------------------------

def test_biomedclip_vision_tower_has_the_published_parameter_count(biomedclip_encoder):
    assert sum(p.numel() for p in biomedclip_encoder.backbone.parameters()) == BIOMEDCLIP_PARAMETERS
    assert biomedclip_encoder.num_features == 512 and biomedclip_encoder.image_size == 224


@pytest.mark.slow
def test_real_biomedclip_checkpoint_keys_load_through_the_model_config(biomedclip_encoder, tmp_path, capsys):
    # An open_clip BiomedCLIP checkpoint holds the whole CLIP model: visual.*, text.*, logit_scale.
    torch.manual_seed(1)
    clip_state = {f"visual.{k}": torch.randn_like(v) for k, v in biomedclip_encoder.backbone.state_dict().items()}
    clip_state["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(64, 768)
    clip_state["text.proj.0.weight"] = torch.randn(640, 768)
    clip_state["logit_scale"] = torch.tensor(4.6052)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip_state, path)

    student = build_model(ModelConfig.preset("paper", "student", weights=str(path)))
    loaded = student.encoder.backbone.state_dict()
    for key, value in clip_state.items():
        if key.startswith("visual."):
            name = key.removeprefix("visual.")
            if name not in loaded:  # LoRA-wrapped layers keep the original weight as base_layer
                name = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
            assert torch.equal(loaded[name], value), name

    report = trainable_parameter_report(student)
    print(report)
    assert "trainable parameters" in capsys.readouterr().out
    assert report.by_part["slices"][0] - sum(
        p.numel() for p in student.slices.projection.parameters()) - student.slices.position.embedding.numel() \
        == BIOMEDCLIP_LORA_TRAINABLE
    head_parameters = sum(p.numel() for n, p in student.named_parameters() if not n.startswith("slices.encoder"))
    assert report.trainable == BIOMEDCLIP_LORA_TRAINABLE + head_parameters


def test_safetensors_vision_weights_load_into_the_small_vit(vit_tiny_state, tmp_path):
    save_file(vit_tiny_state, str(tmp_path / "vit_tiny.safetensors"))
    encoder = create_encoder("vit_tiny", weights=str(tmp_path / "vit_tiny.safetensors"))
    assert all(torch.equal(encoder.backbone.state_dict()[k], v) for k, v in vit_tiny_state.items())


def test_weights_of_another_architecture_are_refused_with_the_offending_keys(vit_tiny_state, tmp_path):
    state = dict(vit_tiny_state, **{"head.proj.weight": torch.zeros(384, 192), "trunk.extra.weight": torch.zeros(1)})
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(DependencyError, match=r"do not fit encoder 'vit_tiny'.*1 unexpected \[trunk.extra.weight\]"
                                              r".*1 with another shape \[head.proj.weight\]"):
        create_encoder("vit_tiny", weights=str(tmp_path / "other.pt"))


def test_weights_files_that_need_unpickling_are_refused(tmp_path):
    torch.save({"created": datetime.datetime(2024, 1, 1)}, tmp_path / "pickled.pt")
    with pytest.raises(DependencyError, match="no pickled objects"):
        create_encoder("vit_tiny", weights=str(tmp_path / "pickled.pt"))


def test_hub_weights_offline_give_a_clear_error_with_the_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DependencyError, match="download open_clip_pytorch_model.bin .* pass its path"):
        build_model(ModelConfig.preset("paper", "student"))


@pytest.mark.parametrize("make, message", [
    (lambda: ModelConfig(encoder="biomedclp"), "Did you mean 'biomedclip'"),
    (lambda: create_encoder("vit_tiny", image_size=100), "multiple of the patch size 16"),
    (lambda: ModelConfig.preset("cpu", "light_student", encoder="vit_tiny"), "needs a CNN encoder"),
    (lambda: ModelConfig(kind="student", encoder="efficientnet_b0", weights="none"), "lora_rank=0"),
    (lambda: ModelConfig.from_dict({"depth": 3}), r"unknown ModelConfig key\(s\): depth"),
    (lambda: ModelConfig.preset("paper", "critic"), "model kind must be one of"),
], ids=["encoder typo", "patch size", "light needs cnn", "cnn lora", "unknown key", "kind"])
def test_unknown_encoder_and_impossible_sizes_are_config_errors(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_model_config_round_trips_through_json(tmp_path):
    config = ModelConfig.preset("paper", "teacher", lora_rank=8)
    assert ModelConfig.from_json(config.to_json()) == config
    config.to_json(tmp_path / "model.json")
    assert ModelConfig.from_json(tmp_path / "model.json") == config
    assert config.n_slices == 15 and config.image_size == 224 and config.encoder == "biomedclip"


# --- LoRA and gradients ----------------------------------------------------------------------------

def test_gradients_reach_only_trainable_parameters(cpu_teacher):
    config = cpu_teacher.config
    cpu_teacher.train()
    cpu_teacher.zero_grad(set_to_none=True)
    out = cpu_teacher(stack(config), stack(config, seed=1))
    negatives = cpu_teacher.embed_pet(stack(config, seed=2))
    (out.logits.sum() + out.guided.pow(2).sum() + out.mri.sum() + negatives.sum()).backward()

    named = dict(cpu_teacher.named_parameters())
    lora = {n: p for n, p in named.items() if "lora_" in n}
    assert len(lora) == 12 * 2 * 2  # 12 blocks x (qkv, proj) x (A, B)
    for name, parameter in named.items():
        block = block_index(name) if name.startswith("slices.encoder") else None
        if name.startswith("slices.encoder") and ("lora_" not in name or block < config.frozen_blocks):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.requires_grad and parameter.grad is not None, name
    for name, parameter in lora.items():  # B starts at zero, so only B gets a non-zero gradient at first
        if block_index(name) >= config.frozen_blocks and "lora_B" in name:
            assert parameter.grad.abs().sum() > 0, name
    for part in ("cross_attention", "pet_attention", "mri_attention", "classifier", "slices.projection"):
        assert any(p.grad.abs().sum() > 0 for n, p in named.items() if n.startswith(part)), part
    encoder_trainable = sum(p.numel() for p in cpu_teacher.encoder.parameters() if p.requires_grad)
    assert encoder_trainable == VIT_TINY_LORA_TRAINABLE


def test_without_lora_frozen_blocks_and_stem_get_no_gradient():
    config = ModelConfig.preset("cpu", "student", lora_rank=0, frozen_blocks=3, **SMALL)
    student = build_model(config)
    student(stack(config, batch=1)).logits.sum().backward()
    for name, parameter in student.encoder.named_parameters():
        block = block_index(name)
        frozen = (block is not None and block < 3) or any(s in name for s in ("patch_embed", "cls_token", "pos_embed"))
        assert (parameter.grad is None) == frozen, name


# --- heads, teacher, students -----------------------------------------------------------------------

def test_student_outputs_and_slice_order_matter():
    torch.manual_seed(0)
    config = ModelConfig.preset("cpu", "student", **SMALL)
    student = build_model(config).eval()
    mri = stack(config)
    with torch.no_grad():
        out = student(mri)
        again = student(mri)
        reversed_slices = student(mri.flip(1))
        single = student(mri[:1])
    assert out.logits.shape == (2,) and out.embedding.shape == (2, 128)
    assert out.slice_tokens.shape == (2, config.n_slices, 128)
    assert torch.allclose(out.slice_weights.sum(1), torch.ones(2))
    assert torch.equal(out.logits, again.logits)  # eval mode is deterministic
    assert torch.allclose(single.logits, out.logits[:1], atol=1e-5)  # cases do not interact
    # slice-position embedding: the same slices in the other anatomical order give another output
    assert not torch.allclose(reversed_slices.embedding, out.embedding, atol=1e-4)


def test_feature_standardisation_puts_case_differences_at_unit_scale():
    """Fitted on training stacks, the encoder features reaching the projection have mean 0 and
    sd 1 per slice and feature on those stacks; the random encoder's raw case-to-case spread is
    a small part of the features' size (why the cpu preset standardises)."""
    torch.manual_seed(0)
    config = ModelConfig.preset("cpu", "student", **SMALL)
    student = build_model(config).eval()
    g = torch.Generator().manual_seed(1)
    base = torch.rand(config.n_slices, 3, config.image_size, config.image_size, generator=g)
    cases = base + 0.2 * torch.rand(6, *base.shape, generator=g)  # one anatomy, varying cases
    with torch.no_grad():
        raw = student.slices.features(cases)
        before = student(cases[:2]).logits
        student.slices.standardization.fit(raw)
        standardised = student.slices.standardization(raw)
        after = student(cases[:2]).logits
    assert float(raw.std(0).mean() / raw.abs().mean()) < 0.3
    torch.testing.assert_close(standardised.mean(0), torch.zeros_like(standardised[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.std(0), torch.ones_like(standardised[0]), atol=1e-3, rtol=0)
    expected = (raw - raw.mean(0)) / raw.std(0)
    torch.testing.assert_close(standardised, expected)
    assert not torch.allclose(before, after)  # the projection now sees the standardised features
    with pytest.raises(InputError, match="K >= 2"):
        student.slices.standardization.fit(raw[:1])


def test_wrong_slice_stacks_are_refused_with_the_expected_shape():
    config = ModelConfig.preset("cpu", "student")
    student = build_model(config)
    with pytest.raises(InputError, match=r"\[B, 8, 3, 112, 112\].*got \[2, 5, 3, 112, 112\]"):
        student(torch.zeros(2, 5, 3, 112, 112))
    with pytest.raises(InputError, match="slice stack"):
        student(torch.zeros(8, 3, 112, 112))


def test_teacher_embeds_pet_negatives_like_its_positives(cpu_teacher):
    config = cpu_teacher.config
    cpu_teacher.eval()
    mri, pet = stack(config), stack(config, seed=3)
    with torch.no_grad():
        out = cpu_teacher(mri, pet)
        pet_again = cpu_teacher.embed_pet(pet)
        other_pet = cpu_teacher(mri, stack(config, seed=4))
    assert out.guided.shape == out.pet.shape == out.mri.shape == (2, 128) and out.logits.shape == (2,)
    assert torch.allclose(pet_again, out.pet, atol=1e-6)
    assert not torch.allclose(other_pet.guided, out.guided, atol=1e-4)  # PET guides the anchor
    assert torch.allclose(other_pet.mri, out.mri, atol=1e-6)            # the MRI-only path ignores PET


def test_student_self_attention_starts_from_the_teacher_cross_attention(cpu_teacher):
    student = build_model(ModelConfig.preset("cpu", "student", **SMALL))
    copied = init_student_from_teacher(student, cpu_teacher)
    assert set(copied) == {"attention", "pool", "classifier", "slices.position", "slices.encoder",
                           "slices.projection"}
    student.eval()
    cpu_teacher.eval()
    tokens = torch.randn(2, 4, 128)
    with torch.no_grad():
        assert torch.allclose(student.attention(tokens), cpu_teacher.cross_attention(tokens, tokens, tokens))
        mri = stack(student.config)
        assert torch.allclose(student.slices(mri), cpu_teacher.slices(mri))


def test_light_student_takes_the_teacher_heads_but_keeps_its_cnn(cpu_teacher):
    light = build_model(ModelConfig.preset("cpu", "light_student", **SMALL))
    assert isinstance(light, StudentModel) and not light.encoder.is_vit
    copied = init_student_from_teacher(light, cpu_teacher)
    assert set(copied) == {"attention", "pool", "classifier", "slices.position"}
    assert torch.equal(light.classifier.layers[0].weight, cpu_teacher.classifier.layers[0].weight)
    teacher = ModelConfig.preset("cpu", "teacher", embed_dim=64, **SMALL)
    with pytest.raises(ConfigError, match="embed_dim differs"):
        init_student_from_teacher(light, TeacherModel(teacher))


@pytest.mark.parametrize("kind", ["student", "light_student"])
def test_grad_cam_gives_one_map_per_slice(kind):
    from pytorch_grad_cam import GradCAM

    torch.manual_seed(0)
    config = ModelConfig.preset("cpu", kind, **SMALL)
    student = build_model(config).eval()

    slices = stack(config, batch=1)[0]
    with GradCAM(model=student.gradcam_model(), target_layers=student.gradcam_target_layers(),
                 reshape_transform=student.gradcam_reshape_transform) as cam:
        maps = cam(input_tensor=slices, targets=None)
    assert maps.shape == (config.n_slices, config.image_size, config.image_size)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert maps.reshape(config.n_slices, -1).std(1).max() > 0  # not a blank map
    if kind == "student":
        tokens = torch.randn(3, 1 + 4 * 4, 192)
        assert torch.equal(student.gradcam_reshape_transform(tokens)[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])
    else:
        assert student.gradcam_reshape_transform is None
    assert student.encoder(slices).shape == (config.n_slices, student.encoder.num_features)


# --- frozen encoder (the "frozen" preset: features computed once, heads trained) -----------------


def frozen(kind: str, **overrides) -> ModelConfig:
    return ModelConfig.preset("frozen", kind, **{**SMALL, **overrides})


@pytest.mark.parametrize("kind", ["teacher", "student", "light_student"])
def test_frozen_encoder_gets_no_gradient_and_stays_in_eval_mode(kind):
    model = build_model(frozen(kind))
    model.train()
    assert model.slices.encoder.training is False
    assert all(not m.training for m in model.slices.encoder.modules())
    assert model.slices.projection.training and model.classifier.training
    assert not any(p.requires_grad for p in model.slices.encoder.parameters())
    mri = stack(model.config)
    out = model(mri, stack(model.config, seed=1)) if kind == "teacher" else model(mri)
    out.logits.sum().backward()
    assert all(p.grad is None for p in model.slices.encoder.parameters())
    assert model.slices.projection.layers[1].weight.grad is not None
    # The trainable report counts no encoder parameter.
    assert trainable_parameter_report(model).by_part["slices"][0] == sum(
        p.numel() for n, p in model.slices.named_parameters() if not n.startswith("encoder."))


@pytest.mark.parametrize("kind", ["teacher", "student", "light_student"])
def test_frozen_random_encoders_are_identical_in_every_build(kind):
    torch.manual_seed(0)
    first = build_model(frozen(kind)).slices.encoder.state_dict()
    torch.manual_seed(123)  # whatever the caller's RNG holds
    second = build_model(frozen(kind)).slices.encoder.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    if kind != "light_student":  # the teacher, the student and the baseline share the encoder
        other = build_model(frozen("student" if kind == "teacher" else "teacher")).slices.encoder.state_dict()
        assert all(torch.equal(first[k], other[k]) for k in first)
    # ... while the heads still follow the caller's seed.
    torch.manual_seed(1)
    a = build_model(frozen(kind)).classifier.layers[0].weight
    torch.manual_seed(2)
    assert not torch.equal(a, build_model(frozen(kind)).classifier.layers[0].weight)


def test_frozen_encoder_with_lora_is_a_config_error():
    with pytest.raises(ConfigError, match="freeze_encoder=true.*lora_rank=10"):
        ModelConfig(kind="student", encoder="vit_tiny", weights="none", freeze_encoder=True, lora_rank=10)


@pytest.mark.parametrize("kind", ["student", "light_student"])
def test_student_logits_from_features_equal_those_from_images(kind):
    torch.manual_seed(0)
    model = build_model(frozen(kind)).eval()
    mri = stack(model.config, batch=3)
    with torch.no_grad():
        features = model.slices.features(mri)
        assert features.shape == (3, model.config.n_slices, model.encoder.num_features)
        model.slices.standardization.fit(features + 0.1 * torch.randn_like(features))
        from_images, from_features = model(mri), model(features)
    torch.testing.assert_close(from_features.logits, from_images.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_features.embedding, from_images.embedding, atol=1e-5, rtol=1e-5)


def test_teacher_outputs_from_features_equal_those_from_images():
    torch.manual_seed(0)
    teacher = build_model(frozen("teacher")).eval()
    mri, pet = stack(teacher.config), stack(teacher.config, seed=1)
    with torch.no_grad():
        images = teacher(mri, pet)
        features = teacher(teacher.slices.features(mri), teacher.slices.features(pet))
        pet_only = teacher.embed_pet(teacher.slices.features(pet))
    for name in ("guided", "pet", "mri", "logits"):
        torch.testing.assert_close(getattr(features, name), getattr(images, name), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pet_only, images.pet, atol=1e-5, rtol=1e-5)


def test_wrong_feature_stacks_are_refused_naming_both_forms():
    model = build_model(frozen("student"))
    with pytest.raises(InputError, match=r"or encoder features \[B, 4, 256\]"):
        model(torch.zeros(2, 4, 255))
    with pytest.raises(InputError, match=r"\[B, 4, 3, 64, 64\]"):
        model(torch.zeros(2, 5, 256))


def test_a_frozen_model_saves_loads_and_predicts_on_images(tmp_path):
    from AmyloidKDLib.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    config = frozen("student")
    model = build_model(config).eval()
    mri = stack(config, batch=2)
    with torch.no_grad():
        model.slices.standardization.fit(model.slices.features(stack(config, batch=4, seed=3)))
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn_like(parameter))
        expected = model(mri).logits
    save_checkpoint(tmp_path / "student", model, config, prep_config={"preset": "fast"}, slice_config=SMALL, threshold=0.5,
                    metrics={}, provenance={"run": "unit-test"})
    loaded, info = load_checkpoint(tmp_path / "student")
    assert info.model_config.freeze_encoder and loaded.slices.encoder.training is False
    with torch.no_grad():
        torch.testing.assert_close(loaded(mri).logits, expected, atol=1e-6, rtol=1e-6)
