"""FLUX.1-dev from disk: a diffusers folder (``transformer/``, ``vae/``) or Black Forest Labs single files
(``flux1-dev.safetensors`` + ``ae.safetensors``), read straight into the dtype the run uses."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..io.cache import DamagedFileError, read_safetensors, safetensors_header
from ..io.hub import SPEC_FILE
from .bfl_keys import bfl_to_diffusers, block_indices
from .model import FluxSRModel, ModelSpec, TextCond
from .presets import FLUX_VAE, build_transformer, build_vae

SAFETENSORS_FLOATS = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
}
"""safetensors' names of the floating-point dtypes fluxsr reads."""


def stored_floats(files: list[Path]) -> set[torch.dtype]:
    """The floating-point dtypes the tensors of safetensors ``files`` are stored in, from their headers."""
    from safetensors import safe_open

    found = set()
    for file in files:
        with safe_open(str(file), "pt") as f:
            found |= {f.get_slice(k).get_dtype() for k in f.keys()}
    return {SAFETENSORS_FLOATS[name] for name in found if name in SAFETENSORS_FLOATS}


def read_dtype(stored: set[torch.dtype], dtype: torch.dtype | None, widen_later: bool = False) -> torch.dtype:
    """The dtype to read weights stored in ``stored`` dtypes in: ``dtype`` (default float32), or, with
    ``widen_later``, the files' own float type when it is one and narrower (bf16 files, float32 asked).

    Weights read in the dtype they are stored in are not copied: they stay views of the memory-mapped file, pages
    of the page cache that every process on the node shares. Widening them while reading would give each process a
    private float32 copy (48 GB for FLUX.1-dev, per rank under ``accelerate launch``); the caller instead widens
    them as it moves them to its device (``module.to(device, dtype)``, one tensor at a time)."""
    dtype = dtype or torch.float32
    if widen_later and len(stored) == 1:
        (kept,) = stored
        if kept.itemsize < dtype.itemsize:
            return kept
    return dtype


def pretrained(cls, folder: Path, dtype: torch.dtype | None = None, widen_later: bool = False):
    """``cls.from_pretrained(folder)`` from local safetensors only, straight into ``dtype`` (default: float32;
    ``widen_later``: see :func:`read_dtype`): diffusers builds the model on the meta device and assigns each tensor
    as it is read, cast to ``dtype``, so a bf16 FLUX.1-dev is never materialised in float32 on the host
    (scripts/measure_load_rss.py); read in its stored dtype, it stays memory-mapped. A missing ``config.json`` or
    weights that exist only as pickles (``.bin``, never loaded by fluxsr) are a FileNotFoundError naming the
    folder."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}/config.json is missing: not a diffusers {cls.__name__} folder")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        raise FileNotFoundError(
            f"{folder}: no .safetensors weights"
            + (
                f" ({', '.join(pickles[:3])} are pickles, which fluxsr never loads: convert them to safetensors)"
                if pickles
                else ""
            )
        )
    for file in weights:  # a cut-short file: one line naming it, not diffusers' traceback
        safetensors_header(file)
    return cls.from_pretrained(
        folder,
        local_files_only=True,
        use_safetensors=True,
        torch_dtype=read_dtype(stored_floats(weights) if widen_later else set(), dtype, widen_later),
        low_cpu_mem_usage=True,
    )


def pretrained_parts(folder: Path, dtype: torch.dtype | None = None, widen_later: bool = False) -> tuple:
    """(transformer, VAE) from ``folder/transformer`` and ``folder/vae`` (a fluxsr model folder or a diffusers FLUX
    folder), each through :func:`pretrained`. diffusers is imported here, where a model is loaded, not with the
    module: commands that load no model start without it."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel

    return (
        pretrained(FluxTransformer2DModel, folder / "transformer", dtype, widen_later),
        pretrained(AutoencoderKL, folder / "vae", dtype, widen_later),
    )


