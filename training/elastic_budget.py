"""Elastic budgets: every batch draws its visual token budget, so one checkpoint learns to serve all of them."""

import random
from collections.abc import Callable, Sequence


class ElasticBudgetCollator:
    """
    Wraps TRL's vision collator: draws a budget per batch from `budgets`, has the processor expand the image
    placeholders to it, and adds `num_visual_tokens` to the batch so the model projects to the same count.
    """

    def __init__(self, collator: Callable, processor, budgets: Sequence[int], seed: int = 0):
        if not budgets:
            raise ValueError("elastic_budgets is empty: give at least one budget, e.g. [576, 144, 36, 16, 4, 1].")
        self.collator = collator
        self.processor = processor
        self.budgets = list(budgets)
        self.rng = random.Random(seed)

    def __call__(self, examples: list[dict]) -> dict:
        budget = self.rng.choice(self.budgets)
        default = self.processor.num_visual_tokens
        self.processor.num_visual_tokens = budget
        try:
            batch = self.collator(examples)
        finally:
            self.processor.num_visual_tokens = default
        batch["num_visual_tokens"] = budget
        return batch
