"""The fluxsr ComfyUI nodes: a loader (-> ``FLUXSR_MODEL``) and an upscaler (``IMAGE`` -> ``IMAGE``).

Only fluxsr's public face is used (``from fluxsr import ...``). ComfyUI's own modules are used when they are
there and skipped when they are not, so the nodes also load and run in plain Python:

- ``folder_paths``: ``models/fluxsr`` is registered as a model folder (with any path extra_model_paths.yaml
  gives for ``fluxsr``); the loader lists what is under it: folders fluxsr loads (fluxsr model folders, diffusers
  FLUX.1-dev folders) and ``.safetensors`` files (BFL ``flux1-dev.safetensors``, ``ae.safetensors``, LoRAs,
  prompt embeddings). Outside ComfyUI, give paths instead of listed names.
- ``comfy.utils.ProgressBar``: one step per image of the batch.
- ``comfy.model_management``: the interrupt check before each image, and ComfyUI's device for ``device=auto``.

Out of memory is fluxsr's business: its planner picks tiles that fit the free memory (or ``max_memory``) and
retries with smaller ones after an out-of-memory error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from fluxsr import (
    COLOR_FIXES,
    OFFLOAD_CHOICES,
    QUANTIZE_MODES,
    FluxSRPipeline,
    ModelChoice,
    UpscaleOptions,
    is_model_dir,
    load_pipeline,
    parse_bytes,
)

try:
    import folder_paths
except ImportError:  # not inside ComfyUI
    folder_paths = None
try:
    import comfy.model_management as model_management
    import comfy.utils as comfy_utils
except ImportError:  # not inside ComfyUI
    model_management = comfy_utils = None

MODEL_FOLDER = "fluxsr"
"""ComfyUI model folder name: ``ComfyUI/models/fluxsr`` (and ``fluxsr:`` entries of extra_model_paths.yaml)."""
WEIGHT_EXTENSIONS = (".safetensors", ".sft")
MODEL_TYPE = "FLUXSR_MODEL"
CATEGORY = "image/upscaling/fluxsr"
BUNDLED = "bundled"
AUTO = "auto"
NONE = "none"
DTYPES = ("bfloat16", "float32")  # no float16: FLUX overflows to black images in it


def register_model_folder(paths=folder_paths) -> None:
    """Add ``<models_dir>/fluxsr`` to ComfyUI's ``fluxsr`` model paths (after any extra_model_paths.yaml gave)
    and make sure its extensions include the weight files'. A no-op outside ComfyUI (``paths`` None)."""
    if paths is None:
        return
    paths.add_model_folder_path(MODEL_FOLDER, os.path.join(paths.models_dir, MODEL_FOLDER))
    folders, extensions = paths.folder_names_and_paths[MODEL_FOLDER]
    paths.folder_names_and_paths[MODEL_FOLDER] = (folders, set(extensions) | set(WEIGHT_EXTENSIONS))


def model_roots() -> list[Path]:
    """The folders searched for models: ComfyUI's ``fluxsr`` model paths; none outside ComfyUI."""
    return [] if folder_paths is None else [Path(p) for p in folder_paths.get_folder_paths(MODEL_FOLDER)]


def find_models(roots: list[Path]) -> tuple[list[str], list[str]]:
    """(model folders, weight files) under ``roots`` as "/"-separated paths relative to their root, sorted.

    A folder fluxsr loads (:func:`fluxsr.is_model_dir`) is listed and not searched further; elsewhere every
    ``.safetensors`` / ``.sft`` file is listed. Hidden folders are skipped; linked folders are followed once.
    """
    folders: set[str] = set()
    files: set[str] = set()
    for root in roots:
        seen: set[str] = set()
        for here, subdirs, names in os.walk(root, followlinks=True):
            rel, real = Path(here).relative_to(root), os.path.realpath(here)
            if real in seen:  # a linked folder met again (a loop)
                subdirs.clear()
                continue
            seen.add(real)
            if rel.parts and is_model_dir(Path(here)):
                folders.add(rel.as_posix())
                subdirs.clear()
                continue
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            files.update((rel / n).as_posix() for n in names if n.lower().endswith(WEIGHT_EXTENSIONS))
    return sorted(folders), sorted(files)


