"""Evaluation with external harnesses: the lmms-eval model class `delta_llava` (install the `eval` extra)."""
