"""The command line as a whole: every command is listed, argparse and the ``cli`` package stay inside ``cli/``, the
shared argument types, and the one loader behind every front end (:func:`fluxsr.inference.loading.load_pipeline`)."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from fluxsr.cli import build_parser, main
from fluxsr.cli import options as cli_options
from fluxsr.inference.fastpath import FastPath
from fluxsr.inference.loading import ModelChoice, load_pipeline
from tests.paths import ROOT

COMMANDS = [
    "upscale",
    "demo",
    "degrade",
    "gen-pairs",
    "train",
    "train-vae",
    "train-teacher",
    "embed-prompt",
    "weights",
    "serve",
    "eval",
    "make-testset",
    "benchmark",
    "bench",
    "export",
]


def _check_layout():
    """scripts/check_layout.py (the layout rules ``make lint`` enforces), loaded as a module."""
    spec = importlib.util.spec_from_file_location("check_layout", ROOT / "scripts" / "check_layout.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


LAYOUT = _check_layout()


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0
    listed = re.findall(r"^ {4}(\S+)", out.split("positional arguments:")[1].split("options:")[0], re.M)
    assert listed == COMMANDS
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0 and f"usage: fluxsr {command}" in capsys.readouterr().out


def test_argparse_only_under_cli():
    users = LAYOUT.check(LAYOUT.load_modules())["argparse"]
    assert users == []


def test_nothing_outside_cli_imports_cli():
    """The web app once imported the command line's private helpers: a cycle cli <-> webapp."""
    mods = LAYOUT.load_modules()
    users = [
        mod.name
        for mod in mods.values()
        if not LAYOUT.is_cli(mod.name)
        and any(LAYOUT.is_cli(target) for _, target, _, _ in LAYOUT.imported(mods, mod))
    ]
    assert users == []


@pytest.mark.parametrize(
    "kind, text, message",
    [
        (cli_options.positive_int, "0", "must be >= 1, got 0"),
        (cli_options.positive_int, "1.5", "not an integer: '1.5'"),
        (cli_options.non_negative_int, "-1", "must be >= 0, got -1"),
        (cli_options.positive_number, "inf", "must be a finite number > 0, got inf"),
        (cli_options.positive_number, "x", "not a number: 'x'"),
        (cli_options.open_unit, "1", "must be strictly between 0 and 1, got 1"),
        (cli_options.open_unit, "nan", "must be strictly between 0 and 1, got nan"),
        (cli_options.port, "65536", "must be in 0..65535, got 65536"),
        (cli_options.memory_size, "12", "under 1 MiB"),
        (cli_options.tile_edge, "0", "tile must be >= 1 output pixel, got 0"),
        (cli_options.tile_overlap, "-1", "overlap must be >= 0, got -1"),
    ],
)
def test_argument_types_refuse_in_one_line(kind, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message.replace("(", r"\(").replace(".", r"\.")):
        kind(text)


def test_argument_types_accept():
    assert cli_options.positive_int("3") == 3 and cli_options.non_negative_int("0") == 0
    assert cli_options.positive_number("0.5") == 0.5 and cli_options.open_unit("0.25") == 0.25
    assert cli_options.memory_size("2GiB") == 2 << 30 and cli_options.port("0") == 0
    assert cli_options.tile_edge("64") == 64 and cli_options.tile_overlap("0") == 0


def test_a_non_integer_count_is_one_line_naming_the_flag(tmp_path, capsys):
    """argparse used to name the private type function: ``invalid _non_negative value: '1.5'``."""
    with pytest.raises(SystemExit):
        main(["upscale", str(tmp_path / "a.png"), "--tile-batch", "1.5"])
    err = capsys.readouterr().err
    assert "argument --tile-batch: not an integer: '1.5'" in err and "_non_negative" not in err


def test_compile_mode_alone_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """It used to raise SystemExit from the library, past the command line's error handling."""
    monkeypatch.setattr(cli_options, "load_pipeline", lambda *a: pytest.fail("model loaded"))
    rc = main(
        [
            "upscale",
            "-q",
            str(tmp_path / "a.png"),
            "-o",
            str(tmp_path / "o"),
            "--compile-mode",
            "reduce-overhead",
        ]
    )
    assert rc == 2
    assert capsys.readouterr().err.strip().endswith("error: --compile-mode needs --compile or --compile-full")


# -- the loader ---------------------------------------------------------------------------------------------------


def test_load_pipeline_applies_every_choice():
    notes = []
    choice = ModelChoice("tiny", t_l=0.4, device="cpu", dtype=torch.float32, max_memory=3 << 30)
    pipe = load_pipeline(choice, notes.append)
    assert pipe.model.spec.t_l == 0.4 and pipe.max_memory == 3 << 30
    assert (pipe.device.type, pipe.dtype, pipe.name) == ("cpu", torch.float32, "fluxsr:tiny")
    assert notes == [pipe.model.spec.note]  # the model's note; no speed switch asked, none skipped


def test_load_pipeline_passes_the_models_note_and_skipped_switches(monkeypatch):
    notes = []
    monkeypatch.setitem(sys.modules, "torchao", None)  # fp8 needs torchao: skipped with a note
    pipe = load_pipeline(ModelChoice(device="cpu", fast=FastPath(fp8=True)), notes.append)
    assert pipe.model.spec.note and notes[0] == pipe.model.spec.note  # the bundled model's note
    assert len(notes) == 2 and notes[1].startswith("fp8 skipped: torchao not importable")


def test_model_and_flux_together_are_refused_before_loading(monkeypatch):
    monkeypatch.setattr("fluxsr.inference.pipeline.load_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="give --model or --flux, not both"):
        load_pipeline(ModelChoice("tiny", flux=Path("flux1-dev.safetensors"), device="cpu"))


def test_the_model_options_make_the_choice():
    args = build_parser().parse_args(
        ["upscale", "x.png", "--model", "tiny", "--t-l", "0.3", "--dtype", "bf16", "--max-memory", "1GiB"]
    )
    assert cli_options.model_choice(args) == ModelChoice(
        "tiny", t_l=0.3, dtype=torch.bfloat16, max_memory=1 << 30
    )


def test_the_command_line_starts_without_the_model_libraries():
    """``fluxsr --help`` and the commands that load no model (eval, weights, degrade, make-testset) start without
    importing diffusers, peft, accelerate, transformers or huggingface_hub (5-6 s of start-up on a 2-core machine):
    the library imports them where a model is built, loaded, offloaded, trained or fetched from the Hub."""
    import subprocess

    code = (
        "import sys; from fluxsr.cli import build_parser; build_parser(); "
        "libs = ('diffusers', 'peft', 'accelerate', 'transformers', 'huggingface_hub'); "
        "print(' '.join(m for m in libs if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
