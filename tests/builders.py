"""Builders only tests need: image files from arrays, and tiny random CLIP / T5 text encoders and tokenizers in the
FLUX.1-dev diffusers layout (no download), sized for ``fluxsr.model.presets.TINY_TRANSFORMER``."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from fluxsr.model.text import (
    CLIP_DIR,
    CLIP_MAX_LENGTH,
    CLIP_TOKENIZER_DIR,
    T5_DIR,
    T5_MAX_LENGTH,
    T5_TOKENIZER_DIR,
)


def save(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 H x W (x C) array as the image file ``path`` (format from its suffix), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


TINY_WORDS = ("a", "photo", "of", "the", "cat", "dog", "house", "tree", "sharp", "blurry", "high", "quality")


def _write_tiny_clip_tokenizer(folder: Path) -> int:
    """A byte-level BPE CLIP tokenizer (vocab.json + merges.txt) over lowercase letters; returns its size."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    merges = ["t h", "th e</w>"]
    for token in ("th", "the</w>", "<|startoftext|>", "<|endoftext|>"):  # specials last, as in CLIP
        vocab[token] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": CLIP_MAX_LENGTH})
    )
    return len(vocab)


def _write_tiny_t5_tokenizer(folder: Path) -> int:
    """A Unigram T5 tokenizer (tokenizer.json, built with ``tokenizers``) over a few words + letters; returns size."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [("\u2581" + w, -3.0 - 0.1 * i) for i, w in enumerate(TINY_WORDS)]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "T5Tokenizer",
                "model_max_length": T5_MAX_LENGTH,
                "extra_ids": 0,
                "pad_token": "<pad>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            }
        )
    )
    return len(pieces)


def write_tiny_text_encoders(flux_dir: Path, *, t5_dim: int = 32, clip_dim: int = 32, seed: int = 0) -> Path:
    """Write random tiny CLIP/T5 encoders and tokenizers in the FLUX.1-dev diffusers layout under ``flux_dir``.

    The defaults match ``presets.TINY_TRANSFORMER`` (joint_attention_dim / pooled_projection_dim 32).
    """
    flux_dir = Path(flux_dir)
    clip_vocab = _write_tiny_clip_tokenizer(flux_dir / CLIP_TOKENIZER_DIR)
    t5_vocab = _write_tiny_t5_tokenizer(flux_dir / T5_TOKENIZER_DIR)
    torch.manual_seed(seed)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=clip_vocab,
            hidden_size=clip_dim,
            intermediate_size=2 * clip_dim,
            projection_dim=clip_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=clip_vocab - 2,
            eos_token_id=2,
            pad_token_id=1,
        )
    )  # eos 2: legacy argmax pooling, as FLUX's
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=t5_vocab,
            d_model=t5_dim,
            d_kv=8,
            d_ff=2 * t5_dim,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    clip.save_pretrained(flux_dir / CLIP_DIR)
    t5.save_pretrained(flux_dir / T5_DIR)
    return flux_dir


def put_in_hub_cache(cache, repo_id: str, folder, revision: str = "main") -> str:
    """Lay ``folder`` out in ``cache`` as huggingface_hub's own cache does after a download (``models--org--name``:
    content-addressed ``blobs/``, ``snapshots/<commit>/`` of relative links to them, ``refs/<revision>``);
    returns the (made-up, 40 hex digits) commit."""
    folder, repo = Path(folder), Path(cache) / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1(revision.encode())
    for f in files:
        digest.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    commit = digest.hexdigest()
    for f in files:
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


LAUNCH_TWO = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
"""``accelerate launch`` of two processes, before the launch mode (``--multi_gpu`` or a config file) and script."""
DDP_FLUXSR = ["--multi_gpu", "-m", "fluxsr.cli"]
"""``fluxsr`` under DDP (torchrun; on a machine without CUDA fluxsr runs the processes on the CPU with gloo)."""
TWO_CPU_PROCESSES = [*LAUNCH_TWO, *DDP_FLUXSR]
"""``accelerate launch`` of ``fluxsr`` as two CPU processes: append the command and its arguments."""


def lora_only_folder(base_folder: Path, top: Path, spec: dict, seed: int) -> Path:
    """A LoRA-only fluxsr model folder at ``top``: a rank-2 LoRA with random ``lora_B`` (seeded) on the model at
    ``base_folder``, its prompt embeddings, and ``spec`` as its ``fluxsr.json`` (which names the base)."""
    from fluxsr.io.hub import EMBEDS_FILE, LORA_FILE, SPEC_FILE
    from fluxsr.model.loader import load_model
    from fluxsr.model.lora import add_lora, lora_state_dict, save_lora

    base = load_model(base_folder)
    cfg = add_lora(base.transformer, rank=2, alpha=2)
    for n, p in base.transformer.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(seed))
    top.mkdir()
    save_lora(lora_state_dict(base.transformer), cfg, top / LORA_FILE)
    base.cond.save(top / EMBEDS_FILE)
    (top / SPEC_FILE).write_text(json.dumps(spec))
    return top


def velocity_probe(model) -> torch.Tensor:
    """The model's velocity on one fixed random latent at t = 0.25: two models are the same when these are equal."""
    from fluxsr.model.model import velocity

    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return velocity(model, z, 0.25)
