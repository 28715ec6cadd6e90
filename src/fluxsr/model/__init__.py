"""The FluxSR model: building, loading and saving it, LoRA, running the transformer, the flow maths, and the
cached text conditioning."""

from .flow import ftd_loss, one_step, pack, unpack
from .folders import is_model_dir, is_model_folder, load_model_folder, save_model_folder
from .loader import load_model
from .lora import DEFAULT_LORA_TARGETS, add_lora, apply_lora, lora_state_dict, save_lora
from .model import FluxSRModel, ModelSpec, TextCond, model_time, to_device, velocity
from .presets import BUNDLED_MODEL, PRESETS, build_random_flux, build_tiny
from .text import embed_prompt

__all__ = [
    "BUNDLED_MODEL",
    "DEFAULT_LORA_TARGETS",
    "PRESETS",
    "FluxSRModel",
    "ModelSpec",
    "TextCond",
    "add_lora",
    "apply_lora",
    "build_random_flux",
    "build_tiny",
    "embed_prompt",
    "ftd_loss",
    "is_model_dir",
    "is_model_folder",
    "load_model",
    "load_model_folder",
    "lora_state_dict",
    "model_time",
    "one_step",
    "pack",
    "save_lora",
    "save_model_folder",
    "to_device",
    "unpack",
    "velocity",
]
