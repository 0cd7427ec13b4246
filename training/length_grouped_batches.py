"""Batches of similar length, in a random order: less padding than random batches, without the long-to-short sweep of
transformers' `LengthGroupedSampler` (it hands out each mega-batch's batches longest first)."""

from collections.abc import Sequence

import torch
from torch.utils.data import Sampler


def conversation_length(messages: list[dict]) -> int:
    """Words of text in a conversation (`messages` rows: role + content parts), a cheap stand-in for its tokens."""
    return sum(len((part.get("text") or "").split()) for turn in messages for part in turn["content"])


class ShuffledLengthGroupedSampler(Sampler[int]):
    """
    Each epoch: a random permutation, cut into mega-batches of `batch_size * mega_batch_factor` indices; each mega-batch
    sorted by `lengths` and cut into batches of `batch_size`; then the full batches in a random order and the one short
    batch (if any) last, so that a DataLoader of the same `batch_size` gets exactly these batches. The order is a
    function of `seed` and the epoch (`set_epoch`), so a resumed run sees what an uninterrupted one did.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch_factor: int = 50):
        if batch_size < 1 or mega_batch_factor < 1:
            raise ValueError(
                f"batch_size {batch_size} and mega_batch_factor {mega_batch_factor} must both be at least 1."
            )
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch_factor = mega_batch_factor
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        permutation = torch.randperm(len(self.lengths), generator=generator).tolist()
        mega_batch = self.batch_size * self.mega_batch_factor
        batches = []
        for start in range(0, len(permutation), mega_batch):
            by_length = sorted(permutation[start : start + mega_batch], key=self.lengths.__getitem__)
            batches += [by_length[i : i + self.batch_size] for i in range(0, len(by_length), self.batch_size)]
        full = [batch for batch in batches if len(batch) == self.batch_size]
        short = [batch for batch in batches if len(batch) < self.batch_size]
        order = torch.randperm(len(full), generator=generator).tolist()
        return iter([index for batch in [*(full[i] for i in order), *short] for index in batch])
