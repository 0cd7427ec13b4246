"""Elastic budgets: one checkpoint learns to serve several visual token budgets.

Two ways to train it (`elastic_mode`):
- "one_per_batch": every batch draws one budget (cheap: a batch costs what one budget costs), all budgets alike or,
  with whole-number weights, some more often than others;
- "every_budget": every example appears once per budget in its batch, so each step's loss covers all budgets for the
  same questions (as Matryoshka-style models are trained); a batch of B examples is B x len(budgets) rows.
"""

import hashlib
import json
from collections.abc import Callable, Sequence

import torch

ELASTIC_MODES = ("one_per_batch", "every_budget")
# Per-row tensors (batch, sequence) of a collated batch and the value that pads them; the other keys are per image.
TOKEN_COLUMNS_PAD = {"input_ids": None, "attention_mask": 0, "labels": -100}  # None: the tokenizer's pad token


def check_budget_weights(budgets: Sequence[int] | None, weights: Sequence[int], mode: str) -> None:
    """Refuses weights that do not give each budget of `budgets` a whole number of draws (or that `mode` ignores)."""
    if not budgets:
        raise ValueError("elastic_budget_weights were given without elastic_budgets: weigh the budgets you train.")
    if mode != "one_per_batch":
        raise ValueError(f"elastic_budget_weights need elastic_mode 'one_per_batch': {mode!r} trains every budget in "
                         "every batch, so there is nothing to weigh.")  # fmt: skip
    if len(weights) != len(budgets) or not all(isinstance(w, int) and w >= 1 for w in weights):
        raise ValueError(
            f"elastic_budget_weights {list(weights)} must be one whole number >= 1 per budget of elastic_budgets "
            f"{list(budgets)}, e.g. {[3 if i == 0 else 1 for i in range(len(budgets))]} to draw the first 3x as often."
        )


def weighted_budgets(budgets: Sequence[int], weights: Sequence[int] | None) -> list[int]:
    """The list budgets are drawn from uniformly: each budget repeated `weight` times, in order ([36, 9], [1, 3] ->
    [36, 9, 9, 9]); `budgets` itself without weights."""
    if weights is None:
        return list(budgets)
    return [budget for budget, weight in zip(budgets, weights) for _ in range(weight)]


def batch_budget(examples: list[dict], budgets: Sequence[int], seed: int) -> int:
    """
    A budget picked by a hash of the batch's conversations and the seed: uniform over the entries of `budgets` across
    batches (a budget listed twice comes twice as often), yet a pure function of the batch, so a resumed run or
    another process draws exactly what an uninterrupted run did.
    """
    text = json.dumps([example.get("messages") for example in examples], sort_keys=True, default=str)
    digest = hashlib.blake2b(f"{seed}:{text}".encode(), digest_size=8).digest()
    return budgets[int.from_bytes(digest, "little") % len(budgets)]


def concatenate_batches(batches: list[dict], pad_token_id: int, padding_side: str) -> dict:
    """
    Collated batches (each with its own sequence length) -> one batch: the per-row token tensors padded to the
    longest on `padding_side` and stacked, the per-image tensors (pixel values, budgets) concatenated in order.
    """
    length = max(batch["input_ids"].shape[1] for batch in batches)
    merged = {}
    for key in batches[0]:
        parts = [batch[key] for batch in batches]
        if key in TOKEN_COLUMNS_PAD:
            value = pad_token_id if TOKEN_COLUMNS_PAD[key] is None else TOKEN_COLUMNS_PAD[key]
            padded = []
            for part in parts:
                missing = length - part.shape[1]
                widths = (missing, 0) if padding_side == "left" else (0, missing)
                padded.append(torch.nn.functional.pad(part, widths, value=value))
            merged[key] = torch.cat(padded)
        elif isinstance(parts[0], torch.Tensor):
            merged[key] = torch.cat(parts)
        else:
            raise ValueError(f"every_budget cannot merge the batch entry {key!r} ({type(parts[0]).__name__}).")
    return merged


class ElasticBudgetCollator:
    """
    Wraps TRL's vision collator. "one_per_batch": picks a budget per batch from `budgets` (each `weights[i]` times as
    often as a weight of 1; all alike without weights), has the processor expand the image placeholders to it, and
    adds `num_visual_tokens` to the batch so the model projects to the same count.
    "every_budget": collates the examples once per budget and concatenates the batches (budget-major rows, padded to
    one length); the batch's `visual_token_budget` tells the model each image's budget.
    """

    def __init__(
        self,
        collator: Callable,
        processor,
        budgets: Sequence[int],
        seed: int = 0,
        mode: str = "one_per_batch",
        weights: Sequence[int] | None = None,
    ):
        if not budgets:
            raise ValueError("elastic_budgets is empty: give at least one budget, e.g. [576, 144, 36, 16, 4, 1].")
        if mode not in ELASTIC_MODES:
            raise ValueError(f"elastic_mode {mode!r} is unknown: use one of {ELASTIC_MODES}.")
        if weights is not None:
            check_budget_weights(budgets, weights, mode)
        self.collator = collator
        self.processor = processor
        self.budgets = list(budgets)
        self.drawn_from = weighted_budgets(budgets, weights)
        self.seed = seed
        self.mode = mode

    def collate_at(self, examples: list[dict], budget: int) -> dict:
        default = self.processor.num_visual_tokens
        self.processor.num_visual_tokens = budget
        try:
            # the wrapped collator may pop columns from the examples (object masks): each budget gets its own copies
            return self.collator([dict(example) for example in examples])
        finally:
            self.processor.num_visual_tokens = default

    def __call__(self, examples: list[dict]) -> dict:
        if self.mode == "every_budget":
            tokenizer = self.processor.tokenizer
            batches = [self.collate_at(examples, budget) for budget in self.budgets]
            return concatenate_batches(batches, tokenizer.pad_token_id, tokenizer.padding_side)
        budget = batch_budget(examples, self.drawn_from, self.seed)
        batch = self.collate_at(examples, budget)
        batch["num_visual_tokens"] = budget
        return batch
