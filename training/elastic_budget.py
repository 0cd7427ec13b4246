"""Elastic budgets: every batch draws its visual token budget, so one checkpoint learns to serve all of them."""

import hashlib
import json
from collections.abc import Callable, Sequence


def batch_budget(examples: list[dict], budgets: Sequence[int], seed: int) -> int:
    """
    A budget picked by a hash of the batch's conversations and the seed: uniform over `budgets` across batches, yet
    a pure function of the batch, so a resumed run or another process draws exactly what an uninterrupted run did.
    """
    text = json.dumps([example.get("messages") for example in examples], sort_keys=True, default=str)
    digest = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
    return budgets[int.from_bytes(digest, "little") % len(budgets)]


class ElasticBudgetCollator:
    """
    Wraps TRL's vision collator: picks a budget per batch from `budgets`, has the processor expand the image
    placeholders to it, and adds `num_visual_tokens` to the batch so the model projects to the same count.
    """

    def __init__(self, collator: Callable, processor, budgets: Sequence[int], seed: int = 0):
        if not budgets:
            raise ValueError("elastic_budgets is empty: give at least one budget, e.g. [576, 144, 36, 16, 4, 1].")
        self.collator = collator
        self.processor = processor
        self.budgets = list(budgets)
        self.seed = seed

    def __call__(self, examples: list[dict]) -> dict:
        budget = batch_budget(examples, self.budgets, self.seed)
        default = self.processor.num_visual_tokens
        self.processor.num_visual_tokens = budget
        try:
            batch = self.collator(examples)
        finally:
            self.processor.num_visual_tokens = default
        batch["num_visual_tokens"] = budget
        return batch
