"""Evaluation: baseline and candidate prompts over the golden set, scored, compared and decided."""
