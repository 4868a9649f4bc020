"""Teacher, students and their parts (encoder + LoRA, heads); build one from a ModelConfig.

>>> config = ModelConfig.preset("cpu", "student")
>>> model = build_model(config)          # StudentModel: forward(mri[B, N, 3, S, S]) -> ModelOutput
"""

from __future__ import annotations

from torch import nn

from AmyloidKDLib.errors import ConfigError
from AmyloidKDLib.models.config import KINDS, ModelConfig, list_presets
from AmyloidKDLib.models.encoders import SliceEncoder, create_encoder, list_encoders
from AmyloidKDLib.models.lora import TrainableReport, trainable_parameter_report
from AmyloidKDLib.models.student import ModelOutput, StudentModel
from AmyloidKDLib.models.teacher import TeacherModel, TeacherOutput

__all__ = [
    "KINDS", "ModelConfig", "ModelOutput", "SliceEncoder", "StudentModel", "TeacherModel",
    "TeacherOutput", "TrainableReport", "build_model", "create_encoder", "init_student_from_teacher",
    "list_encoders", "list_presets", "trainable_parameter_report",
]


def build_model(config: ModelConfig, *, load_pretrained: bool = True) -> TeacherModel | StudentModel:
    """The model ``config.kind`` asks for, with encoder weights from ``config.weights``.

    ``load_pretrained=False`` skips the encoder weights (random, no warning): for loading a
    checkpoint, whose own weights replace them.
    """
    if config.kind == "teacher":
        return TeacherModel(config, load_pretrained=load_pretrained)
    return StudentModel(config, load_pretrained=load_pretrained)


def _copy(target: nn.Module, source: nn.Module) -> bool:
    target_state, source_state = target.state_dict(), source.state_dict()
    if target_state.keys() != source_state.keys() or any(
            target_state[k].shape != source_state[k].shape for k in target_state):
        return False
    target.load_state_dict(source_state)
    return True


def init_student_from_teacher(student: StudentModel, teacher: TeacherModel) -> list[str]:
    """Initialise ``student`` from a trained ``teacher``, in place; returns what was copied.

    The student's self-attention starts from the teacher's cross-attention, its pooling and
    classifier from the teacher's guided pooling and classifier. When both use the same encoder
    (paper student) the encoder (with LoRA), projection and slice positions are copied too; a
    light student keeps its own CNN and projection. A paper student that takes the teacher's
    encoder can be built with ``build_model(config, load_pretrained=False)``.

    Raises ConfigError when embedding sizes, attention heads or slice counts differ.
    """
    s, t = student.config, teacher.config
    for name in ("embed_dim", "attention_heads", "n_slices", "pooling_hidden", "classifier_hidden"):
        if getattr(s, name) != getattr(t, name):
            raise ConfigError(f"cannot initialise the student from the teacher: {name} differs "
                              f"({getattr(s, name)} vs {getattr(t, name)}). Use the same value in both configs.")
    pairs = [("attention", student.attention, teacher.cross_attention),
             ("pool", student.pool, teacher.guided_pool),
             ("classifier", student.classifier, teacher.classifier),
             ("slices.position", student.slices.position, teacher.slices.position)]
    if s.encoder == t.encoder and s.image_size == t.image_size:
        pairs += [("slices.encoder", student.slices.encoder, teacher.slices.encoder),
                  ("slices.projection", student.slices.projection, teacher.slices.projection)]
    copied = []
    for name, target, source in pairs:
        if _copy(target, source):
            copied.append(name)
        elif name == "slices.encoder":
            raise ConfigError("student and teacher share the encoder name but not its LoRA layout "
                              "(lora_rank/lora_target differ); use the teacher's LoRA settings.")
    return copied
