"""Training Delta-LLaVA with TRL: the entry point, recipes, data, the synthetic VQA set and the quick start."""

from .third_party_logs import silence_false_alarms

silence_false_alarms()
