"""Speed switches for inference on a GPU: attention kernel, torch.compile (regional or whole, CUDA graphs), channels-
last / compiled VAE, fp8 linears (torchao). Each is measured by ``fluxsr bench`` (docs/performance.md says what each
gave); ``fluxsr upscale`` takes the same flags. All default to off: eager bf16 with PyTorch's own SDPA choice.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ..model.attention import install

SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")


@dataclass
class FastPath:
    """GPU fast-path switches (each measured by ``fluxsr bench``; docs/performance.md says which won).

    sdpa: attention kernel for every ``scaled_dot_product_attention`` (``auto`` lets PyTorch choose).
    compile: ``regional`` = ``transformer.compile_repeated_blocks(fullgraph=True)`` (diffusers regional
        compilation: each block type compiled once, reused by all 57 blocks), ``full`` = ``torch.compile`` of the
        whole transformer, ``""`` = eager.
    compile_mode: ``torch.compile`` mode: ``default``, ``max-autotune-no-cudagraphs``, or ``reduce-overhead``
        (CUDA graphs: kernel launches replayed from a recorded graph, one per tile shape).
    compile_vae: ``torch.compile`` of the VAE encoder and decoder modules.
    channels_last_vae: VAE weights (hence activations) in channels-last layout.
    fp8: float8 dynamic quantisation of the transformer's linears with torchao, only if it imports.
    """

    sdpa: str = "auto"
    compile: str = ""
    compile_vae: bool = False
    channels_last_vae: bool = False
    fp8: bool = False
    compile_mode: str = "default"

    def __post_init__(self):
        self.compile = self.compile or ""
        for name, value, allowed in (
            ("compile", self.compile, ("", "regional", "full")),
            ("compile_mode", self.compile_mode, COMPILE_MODES),
            ("sdpa", self.sdpa, SDPA_BACKENDS),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}: choose one of {allowed}")

    @property
    def enabled(self) -> bool:
        """True when any switch is on (anything to apply)."""
        return self != FastPath()

    def label(self) -> str:
        """Short tag for table rows: ``+compile+flash`` etc.; empty for the defaults."""
        compiled = {"": "", "regional": "compile", "full": "compile-full"}[self.compile]
        if compiled and self.compile_mode != "default":
            compiled += f"-{self.compile_mode}"
        tags = [
            t
            for t, on in (
                (compiled, compiled),
                ("compile-vae", self.compile_vae),
                ("cl-vae", self.channels_last_vae),
                ("fp8", self.fp8),
            )
            if on
        ]
        if self.sdpa != "auto":
            tags.append(f"sdpa-{self.sdpa}")
        return "".join(f"+{t}" for t in tags)


def sdpa_context(name: str):
    """A context selecting one SDPA backend (``torch.nn.attention.sdpa_kernel``), or nothing for ``auto``."""
    if name == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]
    return sdpa_kernel([backend])


def apply_fast_path(model, fast: FastPath, static_shapes: bool = True) -> list[str]:
    """Apply the switches of ``fast`` to a :class:`~fluxsr.model.model.FluxSRModel`'s modules in place (after it was
    moved to its device and dtype); returns notes (what was skipped and why).

    ``static_shapes``: one compiled graph per tile shape (a benchmark sees a few shapes); False lets torch.compile
    turn to a dynamic-shape graph once a second shape shows up (a folder of images of many sizes)."""
    notes = []
    vae, transformer = model.vae, model.transformer
    device = next(transformer.parameters()).device
    if fast.sdpa in ("efficient", "cudnn") and device.type != "cuda":
        raise ValueError(
            f"--sdpa {fast.sdpa} needs a CUDA device (the model is on {device}); use auto, math or flash"
        )
    if fast.channels_last_vae:
        vae.to(memory_format=torch.channels_last)
    if fast.fp8:
        try:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

            quantize_(transformer, Float8DynamicActivationFloat8WeightConfig())
            notes.append("fp8: torchao float8 dynamic activation + weight quantisation of the transformer")
        except ImportError as e:
            fast.fp8 = False
            notes.append(f"fp8 skipped: torchao not importable ({e})")
        except (AssertionError, RuntimeError, ValueError) as e:  # torchao's hardware check is an assert
            fast.fp8 = False
            notes.append(f"fp8 skipped: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if (fast.compile or fast.compile_vae) and static_shapes:
        torch._dynamo.config.automatic_dynamic_shapes = False
    if fast.compile_vae:
        vae.encoder.compile()
        vae.decoder.compile()
    if fast.compile:
        install(transformer)  # before compiling: swapping processors later would recompile every block
        mode = {} if fast.compile_mode == "default" else {"mode": fast.compile_mode}
        if fast.compile == "regional":
            transformer.compile_repeated_blocks(fullgraph=True, **mode)
        else:
            transformer.compile(**mode)
    return notes
