"""Stage 5: the IXT loss (pure torch) and the DeepSpeed learner that applies it."""
