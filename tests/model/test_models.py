"""Model presets, fluxsr model folders, FLUX.1-dev layouts (diffusers folder, BFL single files) and LoRA."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fluxsr.io import cache
from fluxsr.io.hub import EMBEDS_FILE, LORA_FILE, SPEC_FILE
from fluxsr.model import flux_dev
from fluxsr.model.bfl_keys import bfl_to_diffusers, diffusers_to_bfl, vae_to_ldm
from fluxsr.model.flow import img_ids, pack, txt_ids, unpack
from fluxsr.model.flux_dev import cast_state, read_dtype, transformer_config_from_bfl
from fluxsr.model.folders import save_model_folder
from fluxsr.model.loader import load_model
from fluxsr.model.lora import DEFAULT_LORA_TARGETS, add_lora, apply_lora, lora_state_dict, save_lora
from fluxsr.model.model import (
    FluxSRModel,
    ModelSpec,
    TextCond,
    model_time,
    to_device,
    velocity,
)
from fluxsr.model.presets import (
    FLUX_DEV_TRANSFORMER,
    TINY_TEXT_LEN,
    TINY_TRANSFORMER,
    build_tiny,
    build_transformer,
)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=3)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_tiny_velocity_shapes(tiny):
    z = torch.randn(2, 16, 6, 4)
    v = velocity(tiny, z, 0.25)
    assert v.shape == z.shape and torch.isfinite(v).all()
    v2 = velocity(tiny, z, torch.tensor([0.25, 0.5]))
    assert torch.allclose(v2[0], v[0], atol=1e-5) and not torch.allclose(v2[1], v[1])


def test_velocity_matches_raw_transformer_call(tiny):
    z = torch.randn(1, 16, 4, 6)
    out = tiny.transformer(
        hidden_states=pack(z),
        encoder_hidden_states=tiny.cond.prompt_embeds,
        pooled_projections=tiny.cond.pooled_embeds,
        timestep=torch.tensor([0.3]),
        img_ids=img_ids(4, 6, (2, 4)),
        txt_ids=txt_ids(TINY_TEXT_LEN),
        guidance=torch.tensor([tiny.spec.guidance]),
        return_dict=False,
    )[0]
    assert torch.allclose(velocity(tiny, z, 0.3, offset=(2, 4)), unpack(out, 4, 6))


@pytest.mark.parametrize("per_tile", [1, 2])
def test_tiles_in_one_pass_match_one_at_a_time(per_tile):
    """Several tiles in one forward pass, each with its own position ids, equal the tiles run one by one."""
    from fluxsr.model import attention

    model = build_tiny(seed=4)
    torch.manual_seed(1)
    offsets = [(0, 0), (0, 6), (4, 2), (10, 0)]
    z = torch.randn(len(offsets) * per_tile, 16, 4, 6)
    t = torch.rand(z.shape[0])
    one = torch.cat(
        [
            velocity(model, z[i : i + per_tile], t[i : i + per_tile], offsets[i // per_tile])
            for i in range(0, z.shape[0], per_tile)
        ]
    )
    assert not attention.installed(model.transformer)
    many = velocity(model, z, t, offsets)
    assert attention.installed(model.transformer)
    assert torch.allclose(many, one, atol=1e-5), (many - one).abs().max()
    # the offsets matter: the same tiles all at (0, 0) give something else
    assert not torch.allclose(velocity(model, z, t, [(0, 0)] * len(offsets)), one, atol=1e-3)
    # with the processor installed, a single offset still runs diffusers' own path, unchanged
    assert torch.allclose(velocity(model, z[:per_tile], t[:per_tile], offsets[0]), one[:per_tile], atol=1e-6)
    with pytest.raises(ValueError, match="offsets"):
        velocity(model, z[:3], t[:3], offsets[:2])
    # the same offsets as lists (JSON, numpy) are read the same way
    torch.testing.assert_close(velocity(model, z, t, [list(o) for o in offsets]), many)
    torch.testing.assert_close(
        velocity(model, z[:per_tile], t[:per_tile], [0, 6]),
        velocity(model, z[:per_tile], t[:per_tile], (0, 6)),
    )


def test_position_ids_reach_the_transformer_in_float32():
    """bf16 holds integers exactly only up to 256: position ids past that (images over 4096 px) must stay fp32."""
    model = build_tiny(seed=4)
    model.transformer.to(torch.bfloat16)
    seen = []
    model.transformer.pos_embed.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    velocity(model, torch.randn(1, 16, 4, 6), 0.5, offset=(2 * 257, 2 * 301))
    ids = seen[-1]
    assert ids.dtype == torch.float32 and ids[:, 1].max() == 258 and ids[:, 2].max() == 303


def test_model_folder_roundtrip(tiny, tmp_path):
    spec = ModelSpec(t_l=0.3, guidance=2.0, name="t")
    save_model_folder(FluxSRModel(tiny.transformer, tiny.vae, tiny.cond, spec), tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.spec == spec
    _same_weights(loaded.transformer, tiny.transformer)
    _same_weights(loaded.vae, tiny.vae)
    assert torch.equal(loaded.cond.prompt_embeds, tiny.cond.prompt_embeds)
    (tmp_path / "m" / SPEC_FILE).write_text(json.dumps({"t_l": 0.3, "bogus": 1}))
    with pytest.raises(ValueError, match="bogus"):
        load_model(tmp_path / "m")


def test_bfl_mapping_roundtrip(tiny):
    sd = tiny.transformer.state_dict()
    back = bfl_to_diffusers(diffusers_to_bfl(sd))
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_bfl_mapping_matches_diffusers_at_flux_dev_size():
    """On meta tensors (no memory): our mapping agrees with diffusers' hard-coded FLUX.1-dev converter."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    big = build_transformer(FLUX_DEV_TRANSFORMER, meta=True)
    sd = big.state_dict()
    bfl = diffusers_to_bfl(sd)
    assert "double_blocks.18.img_attn.qkv.weight" in bfl and "single_blocks.37.linear1.weight" in bfl
    ours = bfl_to_diffusers(bfl)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    assert ours.keys() == theirs.keys() == sd.keys()
    assert all(ours[k].shape == theirs[k].shape == sd[k].shape for k in sd)
    cfg = transformer_config_from_bfl(bfl)
    assert {k: cfg[k] for k in FLUX_DEV_TRANSFORMER} == {
        **FLUX_DEV_TRANSFORMER,
        "axes_dims_rope": (16, 56, 56),
    }
    assert sum(p.numel() for p in big.parameters()) / 1e9 == pytest.approx(11.9, abs=0.01)


