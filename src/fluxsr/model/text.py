"""Compute FLUX text conditioning once and cache it, so the text encoders never load at training or inference.

FluxSR conditions FLUX on one fixed prompt (by default the empty one). :func:`embed_prompt` reads only the text
encoders and tokenizers of a local FLUX.1-dev diffusers folder::

    text_encoder/     CLIPTextModel    -> pooled CLIP embedding (1, 768): CLIP tokens padded/truncated to 77
    tokenizer/        CLIPTokenizer
    text_encoder_2/   T5EncoderModel   -> T5 last hidden state (1, max_length, 4096): padded to max_length
    tokenizer_2/      T5TokenizerFast

and computes the embeddings exactly as diffusers' ``FluxPipeline.encode_prompt`` does (``tests/model/test_text.py``
checks it against the pipeline). The encoders load one after the other and are freed as soon as they are used.

``max_length`` (T5 tokens) trades memory and speed for nothing else when the prompt is short: FLUX.1-dev uses 512,
but 64 or even 16 tokens hold a short prompt and make every transformer step cheaper. The transformer sees the padded
sequence, so a model must be trained and run with embeddings of the same length: cache one file and use it for both.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import torch
from torch import Tensor

from ..io.hub import EMBEDS_FILE
from .model import TextCond

log = logging.getLogger(__name__)

CLIP_DIR, CLIP_TOKENIZER_DIR = "text_encoder", "tokenizer"
T5_DIR, T5_TOKENIZER_DIR = "text_encoder_2", "tokenizer_2"
TEXT_SUBFOLDERS = (CLIP_DIR, CLIP_TOKENIZER_DIR, T5_DIR, T5_TOKENIZER_DIR)
CLIP_MAX_LENGTH = 77  # what FluxPipeline falls back to; FLUX.1-dev's CLIP tokenizer says the same
T5_MAX_LENGTH = 512  # FLUX.1-dev's longest T5 sequence (FLUX.1-schnell: 256)


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def check_text_folders(flux_dir: Path) -> None:
    """Raise ``FileNotFoundError`` naming what ``flux_dir`` lacks to compute FLUX text embeddings."""
    flux_dir = Path(flux_dir)
    if not flux_dir.exists():
        raise FileNotFoundError(f"FLUX folder not found: {flux_dir}")
    missing = [name for name in TEXT_SUBFOLDERS if not (flux_dir / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{flux_dir} lacks {', '.join(s + '/' for s in missing)}: prompt embeddings need the text encoders and "
            f"tokenizers of a FLUX.1-dev diffusers folder ({', '.join(s + '/' for s in TEXT_SUBFOLDERS)}). "
            "Black Forest Labs single files (flux1-dev.safetensors, ae.safetensors) hold no text encoders; fetch "
            "them with e.g. `huggingface-cli download black-forest-labs/FLUX.1-dev --include "
            "'text_encoder*/*' 'tokenizer*/*' --local-dir DIR`."
        )


def _dtype_kwargs(dtype: torch.dtype) -> dict:
    """``from_pretrained`` keyword for the weight dtype: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import transformers
    from packaging.version import Version

    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: dtype}


def _load_encoder(cls, path: Path, device, dtype: torch.dtype):
    """A transformers text encoder from a local folder, in eval mode on ``device``."""
    model = cls.from_pretrained(path, local_files_only=True, use_safetensors=True, **_dtype_kwargs(dtype))
    return model.to(device).eval().requires_grad_(False)


def load_clip(flux_dir: Path, device="cpu", dtype: torch.dtype = torch.float32):
    """(CLIPTokenizer, CLIPTextModel) from ``flux_dir/tokenizer`` and ``flux_dir/text_encoder``."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(Path(flux_dir) / CLIP_TOKENIZER_DIR, local_files_only=True)
    return tokenizer, _load_encoder(CLIPTextModel, Path(flux_dir) / CLIP_DIR, device, dtype)


def load_t5(flux_dir: Path, device="cpu", dtype: torch.dtype = torch.float32):
    """(T5TokenizerFast, T5EncoderModel) from ``flux_dir/tokenizer_2`` and ``flux_dir/text_encoder_2``."""
    from transformers import T5EncoderModel, T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(Path(flux_dir) / T5_TOKENIZER_DIR, local_files_only=True)
    return tokenizer, _load_encoder(T5EncoderModel, Path(flux_dir) / T5_DIR, device, dtype)


def release_memory() -> None:
    """Return the memory of encoders no longer referenced (host and CUDA), cycles included."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------------------
# Encoding (mirrors FluxPipeline._get_clip_prompt_embeds / _get_t5_prompt_embeds for one prompt)
# ----------------------------------------------------------------------------------------------------------------


def clip_max_length(tokenizer) -> int:
    """CLIP sequence length: the tokenizer's ``model_max_length`` as FluxPipeline uses it, 77 if it has none."""
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if n is not None and 0 < n <= 1_000_000 else CLIP_MAX_LENGTH


