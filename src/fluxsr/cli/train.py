"""The training commands: ``gen-pairs`` (teacher pairs), ``train`` (the FluxSR student), ``train-vae`` and
``train-teacher`` (small models), ``embed-prompt`` (cached FLUX prompt embeddings) and ``degrade`` (a preview of the
training degradation). Each reads its settings from a recipe YAML (``--config``, ``--set``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..data.degrade import degrade_file
from ..model.text import default_embeds_path, embed_prompt, save_prompt_embeds
from ..training.pairs import generate_pairs, write_manifest
from ..training.pretrain import train_teacher, train_vae
from ..training.recipe import Recipe, load_recipe
from .options import device_from_args


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe ``--config`` names (the default recipe without one), with the ``--set`` overrides."""
    return load_recipe(args.config, args.set)


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """``--config`` (required), ``--set`` and ``-q``."""
    p.add_argument(
        "--config", type=Path, required=True, help="recipe YAML (configs/tiny.yaml, configs/flux-dev.yaml)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set train.lr=1e-4 (repeatable)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


# -- gen-pairs / train -------------------------------------------------------------------------------------------


def cmd_gen_pairs(args: argparse.Namespace) -> int:
    """Each process writes its share of the pairs; the first one writes the manifest."""
    from accelerate import PartialState  # heavy, and only this command needs it here

    recipe = recipe_from_args(args)
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU-only machines run as gloo processes
    written = generate_pairs(
        recipe,
        args.out,
        device=args.device or state.device,
        rank=state.process_index,
        world=state.num_processes,
        progress=not args.quiet,
    )
    state.wait_for_everyone()
    if state.is_main_process:
        manifest = write_manifest(args.out)
        n = sum(1 for _ in manifest.open())
        print(f"{n}/{recipe.pairs.count} pairs complete in {args.out}", file=sys.stderr)
    print(f"process {state.process_index}: wrote {len(written)} pairs", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train, then say where the model folder is."""
    from ..training.loop import train  # accelerate and peft: loaded by this command only

    final = train(
        recipe_from_args(args),
        args.pairs,
        args.out,
        resume=args.resume,
        max_steps=args.max_steps,
        progress=not args.quiet,
    )
    print(f"model folder: {final}  (fluxsr upscale --model {final} IMG -o OUT)", file=sys.stderr)
    return 0


def add_gen_pairs(sub) -> None:
    """``fluxsr gen-pairs``."""
    p = sub.add_parser(
        "gen-pairs", help="sample offline noise-image pairs with the teacher (resumable, accelerate)"
    )
    add_recipe_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="pairs folder")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_gen_pairs)


def add_train(sub) -> None:
    """``fluxsr train``."""
    p = sub.add_parser("train", help="train a FluxSR student (FTD + MSE + TV-LPIPS + ADL) with accelerate")
    add_recipe_arguments(p)
    p.add_argument("--pairs", type=Path, required=True, help="pairs folder from gen-pairs")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, final/)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        choices=("latest", "intact"),
        default=None,
        help="continue from the latest checkpoint in --out (refused when it is damaged); "
        "--resume intact: from the newest intact one",
    )
    p.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many steps (schedule unchanged)"
    )
    p.set_defaults(func=cmd_train)


# -- pretraining (small models) ----------------------------------------------------------------------------------


def cmd_train_vae(args: argparse.Namespace) -> int:
    """Train the small VAE."""
    train_vae(
        recipe_from_args(args).pretrain, args.out, device=device_from_args(args), progress=not args.quiet
    )
    print(f"VAE: {args.out / 'vae'}", file=sys.stderr)
    return 0


def cmd_train_teacher(args: argparse.Namespace) -> int:
    """Train the small teacher on the VAE's latents."""
    out = train_teacher(
        recipe_from_args(args).pretrain,
        args.vae,
        args.out,
        device=device_from_args(args),
        progress=not args.quiet,
    )
    print(f"teacher model folder: {out}", file=sys.stderr)
    return 0


def add_pretrain(sub) -> None:
    """``fluxsr train-vae`` and ``fluxsr train-teacher``."""
    p = sub.add_parser("train-vae", help="train a small FLUX-layout VAE on photos (recipe section pretrain)")
    add_recipe_arguments(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train_vae)
    p = sub.add_parser("train-teacher", help="train a small FLUX transformer as a rectified-flow teacher")
    add_recipe_arguments(p)
    p.add_argument("--vae", type=Path, required=True, help="output folder of train-vae")
    p.add_argument("--out", type=Path, required=True, help="teacher model folder")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_train_teacher)


# -- embed-prompt ------------------------------------------------------------------------------------------------


def cmd_embed_prompt(args: argparse.Namespace) -> int:
    """Encode the prompt once with FLUX's text encoders and save the embeddings."""
    if args.out is not None and args.out.is_dir():
        raise ValueError(f"--out {args.out}: is a folder; give a file name (e.g. prompt_embeds.safetensors)")
    device = device_from_args(args)
    cond = embed_prompt(args.flux, args.prompt, args.max_length, device, getattr(torch, args.dtype))
    print(save_prompt_embeds(cond, args.out or default_embeds_path(args.flux)))
    return 0


def add_embed_prompt(sub) -> None:
    """``fluxsr embed-prompt``."""
    p = sub.add_parser(
        "embed-prompt", help="cache FLUX T5/CLIP prompt embeddings (text encoders never load later)"
    )
    p.add_argument(
        "--flux", type=Path, required=True, help="diffusers FLUX.1-dev folder with text_encoder(_2)"
    )
    p.add_argument("--prompt", default="", help="the fixed prompt (default: empty, as FluxSR)")
    p.add_argument(
        "--max-length", type=int, default=512, help="T5 tokens; train and run with the same length"
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="default: FLUX_DIR/prompt_embeds.safetensors")
    p.set_defaults(func=cmd_embed_prompt)


# -- degrade -----------------------------------------------------------------------------------------------------


def cmd_degrade(args: argparse.Namespace) -> int:
    """Degrade one image as training does and print where the result went."""
    cfg = recipe_from_args(args).degradation  # the default recipe's (Real-ESRGAN x4) when no --config
    print(degrade_file(args.input, args.output, args.seed, cfg, upsample=args.upsample))
    return 0


def add_degrade(sub) -> None:
    """``fluxsr degrade``."""
    p = sub.add_parser("degrade", help="preview the Real-ESRGAN degradation on one image (x4 smaller)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", type=Path, default=None, help="recipe YAML whose degradation section to use")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set degradation.scale=2 (with or without --config)",
    )
    p.add_argument(
        "--upsample", action="store_true", help="resize the LR back to the input size (model input)"
    )
    p.set_defaults(func=cmd_degrade)
