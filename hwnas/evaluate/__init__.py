"""Accuracy objectives: perplexity and lm-eval-style multiple-choice tasks."""
