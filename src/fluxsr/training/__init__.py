"""Training: recipes, teacher pairs, prompts, the FTD training loop, small-model pretraining, and the Hub export of
a model or run (``fluxsr export``: :func:`export_for_hub`).

``train`` runs a whole run (prepare, a loop of ``training_step`` on ``load_batch`` batches, bookkeeping, export);
``training_step`` is one SR + FTD step on a :class:`Batch`, callable alone with a :class:`Trainer`.
"""

from fluxsr.training.checkpoints import Checkpoint, ResumeFrom, finished_checkpoints, load_trainable
from fluxsr.training.hub_export import export_for_hub
from fluxsr.training.loop import train
from fluxsr.training.pairs import generate_pairs
from fluxsr.training.recipe import Recipe, load_recipe
from fluxsr.training.step import Batch, Trainer, load_batch, training_step
from fluxsr.training.student import build_student, export

__all__ = [
    "Batch",
    "Checkpoint",
    "Recipe",
    "ResumeFrom",
    "Trainer",
    "build_student",
    "export",
    "export_for_hub",
    "finished_checkpoints",
    "generate_pairs",
    "load_batch",
    "load_recipe",
    "load_trainable",
    "train",
    "training_step",
]
