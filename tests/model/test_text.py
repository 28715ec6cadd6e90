"""Prompt embeddings from FLUX's CLIP/T5 encoders: checked against diffusers' FluxPipeline.encode_prompt."""

import logging
import shutil

import pytest
import torch

from fluxsr.io.hub import EMBEDS_FILE
from fluxsr.model import text as T
from fluxsr.model.model import TextCond, velocity
from fluxsr.model.presets import TINY_TEXT_LEN, build_tiny
from tests.builders import write_tiny_text_encoders

PROMPT = "a sharp photo of the cat"


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    """A FLUX.1-dev-layout folder holding only tiny random text encoders and tokenizers."""
    return write_tiny_text_encoders(tmp_path_factory.mktemp("flux"), seed=1)


@pytest.fixture(scope="module")
def pipe(flux_dir):
    """diffusers' FluxPipeline around the same tiny encoders (no transformer, no VAE needed to encode)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    clip_tok, clip = T.load_clip(flux_dir)
    t5_tok, t5 = T.load_t5(flux_dir)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=None,
        text_encoder=clip,
        tokenizer=clip_tok,
        text_encoder_2=t5,
        tokenizer_2=t5_tok,
        transformer=None,
    )


@pytest.fixture(scope="module")
def cond(flux_dir):
    return T.embed_prompt(flux_dir, PROMPT, max_length=16)


@pytest.mark.parametrize("prompt,max_length", [("", 512), (PROMPT + ", " + "the dog " * 30, 16)])
def test_matches_flux_pipeline_encode_prompt(flux_dir, pipe, prompt, max_length):
    """The point of the module: same tensors as FluxPipeline, at full length and truncated (CLIP and T5 both cut)."""
    cond = T.embed_prompt(flux_dir, prompt, max_length=max_length)
    ref_seq, ref_pooled, _ = pipe.encode_prompt(prompt, device="cpu", max_sequence_length=max_length)
    assert cond.prompt_embeds.shape == ref_seq.shape == (1, max_length, 32)
    assert cond.pooled_embeds.shape == ref_pooled.shape == (1, 32)
    assert torch.equal(cond.prompt_embeds, ref_seq)
    assert torch.equal(cond.pooled_embeds, ref_pooled)
    assert cond.prompt == prompt


def test_deterministic_and_prompt_dependent(flux_dir, cond):
    again = T.embed_prompt(flux_dir, PROMPT, max_length=16)
    other = T.embed_prompt(flux_dir, "a blurry photo of the dog", max_length=16)
    assert torch.equal(again.prompt_embeds, cond.prompt_embeds)
    assert torch.equal(again.pooled_embeds, cond.pooled_embeds)
    assert (other.prompt_embeds - cond.prompt_embeds).abs().max() > 1e-3
    assert (other.pooled_embeds - cond.pooled_embeds).abs().max() > 1e-3
    assert torch.isfinite(cond.prompt_embeds).all() and cond.prompt_embeds.dtype == torch.float32


def test_bfloat16(flux_dir, cond):
    half = T.embed_prompt(flux_dir, PROMPT, max_length=16, dtype=torch.bfloat16)
    assert half.prompt_embeds.dtype == half.pooled_embeds.dtype == torch.bfloat16
    assert torch.allclose(half.prompt_embeds.float(), cond.prompt_embeds, atol=0.1, rtol=0.05)
    assert torch.allclose(half.pooled_embeds.float(), cond.pooled_embeds, atol=0.1, rtol=0.05)


def test_save_and_load_roundtrip(flux_dir, cond, tmp_path):
    path = T.save_prompt_embeds(cond, tmp_path / "sub" / EMBEDS_FILE)
    back = TextCond.load(path)
    assert torch.equal(back.prompt_embeds, cond.prompt_embeds)
    assert torch.equal(back.pooled_embeds, cond.pooled_embeds)
    assert back.prompt == PROMPT
    assert T.default_embeds_path(flux_dir) == flux_dir / "prompt_embeds.safetensors"


def test_short_length_warns_and_conditions_the_tiny_transformer(flux_dir, caplog):
    """A prompt cut to TINY_TEXT_LEN T5 tokens warns, and its embeddings drive models.TINY_TRANSFORMER."""
    with caplog.at_level(logging.WARNING, logger="fluxsr.model.text"):
        short = T.embed_prompt(flux_dir, "the cat " * 20, max_length=TINY_TEXT_LEN)
    assert any(f"T5 kept {TINY_TEXT_LEN}" in r.getMessage() for r in caplog.records)
    assert short.prompt_embeds.shape == (1, TINY_TEXT_LEN, 32)
    model = build_tiny(seed=0)
    model.cond = short
    v = velocity(model, torch.randn(1, 16, 4, 4), 0.25)
    assert v.shape == (1, 16, 4, 4) and torch.isfinite(v).all()


@pytest.mark.parametrize("missing", ["text_encoder_2", "tokenizer"])
def test_missing_subfolder_is_a_clear_error(flux_dir, tmp_path, missing):
    partial = tmp_path / "flux"
    shutil.copytree(flux_dir, partial)
    shutil.rmtree(partial / missing)
    with pytest.raises(FileNotFoundError, match=f"lacks {missing}/"):
        T.embed_prompt(partial, PROMPT)


def test_missing_folder_and_bad_length(tmp_path, flux_dir):
    with pytest.raises(FileNotFoundError, match="not found"):
        T.embed_prompt(tmp_path / "nope")
    with pytest.raises(ValueError, match="max_length"):
        T.embed_prompt(flux_dir, PROMPT, max_length=0)


def test_text_encoders_kept_loaded_match_embed_prompt(tmp_path):
    from fluxsr.model.text import TextEncoders, embed_prompt

    write_tiny_text_encoders(tmp_path)
    enc = TextEncoders(tmp_path, max_length=8)
    for prompt in ("", "a photo of a cat"):
        a, b = enc.encode(prompt), embed_prompt(tmp_path, prompt, max_length=8)
        assert torch.equal(a.prompt_embeds, b.prompt_embeds) and torch.equal(a.pooled_embeds, b.pooled_embeds)