def test_bfl_converter_values_match_diffusers():
    """The swapped final-norm halves survive: check values with a tiny random model against diffusers'."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    tr = build_transformer(
        dict(
            TINY_TRANSFORMER,
            attention_head_dim=128,
            num_attention_heads=24,
            axes_dims_rope=(16, 56, 56),
            num_layers=1,
            num_single_layers=1,
        ),
        meta=False,
    )
    sd = tr.state_dict()
    bfl = diffusers_to_bfl(sd)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(bfl))
    ours = bfl_to_diffusers(bfl)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def _write_bfl_files(model, folder):
    save_file(
        {k: v.contiguous() for k, v in diffusers_to_bfl(model.transformer.state_dict()).items()},
        folder / "flux1-dev.safetensors",
        metadata={"axes_dims_rope": json.dumps([4, 6, 6])},
    )
    ldm = vae_to_ldm(model.vae.state_dict(), len(model.vae.config.block_out_channels))
    save_file(
        {k: v.contiguous() for k, v in ldm.items()},
        folder / "ae.safetensors",
        metadata={"norm_num_groups": "4"},
    )
    model.cond.save(folder / EMBEDS_FILE)


def test_load_bfl_single_files(tiny, tmp_path):
    _write_bfl_files(tiny, tmp_path)
    with safe_keys(tmp_path / "ae.safetensors") as keys:
        assert (
            "encoder.down.0.block.0.conv1.weight" in keys and "decoder.up.0.upsample.conv.weight" not in keys
        )
        assert "decoder.up.3.upsample.conv.weight" in keys and "encoder.mid.attn_1.q.weight" in keys
    loaded = load_model(tmp_path / "flux1-dev.safetensors")
    _same_weights(loaded.transformer, tiny.transformer)
    _same_weights(loaded.vae, tiny.vae)
    z = torch.randn(1, 16, 4, 4)
    assert torch.allclose(velocity(loaded, z, 0.25), velocity(tiny, z, 0.25))


def test_bfl_file_header_is_checked_once(tiny, tmp_path, monkeypatch):
    """Loading a BFL single file reads its header twice: the check (before the prompt embeddings are looked up)
    and the read of the tensors; it was three times (the check ran again inside the single-file loader)."""
    _write_bfl_files(tiny, tmp_path)
    file = tmp_path / "flux1-dev.safetensors"
    seen = []
    for module in (cache, flux_dev):
        real = module.safetensors_header
        monkeypatch.setattr(
            module,
            "safetensors_header",
            lambda path, *a, _real=real: (seen.append(Path(path)), _real(path, *a))[1],
        )
    load_model(file)
    assert seen.count(file) == 2


class safe_keys:
    def __init__(self, path):
        from safetensors import safe_open

        self.f = safe_open(str(path), "pt")

    def __enter__(self):
        return set(self.f.keys())

    def __exit__(self, *a):
        return False


def test_load_diffusers_folder_needs_prompt_embeds(tiny, tmp_path):
    tiny.transformer.save_pretrained(tmp_path / "transformer")
    tiny.vae.save_pretrained(tmp_path / "vae")
    with pytest.raises(FileNotFoundError, match="embed-prompt"):
        load_model(tmp_path)
    tiny.cond.save(tmp_path / EMBEDS_FILE)
    loaded = load_model(tmp_path)
    _same_weights(loaded.transformer, tiny.transformer)


def test_lora_save_apply_and_merge(tmp_path):
    base = build_tiny(seed=1)
    cfg = add_lora(base.transformer, rank=4, alpha=4)
    for name, p in base.transformer.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    z = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        expected = velocity(base, z, 0.25)
    save_lora(lora_state_dict(base.transformer), cfg, tmp_path / "lora.safetensors")
    plain = build_tiny(seed=1)
    with torch.no_grad():
        assert not torch.allclose(velocity(plain, z, 0.25), expected, atol=1e-4)
    for merge in (False, True):
        m = build_tiny(seed=1)
        apply_lora(m.transformer, tmp_path / "lora.safetensors", merge=merge)
        with torch.no_grad():
            assert torch.allclose(velocity(m, z, 0.25), expected, atol=1e-5), merge
        assert any("lora" in n for n, _ in m.transformer.named_parameters()) != merge


def test_unknown_model_name():
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model("/nonexistent/model")


# -- pointing fluxsr at weights: what goes wrong is said in one line --------------------------------------------------


def test_lora_adapts_every_target_including_attention():
    m = build_tiny(seed=1)
    add_lora(m.transformer, rank=2, alpha=2)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in m.transformer.named_parameters() if ".lora_A." in n}
    suffixes = {name for name in adapted for t in DEFAULT_LORA_TARGETS if name.endswith("." + t)}
    assert suffixes == adapted
    for target in DEFAULT_LORA_TARGETS:  # each target is adapted in some block (q/k/v sit under .attn.)
        assert any(name.endswith("." + target) for name in adapted), target
    assert not any(name == "proj_out" for name in adapted)  # the top-level output projection stays frozen


def test_pickled_weights_are_never_loaded(tiny, tmp_path):
    folder = tmp_path / "bin"
    tiny.transformer.save_pretrained(folder / "transformer", safe_serialization=False)
    tiny.vae.save_pretrained(folder / "vae", safe_serialization=False)
    tiny.cond.save(folder / EMBEDS_FILE)
    assert list((folder / "transformer").glob("*.bin"))
    with pytest.raises(FileNotFoundError, match="no .safetensors weights"):
        load_model(folder)


def test_wrong_files_are_named(tiny, tmp_path):
    save_file({"x": torch.zeros(2)}, tmp_path / "lora_like.safetensors")
    _write_bfl_files(tiny, tmp_path)
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "flux1-dev.safetensors").write_bytes(
        (tmp_path / "flux1-dev.safetensors").read_bytes()
    )
    with pytest.raises(
        FileNotFoundError, match="ae.safetensors not found.*--ae"
    ):  # before reading the big file
        load_model(tmp_path / "alone" / "flux1-dev.safetensors", prompt_embeds=tmp_path / EMBEDS_FILE)
    with pytest.raises(ValueError, match="not a Black Forest Labs FLUX transformer"):
        load_model(
            tmp_path / "lora_like.safetensors",
            ae=tmp_path / "ae.safetensors",
            prompt_embeds=tmp_path / EMBEDS_FILE,
        )
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(ValueError, match="damaged or not a safetensors file"):
        load_model(tmp_path / "pickle.safetensors", prompt_embeds=tmp_path / EMBEDS_FILE)
    with pytest.raises(ValueError, match="not prompt embeddings"):
        load_model(tmp_path / "flux1-dev.safetensors", prompt_embeds=tmp_path / "lora_like.safetensors")
    TextCond(torch.zeros(1, 4, 8), torch.zeros(1, 3)).save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="do not fit this transformer"):
        load_model(tmp_path / "flux1-dev.safetensors", prompt_embeds=tmp_path / "other.safetensors")


def test_folders_that_are_neither_kind_and_missing_parts(tiny, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="final/ folder"):
        load_model(tmp_path / "run")
    save_model_folder(tiny, tmp_path / "m")
    import shutil

    shutil.rmtree(tmp_path / "m" / "vae")
    with pytest.raises(FileNotFoundError, match="vae/config.json is missing"):
        load_model(tmp_path / "m")


def test_a_lora_for_another_transformer_is_refused(tmp_path):
    other = build_transformer(dict(TINY_TRANSFORMER, attention_head_dim=8, axes_dims_rope=(2, 3, 3)))
    cfg = add_lora(other, rank=2, alpha=2)
    save_lora(lora_state_dict(other), cfg, tmp_path / "other_lora.safetensors")
    with pytest.raises(ValueError, match="do not match this transformer"):
        apply_lora(build_tiny().transformer, tmp_path / "other_lora.safetensors")


def test_spec_ranges_and_ignored_arguments_are_refused(tiny, tmp_path):
    for bad in ({"t_l": 1.5}, {"t_l": 0}, {"t_l": float("nan")}, {"guidance": float("inf")}, {"tile": 0}):
        with pytest.raises(ValueError):
            ModelSpec(**bad)
    save_model_folder(tiny, tmp_path / "m")
    (tmp_path / "m" / SPEC_FILE).write_text(json.dumps({"t_l": 3.0}))
    with pytest.raises(ValueError, match="t_l"):
        load_model(tmp_path / "m")
    save_model_folder(tiny, tmp_path / "m2")
    with pytest.raises(ValueError, match="autoencoder file .--ae, recipe model.ae. applies"):
        load_model(tmp_path / "m2", ae=tmp_path / "ae.safetensors")
    with pytest.raises(
        ValueError, match="prompt embeddings .--prompt-embeds, recipe model.prompt_embeds. apply"
    ):
        load_model(tmp_path / "m2", prompt_embeds=tmp_path / EMBEDS_FILE)
    with pytest.raises(ValueError, match="no LoRA to scale"):
        load_model(tmp_path / "m2", lora_scale=0.5)


def test_home_relative_paths(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    save_model_folder(tiny, tmp_path / "m")
    _same_weights(load_model("~/m").transformer, tiny.transformer)


def test_lora_on_a_model_folder_with_its_own_lora(tmp_path):
    """A folder carrying lora.safetensors (adapter "fluxsr") plus --lora, unmerged: two adapters, no clash; and a
    LoRA-only folder whose base is such a folder reloads with both."""
    base = build_tiny(seed=1)
    loras = []
    for i in range(2):
        t = build_tiny(seed=1).transformer
        cfg = add_lora(t, rank=2, alpha=2)
        for n, p in t.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(i))
        loras.append(tmp_path / f"l{i}.safetensors")
        save_lora(lora_state_dict(t), cfg, loras[-1])
    save_model_folder(base, tmp_path / "m")
    import shutil

    shutil.copy(loras[0], tmp_path / "m" / LORA_FILE)
    z = torch.randn(1, 16, 4, 4)
    with torch.no_grad():
        merged = velocity(load_model(tmp_path / "m", lora=loras[1]), z, 0.25)
        unmerged = velocity(load_model(tmp_path / "m", lora=loras[1], merge_lora=False), z, 0.25)
        only_first = velocity(load_model(tmp_path / "m"), z, 0.25)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert not torch.allclose(merged, only_first, atol=1e-4)
    # a LoRA-only folder on top of the folder "m": m's own LoRA is kept
    (tmp_path / "top").mkdir()
    shutil.copy(loras[1], tmp_path / "top" / LORA_FILE)
    base.cond.save(tmp_path / "top" / EMBEDS_FILE)
    (tmp_path / "top" / SPEC_FILE).write_text(json.dumps({"base": str(tmp_path / "m")}))
    with torch.no_grad():
        stacked = velocity(load_model(tmp_path / "top"), z, 0.25)
    torch.testing.assert_close(stacked, merged, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "tiny", "--flux", "/somewhere"], "not both"),
        (["--model", "tiny", "--lora-scale", "0.5"], "no LoRA to scale"),
        (["--model", "tiny", "--dtype", "fp16"], "fp16"),
    ],
)
def test_model_arguments_checked_in_one_line(args, message, tmp_path, capsys):
    from fluxsr.cli import main

    assert main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1.5", "0", "nan", "-0.2"])
def test_t_l_outside_the_open_unit_interval_is_refused_at_parse_time(value, capsys):
    from fluxsr.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["upscale", "x.png", "-o", "o", "--t-l", value])
    assert exit_info.value.code == 2 and "strictly between 0 and 1" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_embed_prompt_checks_the_device_first(tmp_path, capsys):
    from fluxsr.cli import main

    for sub in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        (tmp_path / "flux" / sub).mkdir(parents=True)
    assert main(["embed-prompt", "--flux", str(tmp_path / "flux"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_loading_a_lora_leaves_a_training_adapter_as_it_was(tmp_path):
    t = build_tiny(seed=1).transformer
    cfg = add_lora(t, rank=2, alpha=2)
    save_lora(lora_state_dict(t), cfg, tmp_path / "l.safetensors")
    train = build_tiny(seed=1).transformer
    add_lora(train, rank=2, alpha=4)  # the training adapter "fluxsr": scaling alpha / r = 2, trainable
    layer = train.transformer_blocks[0].attn.to_q
    apply_lora(train, tmp_path / "l.safetensors", scale=0.5, adapter="user")
    assert set(layer.active_adapters) == {"fluxsr", "user"}
    assert layer.scaling == {"fluxsr": 2.0, "user": 0.5}
    grads = {
        n.split(".lora_")[1].split(".")[1]: p.requires_grad
        for n, p in train.named_parameters()
        if "lora_" in n
    }
    assert grads == {"fluxsr": True, "user": False}


def test_model_time_is_the_time_the_transformer_sees():
    m = build_tiny()
    m.transformer.to(torch.bfloat16)
    seen = []
    hook = m.transformer.time_text_embed.time_proj.register_forward_hook(
        lambda mod, a, out: seen.append(a[0])
    )
    t = torch.tensor([0.6947, 0.8126, 0.25])
    with torch.no_grad():
        velocity(m, torch.randn(3, 16, 4, 4), t)
    hook.remove()
    assert torch.equal(seen[0].float() / 1000, model_time(t, torch.bfloat16))
    assert model_time(t, torch.bfloat16)[0] != t[0] and model_time(t, torch.bfloat16)[2] == 0.25
    assert torch.allclose(model_time(t, torch.float32), t)


def _bf16_layouts(folder: Path) -> tuple[FluxSRModel, tuple[Path, Path, Path]]:
    """A tiny model in bf16 and the three layouts it is written in under ``folder``: a fluxsr model folder, a
    diffusers folder and BFL single files (the transformer file's path)."""
    bf16 = build_tiny(seed=3)
    for part in (bf16.transformer, bf16.vae):
        part.to(torch.bfloat16)
    bf16.cond = bf16.cond.to(dtype=torch.bfloat16)
    save_model_folder(bf16, folder / "folder")
    bf16.transformer.save_pretrained(folder / "diffusers" / "transformer")
    bf16.vae.save_pretrained(folder / "diffusers" / "vae")
    bf16.cond.save(folder / "diffusers" / EMBEDS_FILE)
    (folder / "bfl").mkdir()
    _write_bfl_files(bf16, folder / "bfl")
    return bf16, (folder / "folder", folder / "diffusers", folder / "bfl" / "flux1-dev.safetensors")


def test_every_layout_loads_straight_into_the_requested_dtype(tiny, tmp_path):
    """bf16 weights on disk, loaded with dtype=bf16 from a model folder (with a LoRA merged), a diffusers folder and
    BFL single files: every tensor is bf16 and bit-equal to the file (no float32 round trip that could round), and
    float32 is the default. scripts/measure_load_rss.py measures the memory this saves (docs/performance.md)."""
    bf16, sources = _bf16_layouts(tmp_path)
    for source in sources:
        loaded = load_model(source, dtype=torch.bfloat16)
        for got, want in ((loaded.transformer, bf16.transformer), (loaded.vae, bf16.vae)):
            assert {p.dtype for p in got.parameters()} == {torch.bfloat16}, source
            _same_weights(got, want)
        assert {p.dtype for p in load_model(source).transformer.parameters()} == {torch.float32}, source
    base = build_tiny(seed=3)
    cfg = add_lora(base.transformer, rank=4, alpha=4)
    save_lora(lora_state_dict(base.transformer), cfg, tmp_path / "lora.safetensors")
    merged = load_model(tmp_path / "folder", lora=tmp_path / "lora.safetensors", dtype=torch.bfloat16)
    assert {p.dtype for p in merged.transformer.parameters()} == {torch.bfloat16}


def _mapped_file(t: torch.Tensor) -> str:
    """The file whose memory mapping holds ``t``'s storage ('' for anonymous memory), from /proc/self/maps."""
    ptr = t.untyped_storage().data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= ptr < end:
            return fields[5] if len(fields) > 5 else ""
    return ""


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
def test_weights_read_as_stored_stay_views_of_the_mapped_files(tmp_path):
    """No private host copy: bf16 weights read in bf16 (and, with widen_later, for float32) are views of the
    memory-mapped safetensors files, which every process of an ``accelerate launch`` on the node shares in the
    page cache. The one exception: the BFL file's norm_out, whose shift and scale halves are swapped (a new tensor).
    Moving them to accelerate's CPU device (``cpu:0``) keeps them mapped. Widening while reading (the default for
    float32) must copy, and does."""
    bf16, sources = _bf16_layouts(tmp_path)
    for source in sources:
        for dtype, widen_later in ((torch.bfloat16, False), (torch.float32, True)):
            model = load_model(source, dtype=dtype, widen_later=widen_later)
            if not widen_later:  # accelerate's CPU device is "cpu:0": moving there must not copy
                to_device(model, "cpu:0", dtype)
            for part in (model.transformer, model.vae):
                unmapped = {
                    name
                    for name, t in part.state_dict().items()
                    if not _mapped_file(t).endswith(".safetensors")
                }
                swapped = {"norm_out.linear.weight", "norm_out.linear.bias"} if source.is_file() else set()
                assert unmapped == (swapped if part is model.transformer else set()), (source, dtype)
            assert {p.dtype for p in model.transformer.parameters()} == {torch.bfloat16}
        widened = load_model(source, dtype=torch.float32)
        assert not any(
            _mapped_file(t).endswith(".safetensors") for t in widened.transformer.state_dict().values()
        )


def test_widen_later_reads_only_a_narrower_stored_dtype(tiny, tmp_path):
    """read_dtype: the stored dtype only when asked, narrower and unique; float32 weights read for bf16 stay bf16
    (narrowing is never postponed), and a float32 model folder read with widen_later is float32 as before."""
    assert read_dtype({torch.bfloat16}, torch.float32, widen_later=True) == torch.bfloat16
    assert read_dtype({torch.bfloat16}, torch.float32) == torch.float32
    assert read_dtype({torch.float32}, torch.bfloat16, widen_later=True) == torch.bfloat16
    assert read_dtype({torch.bfloat16, torch.float16}, torch.float32, widen_later=True) == torch.float32
    assert read_dtype(set(), None, widen_later=True) == torch.float32
    save_model_folder(tiny, tmp_path / "fp32")
    model = load_model(tmp_path / "fp32", widen_later=True)
    assert {p.dtype for p in model.transformer.parameters()} == {torch.float32}


def test_cast_state_takes_tensors_out_as_it_casts():
    state = {"a": torch.ones(3), "b": torch.zeros(2, dtype=torch.int64)}
    out = cast_state(state, torch.bfloat16)
    assert state == {} and out["a"].dtype == torch.bfloat16 and out["b"].dtype == torch.int64


def test_damaged_or_wrong_model_files_are_named_with_what_was_expected(tiny, tmp_path, capsys):
    import shutil

    save_model_folder(tiny, tmp_path / "good")
    cases = {
        SPEC_FILE: (
            lambda p: p.write_text('{"t_l": 0.25, '),
            "damaged, not valid JSON .*expected a JSON object",
        ),
        "transformer/diffusion_pytorch_model.safetensors": (
            lambda p: p.write_bytes(p.read_bytes()[:-100]),
            "damaged or not a safetensors file: its size does not match its header",
        ),
        EMBEDS_FILE: (lambda p: p.write_bytes(b"\x00" * 3), "damaged or not a safetensors file"),
    }
    for name, (damage, message) in cases.items():
        folder = tmp_path / name.replace("/", "_")
        shutil.copytree(tmp_path / "good", folder)
        damage(folder / name)
        with pytest.raises(ValueError, match=f"{folder / name}: {message}"):
            load_model(folder)
    (tmp_path / "good" / SPEC_FILE).write_text("[0.25]")
    with pytest.raises(
        ValueError, match=f"{tmp_path / 'good' / SPEC_FILE}: expected a JSON object.*got a JSON list"
    ):
        load_model(tmp_path / "good")
    # a file that is not FLUX weights at all: named, with what --model takes (not "prompt_embeds ... not found")
    from PIL import Image

    from fluxsr.cli import main

    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "random.safetensors").write_bytes(bytes(range(256)) * 8)
    for path in (tmp_path / "passwd", tmp_path / "random.safetensors"):
        assert (
            main(["upscale", "--model", str(path), str(tmp_path / "in.png"), "-o", str(tmp_path / "out")])
            == 2
        )
        err = capsys.readouterr().err.strip()
        assert err.startswith(
            f"error: {path}: damaged or not a safetensors file: no valid safetensors header"
        )
        assert (
            err.endswith(
                "expected a fluxsr model folder, a diffusers FLUX folder or a Black Forest Labs "
                "flux1-dev.safetensors"
            )
            and "\n" not in err
        )


