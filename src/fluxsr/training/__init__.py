"""Training: recipes, teacher pairs, prompts, the FTD training loop and small-model pretraining.

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