def locate(name: str, roots: list[Path]) -> Path:
    """A listed name (relative to one of ``roots``, first match wins) or an existing path -> its path."""
    for root in roots:
        if (root / name).exists():
            return root / name
    path = Path(name).expanduser()
    if path.exists():
        return path
    listed = ", ".join(map(str, roots))
    raise FileNotFoundError(
        f"{name!r}: neither under {listed} nor an existing path"
        if roots
        else f"{name!r}: no such file or folder"
    )


def device_choices() -> list[str]:
    """``auto`` (ComfyUI's device inside ComfyUI, else CUDA when available), ``cpu`` and the accelerators here."""
    cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    mps = ["mps"] if torch.backends.mps.is_available() else []
    return [AUTO, "cpu", *cuda, *mps]


def pick_device(choice: str) -> torch.device | str | None:
    """The device for a ``device`` choice: ``auto`` is ComfyUI's (``get_torch_device``) or fluxsr's default."""
    if choice != AUTO:
        return choice
    return None if model_management is None else model_management.get_torch_device()


def check_image(images: torch.Tensor) -> None:
    """ValueError unless ``images`` is a ComfyUI IMAGE: a (B, H, W, 3) tensor with at least one image."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected a ComfyUI IMAGE, a tensor [B, H, W, 3] (RGB, B >= 1), got {shape}")


def upscale_batch(pipe: FluxSRPipeline, images: torch.Tensor, opts: UpscaleOptions) -> torch.Tensor:
    """ComfyUI IMAGE (B, h, w, 3) in [0, 1] -> (B, H, W, 3) float32 on the CPU, one image at a time.

    Inside ComfyUI the interrupt check runs before each image (an interrupt stops the batch there) and the
    progress bar moves one step after each.
    """
    check_image(images)
    bar = None if comfy_utils is None else comfy_utils.ProgressBar(len(images))
    out = []
    for image in images:
        if model_management is not None:
            model_management.throw_exception_if_processing_interrupted()
        out.append(pipe.upscale_tensor(image.permute(2, 0, 1), opts).permute(1, 2, 0))
        if bar is not None:
            bar.update(1)
    return torch.stack(out)


class FluxSRModelLoader:
    """Load a FluxSR model for :class:`FluxSRUpscale`: the bundled small model, a fluxsr model folder, or
    FLUX.1-dev (diffusers folder, or BFL ``flux1-dev.safetensors`` with ``ae.safetensors``) with a FluxSR LoRA."""

    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("fluxsr_model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads a FluxSR one-step super-resolution model (fluxsr) from ComfyUI/models/fluxsr."

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        folders, files = find_models(model_roots())
        return {
            "required": {
                "model": (
                    [BUNDLED, *folders, *files],
                    {
                        "default": BUNDLED,
                        "tooltip": "bundled: the small model inside fluxsr; or, under models/fluxsr, a fluxsr "
                        "model folder, a diffusers FLUX.1-dev folder or flux1-dev.safetensors",
                    },
                ),
                "lora": (
                    [NONE, *files],
                    {"default": NONE, "tooltip": "a FluxSR LoRA (safetensors) added to the model"},
                ),
                "lora_scale": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 2.0,
                        "step": 0.05,
                        "tooltip": "LoRA strength (fidelity <-> realism); needs a LoRA",
                    },
                ),
                "ae": (
                    [AUTO, *files],
                    {
                        "default": AUTO,
                        "tooltip": "ae.safetensors for flux1-dev.safetensors (auto: the one beside it)",
                    },
                ),
                "prompt_embeds": (
                    [AUTO, *files],
                    {
                        "default": AUTO,
                        "tooltip": "prompt embeddings for FLUX.1-dev weights, made once by `fluxsr embed-prompt` "
                        "(auto: prompt_embeds.safetensors beside the weights)",
                    },
                ),
                "device": (device_choices(), {"default": AUTO, "tooltip": "auto: ComfyUI's device"}),
                "dtype": (
                    [AUTO, *DTYPES],
                    {"default": AUTO, "tooltip": "auto: bfloat16 on CUDA, float32 elsewhere"},
                ),
                "max_memory": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "memory cap for fluxsr's tile planner, weights included (e.g. 12GiB); "
                        "empty: what is free",
                    },
                ),
                "offload": (
                    list(OFFLOAD_CHOICES),
                    {
                        "default": "auto",
                        "tooltip": "keep weights in CPU RAM until they run: model (transformer or VAE on the GPU "
                        "at a time), blocks (one transformer block at a time); auto: the least that fits",
                    },
                ),
                "quantize": (
                    list(QUANTIZE_MODES),
                    {
                        "default": "none",
                        "tooltip": "weight-only quantisation of the transformer (needs torchao): int8, or fp8 "
                        "on CUDA GPUs of compute capability 8.9+",
                    },
                ),
            }
        }

    def load(  # noqa: PLR0913 (ComfyUI passes each of the node's widgets as one keyword argument)
        self,
        model: str,
        lora: str,
        lora_scale: float,
        ae: str,
        prompt_embeds: str,
        device: str,
        dtype: str,
        max_memory: str,
        offload: str = "auto",
        quantize: str = "none",
    ) -> tuple[FluxSRPipeline]:
        roots = model_roots()

        def path(name: str, unset: str) -> Path | None:
            return None if name == unset else locate(name, roots)

        cap = parse_bytes(max_memory) if max_memory.strip() else None  # a typo fails before the load
        choice = ModelChoice(
            model=path(model, BUNDLED) or BUNDLED,
            ae=path(ae, AUTO),
            prompt_embeds=path(prompt_embeds, AUTO),
            lora=path(lora, NONE),
            lora_scale=lora_scale,
            device=pick_device(device),
            dtype=None if dtype == AUTO else getattr(torch, dtype),
            max_memory=cap,
            offload=offload,
            quantize=quantize,
        )
        pipe = load_pipeline(choice, note=lambda line: print(f"fluxsr: note: {line}", file=sys.stderr))
        return (pipe,)


class FluxSRUpscale:
    """Upscale a ComfyUI IMAGE batch with a loaded FluxSR model (one step per image, tiled)."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = CATEGORY
    DESCRIPTION = "One-step real-world super-resolution (FluxSR); tiles fit the free memory."

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "fluxsr_model": (MODEL_TYPE,),
                "image": ("IMAGE",),
                "scale": (
                    "FLOAT",
                    {"default": 4.0, "min": 0.25, "max": 16.0, "step": 0.05, "tooltip": "output/input size"},
                ),
                "tile": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 8192,
                        "step": 16,
                        "tooltip": "tile edge in output pixels (0: the model's); lowered when memory is short",
                    },
                ),
                "overlap": (
                    "INT",
                    {
                        "default": -1,
                        "min": -1,
                        "max": 1024,
                        "step": 8,
                        "tooltip": "tile overlap in output pixels (-1: the model's)",
                    },
                ),
                "color_fix": (
                    list(COLOR_FIXES),
                    {
                        "default": "wavelet",
                        "tooltip": "match the colours of the input (wavelet: low frequencies)",
                    },
                ),
            }
        }

    def upscale(
        self,
        fluxsr_model: FluxSRPipeline,
        image: torch.Tensor,
        scale: float,
        tile: int,
        overlap: int,
        color_fix: str,
    ) -> tuple[torch.Tensor]:
        opts = UpscaleOptions(
            scale=scale, color_fix=color_fix, tile=tile or None, overlap=None if overlap < 0 else overlap
        )
        return (upscale_batch(fluxsr_model, image, opts),)


register_model_folder()

NODE_CLASS_MAPPINGS = {"FluxSRModelLoader": FluxSRModelLoader, "FluxSRUpscale": FluxSRUpscale}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FluxSRModelLoader": "Load FluxSR Model",
    "FluxSRUpscale": "Upscale Image (FluxSR)",
}
