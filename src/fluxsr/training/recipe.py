"""The training recipe: one typed YAML file drives ``fluxsr gen-pairs`` and ``fluxsr train``.

Every choice the paper leaves open (docs/method.md, "DECIDE") is a field here with its default and the reason.
``configs/flux-dev.yaml`` is the paper-scale recipe, ``configs/tiny.yaml`` the CPU one used by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..data.degradation_config import DegradationConfig
from ..io.config import ConfigError, check_range, load_config
from ..io.hub import parse_repo_ref
from ..losses.adl import TAPS
from ..model.lora import DEFAULT_LORA_TARGETS
from .pretrain import PretrainSection


@dataclass
class ModelSection:
    """Which networks to use.

    base: the student's starting point and the VAE: 'tiny', a fluxsr model folder, a diffusers FLUX.1-dev folder
        or a flux1-dev.safetensors file (then ``ae`` names ae.safetensors).
    teacher: the model that samples the pairs (default: ``base``; FluxSR distils FLUX.1-dev into itself).
    prompt_embeds: cached embeddings of the student's fixed prompt (``fluxsr embed-prompt``); default: the base's.
    t_l: flow time of the LR latent. 0.25: a third-party FluxSR reimplementation's value; OMGSR-F found ~0.244 by
        SNR matching. Not shifted by resolution (see ``shift_t_l``).
    shift_t_l: pass T_L through FLUX's resolution-dependent time shift. Default false: one fixed T_L for every
        tile size keeps training and tiled inference consistent.
    guidance: guidance-embedding value given to the student. 1.0 as OMGSR-F (no CFG distillation wanted).
    """

    base: str = "tiny"
    ae: str | None = None
    teacher: str | None = None
    prompt_embeds: str | None = None
    t_l: float = 0.25
    shift_t_l: bool = False
    guidance: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.t_l < 1.0:
            raise ConfigError(f"model.t_l: must lie in (0, 1), got {self.t_l!r}")
        for name in ("base", "teacher"):  # not read from the Hub: pairs need the teacher's text encoders
            value = getattr(self, name)
            ref = parse_repo_ref(value) if value else None
            if ref is not None and not Path(value).expanduser().exists():
                revision = f" --revision {ref.revision}" if ref.revision else ""
                raise ConfigError(
                    f"model.{name}: {value!r} is not on disk; training reads local weights only (Hub repo ids "
                    f"are for --model): `hf download {ref.repo_id}{revision} --local-dir DIR`, then give DIR"
                )


@dataclass
class PairsSection:
    """Offline teacher sampling (``fluxsr gen-pairs``). Defaults are FLUX.1-dev's own sampler settings.

    count / resolution: 2,400 pairs at 1024^2 in the paper.
    steps / guidance / shift: FLUX.1-dev's Euler sampler: 28 steps, guidance 3.5, resolution-shifted schedule.
    prompts: a text file (one prompt a line); empty -> built-in generator (fluxsr.training.prompts).
    seed: pair i uses noise seed ``seed + i`` and prompt i.
    source: 'teacher' (the paper) or 'photos' (our extension: real photos inverted through the teacher's ODE).
    photos: folder of photos for source='photos' (center-cropped to ``resolution``).
    text_len: T5 sequence length for the teacher's prompts (512 for FLUX.1-dev).
    """

    count: int = 2400
    resolution: int = 1024
    steps: int = 28
    guidance: float = 3.5
    shift: bool = True
    prompts: str | None = None
    seed: int = 0
    source: str = "teacher"
    photos: str | None = None
    text_len: int = 512

    def __post_init__(self) -> None:
        check_range(
            "pairs",
            self,
            count=(">=", 1),
            resolution=(">=", 1),
            steps=(">=", 1),
            text_len=(">=", 1),
            source=("in", ("teacher", "photos")),
        )


@dataclass
class LossSection:
    """Loss weights and the open choices of TV-LPIPS and ADL.

    L = ftd * L_FTD + mse * MSE + lpips * TV-LPIPS + adl * L_ADL. Defaults: MSE and LPIPS at 1 as in OSEDiff-style
    one-step SR, FTD at 1 (the paper's main term), ADL small (0.01) because it is a regulariser on features, not
    pixels.
    lpips_net: 'vgg' (LPIPS-VGG, the usual choice for training) or 'alex'. 'random-vgg' uses random backbone
        weights (tests only: no download needed).
    tv_gamma: weight of the TV branch inside TV-LPIPS.
    adl_blocks: blocks whose image tokens ADL diversifies, e.g. 'single:-2,-1' (the last two single blocks, as the
        method figure taps the last blocks).
    adl_tap: which tensor of those blocks ADL reads: 'block' (the block output, mean-token cosine), 'attention'
        (the block's attention output, same cosine) or 'centred' (block output centred per channel, mean squared
        pairwise cosine; :mod:`fluxsr.losses.adl`). Default 'block': docs/training.md has the measured comparison.
    """

    ftd: float = 1.0
    mse: float = 1.0
    lpips: float = 1.0
    adl: float = 0.01
    lpips_net: str = "vgg"
    tv_gamma: float = 1.0
    adl_blocks: str = "single:-2,-1"
    adl_tap: str = "block"

    def __post_init__(self) -> None:
        check_range("loss", self, adl_tap=("in", TAPS))


@dataclass
class TrainSection:
    """Optimisation.

    lora_rank: 0 means full fine-tuning; otherwise LoRA with ``lora_alpha`` on ``lora_targets`` (peft).
    batch_size: per process; ``grad_accum`` micro-batches per optimiser step.
    lr / warmup_steps / schedule ('constant' or 'cosine'), AdamW betas and weight decay.
    mixed_precision: 'no', 'bf16' (GPU default) or 'fp16' (refused: FLUX overflows).
    gradient_checkpointing / vae_checkpointing: trade compute for memory (transformer blocks / VAE decoder).
    crop: training crop edge in pixels taken from each pair's image (0: the whole image).
    time_limit: stop (checkpoint and export as at the last step) after this many seconds; 0: run all steps.
    grad_norm_every: every this many steps (and at the first step of a run), log the gradient norm of each weighted
        loss term on the trainable weights (one extra backward pass per term with a non-zero weight); 0: never.
    """

    steps: int = 24000
    batch_size: int = 1
    grad_accum: int = 1
    lr: float = 5e-5
    warmup_steps: int = 100
    schedule: str = "constant"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_rank: int = 64
    lora_alpha: float = 64.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    vae_checkpointing: bool = False
    crop: int = 0
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    validate_every: int = 1000
    log_every: int = 10
    validation_images: str | None = None
    time_limit: float = 0.0
    grad_norm_every: int = 100

    def __post_init__(self) -> None:
        check_range(
            "train",
            self,
            steps=(">=", 1),
            batch_size=(">=", 1),
            grad_accum=(">=", 1),
            lr=(">", 0.0),
            warmup_steps=(">=", 0),
            schedule=("in", ("constant", "cosine")),
            weight_decay=(">=", 0.0),
            max_grad_norm=(">=", 0.0),
            lora_rank=(">=", 0),
            lora_alpha=(">", 0.0),
            mixed_precision=("in", ("no", "bf16", "fp16")),
            crop=(">=", 0),
            checkpoint_every=(">=", 1),
            keep_checkpoints=(">=", 0),
            validate_every=(">=", 0),
            log_every=(">=", 1),
            time_limit=(">=", 0.0),
            grad_norm_every=(">=", 0),
        )


@dataclass
class ExportSection:
    """What ``RUN/final`` holds. merge_lora: fold the LoRA into a full transformer copy (self-contained, large);
    otherwise the folder holds the LoRA and points at the base weights (small). name / description / note /
    tile / overlap go into the model's ``fluxsr.json`` (the note is printed whenever the model is used)."""

    merge_lora: bool = False
    name: str = ""
    description: str = "trained with fluxsr train"
    note: str = ""
    tile: int = 1024
    overlap: int = 128

    def __post_init__(self) -> None:
        check_range("export", self, tile=(">=", 1), overlap=(">=", 0))


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    pairs: PairsSection = field(default_factory=PairsSection)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    loss: LossSection = field(default_factory=LossSection)
    train: TrainSection = field(default_factory=TrainSection)
    export: ExportSection = field(default_factory=ExportSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)


def input_paths(recipe: Recipe) -> list[tuple[str, Path]]:
    """(field, path) for the files and folders the recipe reads that exist on disk (model names such as
    ``tiny`` are left out): what gen-pairs and train must not write over (:mod:`fluxsr.io.guards`)."""
    fields = {
        "model.base": recipe.model.base,
        "model.ae": recipe.model.ae,
        "model.teacher": recipe.model.teacher,
        "model.prompt_embeds": recipe.model.prompt_embeds,
        "pairs.prompts": recipe.pairs.prompts,
        "pairs.photos": recipe.pairs.photos,
        "train.validation_images": recipe.train.validation_images,
    }
    return [(name, Path(value)) for name, value in fields.items() if value and Path(value).exists()]


def load_recipe(path: Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML (unknown keys and wrong types fail, naming the field) plus ``a.b=value`` overrides."""
    return load_config(Recipe, path, overrides)
