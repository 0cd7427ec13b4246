"""One optimizer step over a padded batch as a few forward/backward passes over rows of similar length.

A batch is padded to its longest row: on the synthetic set one 30-token caption pads the 15-token questions beside
it, so about a quarter of the language model's positions are padding, and attention costs grow with the square of
the padded length. Splitting the rows into groups of similar length, trimming each group's padding and summing the
groups' gradients gives the same step (each group's loss is divided by the whole batch's answer-token count, as
TRL's loss divides the batch's) with fewer positions computed. Only the rounding changes.
"""

from collections.abc import Sequence

import torch


def length_split_groups(lengths: Sequence[int], passes: int) -> list[list[int]]:
    """
    Rows of a batch (their unpadded `lengths`) -> at most `passes` groups of row indices (each in batch order) whose
    padded size, the sum over groups of rows x longest row, is the smallest possible. Groups split only between rows
    of different lengths, so a batch of equal rows stays one group.
    """
    if passes < 1:
        raise ValueError(f"length_split_passes {passes} must be at least 1 (1: one pass per batch, no split).")
    order = sorted(range(len(lengths)), key=lambda row: (lengths[row], row))
    ordered = [lengths[row] for row in order]
    cuts = [0] + [end for end in range(1, len(ordered)) if ordered[end] != ordered[end - 1]] + [len(ordered)]
    # best[k][j]: the smallest padded size of ordered[:cuts[j]] in k groups; start[k][j]: where its last group begins
    infinity = float("inf")
    best = [[0] + [infinity] * (len(cuts) - 1)]
    start = [[0] * len(cuts)]
    for _ in range(min(passes, len(cuts) - 1)):
        row, origin = [infinity] * len(cuts), [0] * len(cuts)
        for j in range(1, len(cuts)):
            for i in range(j):
                size = best[-1][i] + (cuts[j] - cuts[i]) * ordered[cuts[j] - 1]
                if size < row[j]:
                    row[j], origin[j] = size, i
        best.append(row)
        start.append(origin)
    groups_used = min(range(1, len(best)), key=lambda k: (best[k][-1], k))
    bounds, j = [], len(cuts) - 1
    for k in range(groups_used, 0, -1):
        i = start[k][j]
        bounds.append((cuts[i], cuts[j]))
        j = i
    return [sorted(order[begin:end]) for begin, end in reversed(bounds)]


def split_rows(inputs: dict, groups: list[list[int]], lengths: Sequence[int]) -> list[dict]:
    """
    A collated, right-padded batch (token tensors (B, T), per-image tensors (B, ...), one image per row) -> one batch
    per group: its rows, token tensors cut to (b, the group's longest row). Entries that are not per-row tensors
    (a budget number) are shared.
    """
    rows, width = inputs["input_ids"].shape
    for key, value in inputs.items():
        if isinstance(value, (list, tuple)):
            raise ValueError(
                f"length_split_passes splits tensors only; the batch entry {key!r} is a {type(value).__name__}."
            )
    if "pixel_values" in inputs and inputs["pixel_values"].shape[0] != rows:
        raise ValueError(
            f"length_split_passes needs one image per row: the batch has {inputs['pixel_values'].shape[0]} images "
            f"for {rows} rows. Set length_split_passes 1 for multi-image or text-only rows."
        )
    mask = inputs["attention_mask"]
    right_padded = torch.arange(width, device=mask.device) < torch.tensor(lengths, device=mask.device)[:, None]
    if not torch.equal(mask.bool(), right_padded):
        raise ValueError("length_split_passes needs right-padded rows (padding_side='right', as training pads).")
    batches = []
    for group in groups:
        index = torch.tensor(group, device=mask.device)
        longest = max(lengths[row] for row in group)
        batch = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
                value = value.index_select(0, index)
                if value.dim() == 2 and value.shape[1] == width:  # a token tensor
                    value = value[:, :longest]
            batch[key] = value
        batches.append(batch)
    return batches
