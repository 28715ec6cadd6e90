"""The FluxSR model: building, loading and saving it, LoRA, running the transformer, the flow maths, and the
cached text conditioning."""

from ..lazy import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "ftd_loss": "flow",
        "one_step": "flow",
        "pack": "flow",
        "unpack": "flow",
        "is_model_dir": "folders",
        "is_model_folder": "folders",
        "load_model_folder": "folders",
        "save_model_folder": "folders",
        "load_model": "loader",
        "DEFAULT_LORA_TARGETS": "lora",
        "add_lora": "lora",
        "apply_lora": "lora",
        "lora_state_dict": "lora",
        "save_lora": "lora",
        "FluxSRModel": "model",
        "ModelSpec": "model",
        "TextCond": "model",
        "model_time": "model",
        "to_device": "model",
        "velocity": "model",
        "BUNDLED_MODEL": "presets",
        "PRESETS": "presets",
        "build_random_flux": "presets",
        "build_tiny": "presets",
        "embed_prompt": "text",
    },
)