def check_flux_folder(path: Path) -> None:
    """FileNotFoundError unless ``path`` holds a diffusers FLUX transformer and VAE (their config.json)."""
    for sub in ("transformer", "vae"):
        if not (path / sub / "config.json").is_file():
            hint = "" if (path / "vae").is_dir() else " (a training run's model is its final/ folder)"
            raise FileNotFoundError(
                f"{path} is neither a fluxsr model folder (no {SPEC_FILE}) nor a diffusers FLUX "
                f"folder ({sub}/config.json is missing){hint}"
            )


FLUX_FILE_KINDS = (
    "a fluxsr model folder, a diffusers FLUX folder or a Black Forest Labs flux1-dev.safetensors"
)


def check_flux_file(path: Path) -> None:
    """ValueError naming ``path`` unless it is a safetensors file holding a Black Forest Labs FLUX transformer
    (``img_in.weight``); reads the header only."""
    try:
        names, _ = safetensors_header(path)
    except DamagedFileError as e:
        raise DamagedFileError(f"{e}; expected {FLUX_FILE_KINDS}") from None
    if not any(k.removeprefix("model.diffusion_model.") == "img_in.weight" for k in names):
        raise ValueError(
            f"{path}: not a Black Forest Labs FLUX transformer file (no img_in.weight); "
            "a diffusers folder or a fluxsr model folder is loaded by its folder"
        )


def check_flux(path: Path) -> None:
    """The check of FLUX.1-dev weights at ``path``: :func:`check_flux_folder` for a folder, :func:`check_flux_file`
    (the file's header, read once) for a file."""
    if Path(path).is_dir():
        check_flux_folder(Path(path))
    else:
        check_flux_file(Path(path))


def load_flux(
    path: Path,
    cond: TextCond,
    spec: ModelSpec | None = None,
    dtype: torch.dtype | None = None,
    ae: Path | None = None,
    widen_later: bool = False,
) -> FluxSRModel:
    """FLUX.1-dev weights that :func:`check_flux` accepted, in ``dtype`` (default float32; ``widen_later``: see
    :func:`read_dtype`): a diffusers folder, or a Black Forest Labs single file with its autoencoder ``ae``
    (default: ``ae.safetensors`` beside it)."""
    path = Path(path)
    if path.is_dir():
        return load_flux_diffusers(path, cond, spec, dtype, widen_later)
    return load_flux_single_file(path, ae or path.parent / "ae.safetensors", cond, spec, dtype, widen_later)


def load_flux_diffusers(
    path: Path,
    cond: TextCond,
    spec: ModelSpec | None = None,
    dtype: torch.dtype | None = None,
    widen_later: bool = False,
) -> FluxSRModel:
    """FLUX.1-dev from a local diffusers folder that :func:`check_flux_folder` accepted (``transformer/``, ``vae/``;
    text encoders are not loaded), read straight into ``dtype`` (default float32; see :func:`pretrained`)."""
    path = Path(path)
    return FluxSRModel(
        *pretrained_parts(path, dtype, widen_later),
        cond,
        spec or ModelSpec(name=f"flux:{path.name}"),
    )


