"""Per-tracer PET harmonisation of the teacher's input (AmyloidKDLib.models.harmonization)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from AmyloidKDLib.errors import InputError
from AmyloidKDLib.models import ModelConfig, build_model
from AmyloidKDLib.models.harmonization import POOLED, PetHarmonization, tracer_index

N, C, S = 3, 3, 16
AV45, PIB = tracer_index("AV45"), tracer_index("pib")


def brain_mask() -> torch.Tensor:
    """A disc of 'brain' in every slice; outside is background."""
    y, x = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return (((y - S / 2 + 0.5) ** 2 + (x - S / 2 + 0.5) ** 2) < (S / 2 - 2) ** 2).float()


def cohort(n_per_group: int = 6, seed: int = 0):
    """PET stacks of two tracers whose white-matter level differs (AV45 higher, as in real
    SUVR) by more than amyloid raises the cortex (the outer ring of the disc)."""
    g = torch.Generator().manual_seed(seed)
    brain = brain_mask()
    y, x = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    cortex = brain * ((((y - S / 2 + 0.5) ** 2 + (x - S / 2 + 0.5) ** 2) > (S / 2 - 4) ** 2).float())
    stacks, tracers, labels = [], [], []
    for tracer, level in ((AV45, 1.0), (PIB, 0.4)):
        for label in (0, 1):
            for _ in range(n_per_group):
                x_img = brain * (level + 0.1 * torch.randn(S, S, generator=g)) + 0.3 * label * cortex
                stacks.append(x_img.expand(N, C, S, S).clone() - 1.0)  # background -1, like CLIP
                tracers.append(tracer)
                labels.append(label)
    return stacks, tracers, labels


def test_tracer_names_map_to_rows_and_unknown_tracers_share_the_pooled_row():
    assert (tracer_index("AV45"), tracer_index(" pib "), tracer_index(None), tracer_index("FBB")) == \
        (0, 1, POOLED, POOLED)


def test_an_unfitted_module_is_the_identity():
    pet = torch.randn(2, N, C, S, S)
    assert torch.equal(PetHarmonization(N, C, S)(pet, torch.tensor([AV45, PIB])), pet)


def test_reference_and_scale_equal_the_hand_computed_negative_statistics():
    stacks, tracers, labels = cohort()
    module = PetHarmonization(N, C, S)
    summary = module.fit(stacks, tracers, labels)
    own = [s for s, t, y in zip(stacks, tracers, labels) if t == PIB and y == 0]
    mean = torch.stack(own).mean(0)
    inside = brain_mask().bool().expand(N, S, S)
    # Per channel (all three are equal here): sd of the negatives' deviations in the brain.
    deviations = torch.stack([(s - mean)[:, 0][inside] for s in own])
    expected_scale = deviations.std(unbiased=True)
    torch.testing.assert_close(module.reference[PIB], mean)
    torch.testing.assert_close(module.scale[PIB], expected_scale.expand(C), rtol=1e-4, atol=1e-6)
    positive = next(s for s, t, y in zip(stacks, tracers, labels) if t == PIB and y == 1)
    torch.testing.assert_close(module(positive[None], torch.tensor([PIB]))[0], (positive - mean) / expected_scale,
                               rtol=1e-4, atol=1e-5)
    assert summary["PIB"] == {"source": "own negatives", "n_reference": 6,
                              "scale": pytest.approx([float(expected_scale)] * C, rel=1e-4)}
    assert summary["unknown"]["source"] == "pooled" and summary["unknown"]["n_reference"] == 12


def test_harmonisation_removes_the_tracer_offset_from_a_brightness_score():
    """Raw mean brain intensity ranks by tracer first (AUC near 0.5 across tracers); after
    harmonisation the same naive score separates amyloid status perfectly on new cases."""
    train, test = cohort(seed=0), cohort(seed=1)
    module = PetHarmonization(N, C, S)
    module.fit(*train)
    stacks, tracers, labels = test
    pet = torch.stack(stacks)
    raw_score = pet.mean(dim=(1, 2, 3, 4)).numpy()
    harmonised = module(pet, torch.tensor(tracers)).mean(dim=(1, 2, 3, 4)).numpy()
    assert roc_auc_score(labels, raw_score) < 0.8
    assert roc_auc_score(labels, harmonised) == 1.0
    negatives = np.array(labels) == 0
    assert abs(harmonised[negatives].mean()) < 0.1  # negatives sit at the reference
    assert np.all(module(pet, torch.tensor(tracers))[:, :, :, 0, 0].numpy() == 0)  # background stays 0


def test_a_tracer_with_too_few_negatives_uses_the_pooled_reference():
    stacks, tracers, labels = cohort()
    keep = [k for k in range(len(stacks)) if not (tracers[k] == PIB and labels[k] == 0)][:-4] + \
        [k for k in range(len(stacks)) if tracers[k] == PIB and labels[k] == 0][:2]
    module = PetHarmonization(N, C, S)
    summary = module.fit([stacks[k] for k in keep], [tracers[k] for k in keep], [labels[k] for k in keep],
                         min_cases=3)
    assert summary["PIB"]["source"] == "pooled" and summary["PIB"]["n_reference"] == 8
    assert summary["AV45"]["source"] == "own negatives"
    torch.testing.assert_close(module.reference[PIB], module.reference[POOLED])
    with pytest.raises(InputError, match="as many stacks"):
        module.fit(stacks, tracers[:-1], labels)


def test_the_teacher_harmonises_before_its_encoder():
    torch.manual_seed(0)
    config = ModelConfig.preset("cpu", "teacher", n_slices=2, image_size=32)
    teacher = build_model(config).eval()
    g = torch.Generator().manual_seed(3)
    stacks = [torch.randn(2, 3, 32, 32, generator=g) + (k % 2) for k in range(8)]
    teacher.harmonization.fit(stacks, [AV45, PIB] * 4, [0, 0, 0, 0, 0, 0, 1, 1])
    mri, pet, tracer = torch.randn(2, 2, 3, 32, 32), torch.stack(stacks[:2]), torch.tensor([AV45, PIB])
    with torch.no_grad():
        direct = teacher(mri, pet, tracer)
        by_hand = teacher(mri, teacher.harmonize_pet(pet, tracer), harmonized=True)
        swapped = teacher(mri, pet, tracer.flip(0))
    torch.testing.assert_close(direct.logits, by_hand.logits)
    torch.testing.assert_close(teacher.embed_pet(pet, tracer), direct.pet)
    assert not torch.allclose(direct.logits, swapped.logits)  # the tracer row matters