def tokenize(tokenizer, prompt: str, max_length: int, what: str) -> Tensor:
    """Token ids (1, max_length), padded to ``max_length`` and truncated, warning when the prompt was cut."""
    ids = tokenizer(
        [prompt], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids
    full = len(tokenizer(prompt, verbose=False).input_ids)
    if full > max_length:
        log.warning(
            "%s kept %d of the prompt's %d tokens (max_length %d)", what, max_length, full, max_length
        )
    return ids


@torch.no_grad()
def clip_pooled(tokenizer, model, prompt: str) -> Tensor:
    """Pooled CLIP text embedding (1, P) of ``prompt``."""
    ids = tokenize(tokenizer, prompt, clip_max_length(tokenizer), "CLIP")
    out = model(ids.to(model.device), output_hidden_states=False)
    return out.pooler_output.to(dtype=model.dtype)


@torch.no_grad()
def t5_sequence(tokenizer, model, prompt: str, max_length: int = T5_MAX_LENGTH) -> Tensor:
    """T5 last hidden state (1, max_length, D) of ``prompt``, padded to ``max_length`` tokens."""
    ids = tokenize(tokenizer, prompt, max_length, "T5")
    return model(ids.to(model.device), output_hidden_states=False)[0].to(dtype=model.dtype)


def _check_max_length(max_length: int) -> None:
    """Reject lengths FLUX cannot use; warn above what FLUX.1-dev was trained with."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if max_length > T5_MAX_LENGTH:
        log.warning("max_length %d exceeds FLUX.1-dev's %d T5 tokens", max_length, T5_MAX_LENGTH)


def _check_finite(name: str, t: Tensor, dtype: torch.dtype) -> None:
    """Fail loudly on NaN/inf embeddings (T5 v1.1 overflows in float16: use bfloat16 or float32)."""
    if not torch.isfinite(t).all():
        raise FloatingPointError(
            f"{name} embeddings are not finite in {dtype}; use torch.bfloat16 or torch.float32"
        )


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def _encode_clip(flux_dir: Path, prompt: str, device, dtype: torch.dtype) -> Tensor:
    """Load CLIP, encode ``prompt`` to its pooled embedding on the CPU; the encoder is dropped on return."""
    tokenizer, model = load_clip(flux_dir, device, dtype)
    return clip_pooled(tokenizer, model, prompt).cpu()


def _encode_t5(flux_dir: Path, prompt: str, max_length: int, device, dtype: torch.dtype) -> Tensor:
    """Load T5, encode ``prompt`` to its padded sequence on the CPU; the encoder is dropped on return."""
    tokenizer, model = load_t5(flux_dir, device, dtype)
    return t5_sequence(tokenizer, model, prompt, max_length).cpu()


def embed_prompt(
    flux_dir: Path,
    prompt: str = "",
    max_length: int = T5_MAX_LENGTH,
    device="cpu",
    dtype: torch.dtype = torch.float32,
) -> TextCond:
    """FLUX text conditioning of ``prompt`` as ``FluxPipeline.encode_prompt`` computes it, returned on the CPU.

    Loads only the CLIP and T5 encoders and tokenizers of the diffusers folder ``flux_dir`` (never the transformer
    or the VAE, never the network), one at a time onto ``device`` in ``dtype``, and frees each after use. Returns
    a :class:`TextCond` with ``prompt_embeds`` (1, max_length, D_t5) and ``pooled_embeds`` (1, D_clip) in
    ``dtype``. T5-XXL needs about 19 GB in float32 and 9.5 GB in bfloat16; float16 overflows (an error is raised).
    """
    check_text_folders(flux_dir)
    _check_max_length(max_length)
    pooled = _encode_clip(flux_dir, prompt, device, dtype)  # CLIP is freed (by refcount) before T5 loads
    seq = _encode_t5(flux_dir, prompt, max_length, device, dtype)
    release_memory()
    _check_finite("CLIP", pooled, dtype)
    _check_finite("T5", seq, dtype)
    return TextCond(seq.contiguous(), pooled.contiguous(), prompt)


class TextEncoders:
    """CLIP and T5 kept loaded, for encoding many prompts (teacher sampling in ``fluxsr gen-pairs``).

    ``encode(prompt)`` gives the same :class:`TextCond` as :func:`embed_prompt`, without reloading the encoders.
    """

    def __init__(
        self,
        flux_dir: Path,
        max_length: int = T5_MAX_LENGTH,
        device="cpu",
        dtype: torch.dtype = torch.float32,
    ):
        check_text_folders(flux_dir)
        _check_max_length(max_length)
        self.max_length, self.dtype = max_length, dtype
        self.clip = load_clip(flux_dir, device, dtype)
        self.t5 = load_t5(flux_dir, device, dtype)

    def encode(self, prompt: str) -> TextCond:
        pooled = clip_pooled(*self.clip, prompt).cpu()
        seq = t5_sequence(*self.t5, prompt, self.max_length).cpu()
        _check_finite("CLIP", pooled, self.dtype)
        _check_finite("T5", seq, self.dtype)
        return TextCond(seq.contiguous(), pooled.contiguous(), prompt)


def default_embeds_path(flux_dir: Path) -> Path:
    """Where ``fluxsr embed-prompt`` writes by default: ``flux_dir/prompt_embeds.safetensors``."""
    return Path(flux_dir) / EMBEDS_FILE


def save_prompt_embeds(cond: TextCond, out_path: Path) -> Path:
    """Write ``cond`` as a safetensors file (read back with ``TextCond.load``); returns the path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cond.save(out_path)
    return out_path