def transformer_config_from_bfl(sd: dict[str, Tensor], metadata: dict[str, str] | None = None) -> dict:
    """Infer a FluxTransformer2DModel config from BFL tensors (rotary axes from metadata unless head dim is 128)."""
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in sd.items()}
    inner, in_ch = sd["img_in.weight"].shape
    head = sd["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
    meta = metadata or {}
    if "axes_dims_rope" in meta:
        axes = tuple(json.loads(meta["axes_dims_rope"]))
    elif head == 128:
        axes = (16, 56, 56)
    else:
        raise ValueError(
            f"head dim {head}: rotary axes unknown; store 'axes_dims_rope' in the file's metadata"
        )
    return dict(
        patch_size=1,
        in_channels=in_ch,
        num_layers=len(block_indices(sd, "double_blocks")),
        num_single_layers=len(block_indices(sd, "single_blocks")),
        attention_head_dim=head,
        num_attention_heads=inner // head,
        joint_attention_dim=sd["txt_in.weight"].shape[1],
        pooled_projection_dim=sd["vector_in.in_layer.weight"].shape[1],
        guidance_embeds="guidance_in.in_layer.weight" in sd,
        axes_dims_rope=axes,
    )


def vae_config_from_ldm(sd: dict[str, Tensor], metadata: dict[str, str] | None = None) -> dict:
    """Infer an AutoencoderKL config (FLUX layout) from an LDM/BFL ``ae.safetensors`` state dict."""
    downs = block_indices(sd, "encoder.down")
    chans = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in downs)
    per_block = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
    meta = metadata or {}
    return dict(
        FLUX_VAE,
        in_channels=sd["encoder.conv_in.weight"].shape[1],
        out_channels=sd["decoder.conv_out.weight"].shape[0],
        latent_channels=sd["encoder.conv_out.weight"].shape[0] // 2,
        block_out_channels=chans,
        layers_per_block=per_block,
        down_block_types=("DownEncoderBlock2D",) * len(chans),
        up_block_types=("UpDecoderBlock2D",) * len(chans),
        norm_num_groups=int(meta.get("norm_num_groups", 32)),
        use_quant_conv="quant_conv.weight" in sd,
        use_post_quant_conv="post_quant_conv.weight" in sd,
        scaling_factor=float(meta.get("scaling_factor", FLUX_VAE["scaling_factor"])),
        shift_factor=float(meta.get("shift_factor", FLUX_VAE["shift_factor"])),
    )


def cast_state(state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """The floating tensors of ``state`` in ``dtype``, cast one at a time and taken out of ``state`` as they go,
    so a cast holds at most the original plus one converted tensor beyond the result (no copy when the dtype is
    already right)."""
    out = {}
    for key in list(state):
        t = state.pop(key)
        out[key] = t.to(dtype) if t.is_floating_point() else t
    return out


def load_flux_single_file(
    transformer_file: Path,
    ae_file: Path,
    cond: TextCond,
    spec: ModelSpec | None = None,
    dtype: torch.dtype | None = None,
    widen_later: bool = False,
) -> FluxSRModel:
    """FLUX.1-dev from Black Forest Labs single files (``flux1-dev.safetensors``, which :func:`check_flux_file`
    accepted, and ``ae.safetensors``) in ``dtype`` (default float32; ``widen_later``: see :func:`read_dtype`): both
    models are built on the meta device and take the file's tensors by assignment (:func:`cast_state`), so a bf16
    file loaded in bf16 is held once, memory-mapped."""
    if not Path(ae_file).is_file():
        raise FileNotFoundError(
            f"{ae_file} not found: the FLUX autoencoder of {transformer_file} (pass --ae FILE)"
        )
    sd, meta = read_safetensors(transformer_file)
    floats = {t.dtype for t in sd.values() if t.is_floating_point()}
    transformer = build_transformer(transformer_config_from_bfl(sd, meta), meta=True)
    state = bfl_to_diffusers(sd)
    del sd
    transformer.load_state_dict(
        cast_state(state, read_dtype(floats, dtype, widen_later)), strict=True, assign=True
    )
    ae, ae_meta = read_safetensors(ae_file)
    floats = {t.dtype for t in ae.values() if t.is_floating_point()}
    vae_cfg = vae_config_from_ldm(ae, ae_meta)
    vae = build_vae(vae_cfg, meta=True)
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae_state = cast_state(convert_ldm_vae_checkpoint(ae, vae_cfg), read_dtype(floats, dtype, widen_later))
    vae.load_state_dict(vae_state, strict=True, assign=True)
    return FluxSRModel(transformer, vae, cond, spec or ModelSpec(name=f"flux:{Path(transformer_file).name}"))