def test_the_model_owns_its_latent_normalisation(tiny):
    """encode/decode apply the VAE's shift and scale (FLUX: 0.1159, 0.3611) around the raw VAE, and the pipeline's
    tiled encode/decode are the model's on one tile."""
    from fluxsr import FluxSRPipeline, UpscaleOptions

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    vae = tiny.vae
    raw = vae.encode(x * 2 - 1).latent_dist.mode()
    cfg = vae.config
    torch.testing.assert_close(tiny.encode(x), (raw - cfg.shift_factor) * cfg.scaling_factor, rtol=0, atol=0)
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    expect = (vae.decode(z / cfg.scaling_factor + cfg.shift_factor).sample + 1) / 2
    torch.testing.assert_close(tiny.decode(z), expect, rtol=0, atol=0)
    pipe = FluxSRPipeline(tiny, "cpu", torch.float32, prepare=False)
    opts = UpscaleOptions(tile=1 << 16, overlap=0)
    torch.testing.assert_close(pipe.encode(x, opts), tiny.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(pipe.decode(z, opts), tiny.decode(z), rtol=0, atol=0)


def test_pair_generation_does_not_go_through_the_pipeline():
    import fluxsr.training.pairs as pairs

    assert not hasattr(pairs, "FluxSRPipeline") and not hasattr(pairs, "UpscaleOptions")
