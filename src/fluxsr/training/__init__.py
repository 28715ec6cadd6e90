"""Training: recipes, teacher pairs, prompts, the FTD training loop, small-model pretraining, and the Hub export of
a model or run (``fluxsr export``: ``export_for_hub``).

``train`` runs a whole run (prepare, a loop of ``training_step`` on ``load_batch`` batches, bookkeeping, export);
``training_step`` is one SR + FTD step on a :class:`Batch`, callable alone with a :class:`Trainer`.
"""

from ..lazy import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "Checkpoint": "checkpoints",
        "ResumeFrom": "checkpoints",
        "finished_checkpoints": "checkpoints",
        "load_trainable": "checkpoints",
        "export_for_hub": "hub_export",
        "train": "loop",
        "generate_pairs": "pairs",
        "Recipe": "recipe",
        "load_recipe": "recipe",
        "Batch": "step",
        "Trainer": "step",
        "load_batch": "step",
        "training_step": "step",
        "build_student": "student",
        "export": "student",
    },
)
