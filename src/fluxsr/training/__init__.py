"""Training: recipes, teacher pairs, prompts, the FTD training loop and small-model pretraining."""
