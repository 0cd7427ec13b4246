"""The region probe: how much of every cell's content survives a projector's visual tokens.

A projector (any of the project's, built from a `DeltaLlavaConfig`) and a small readout are trained together to name
the content of each of the 64 cells of a dense scene (`training/dense_scenes.py`) from the visual tokens alone. No
language model is involved, so a row costs minutes on a CPU instead of hours; what it measures is the information the
tokens carry about each place, which is what a language model would have to read back.

The tower is frozen and run once: `tower_hidden_states` keeps the hidden states the projectors read, and every row
trains on those.
"""

import math
import random
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from delta_llava import DeltaLlavaConfig
from delta_llava.modeling_delta_llava import DeltaLlavaPreTrainedModel, build_projector, projector_inputs
from delta_llava.projector_layers import sincos_position_embedding


class CellReadout(nn.Module):
    """
    Visual tokens (B, g*g, D) -> per-cell logits (B, cells, classes). One learned query per cell attends to the tokens
    (one attention layer), then an MLP names the class. Attention scores carry a learned locality prior: minus a
    per-head weight times the squared distance, in patches, between the cell's centre and the centre of the token's
    region, so tokens of every budget are placed alike and the readout starts by reading what lies over each cell
    (without it, reading the 576 MLP tokens waited ~350 steps at chance while the attention found the cells).
    """

    def __init__(self, token_width: int, patch_grid: int, cell_grid: int, num_classes: int, width: int = 64, heads: int = 4):
        super().__init__()
        self.patch_grid, self.cell_grid, self.heads = patch_grid, cell_grid, heads
        self.token_map = nn.Linear(token_width, width)
        self.cell_queries = nn.Parameter(sincos_position_embedding(cell_grid, width, cell_size=patch_grid / cell_grid))
        self.query_map = nn.Linear(width, width)
        self.key_map = nn.Linear(width, width)
        self.value_map = nn.Linear(width, width)
        self.log_locality = nn.Parameter(torch.full((heads, 1, 1), math.log(0.2)))
        self.classifier = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, num_classes)
        )

    def squared_distances(self, side: int, device) -> torch.Tensor:
        """(cells, side*side) squared distances, in patches, from each cell's centre to each token region's centre."""
        cells = (torch.arange(self.cell_grid, device=device) + 0.5) * self.patch_grid / self.cell_grid
        tokens = (torch.arange(side, device=device) + 0.5) * self.patch_grid / side
        along = (cells[:, None] - tokens[None, :]) ** 2  # (cell_grid, side)
        return (along[:, None, :, None] + along[None, :, None, :]).reshape(self.cell_grid**2, side * side)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, _ = tokens.shape
        split = lambda x: x.unflatten(-1, (self.heads, -1)).transpose(-3, -2)  # (..., n, width) -> (..., heads, n, w/h)
        content = self.token_map(tokens)
        queries = split(self.query_map(self.cell_queries))  # (heads, cells, w/h)
        keys, values = split(self.key_map(content)), split(self.value_map(content))  # (B, heads, k, w/h)
        scores = queries @ keys.transpose(-1, -2) / math.sqrt(queries.shape[-1])
        scores = scores - self.log_locality.exp() * self.squared_distances(math.isqrt(count), tokens.device)
        read = (scores.softmax(-1) @ values).transpose(1, 2).flatten(2)  # (B, cells, width)
        return self.classifier(self.cell_queries + read)


def fresh_projector(config: DeltaLlavaConfig) -> nn.Module:
    """The projector of `config`, initialised as a new Delta-LLaVA model initialises it."""
    projector = build_projector(config)
    projector.apply(DeltaLlavaPreTrainedModel(config)._init_weights)
    return projector


@torch.no_grad()
def tower_hidden_states(tower, pixel_values: torch.Tensor, batch_size: int = 64, desc: str = "tower features") -> torch.Tensor:
    """pixel_values (N, 3, H, W) -> the frozen tower's patch hidden states (N, layers + 1, P, C) in float16 (index 0
    is the embeddings, as in `hidden_states`; the class token is dropped)."""
    tower.eval()
    patches = (tower.config.image_size // tower.config.patch_size) ** 2
    chunks = []
    for start in tqdm(range(0, len(pixel_values), batch_size), desc=desc):
        states = tower(pixel_values[start : start + batch_size], output_hidden_states=True).hidden_states
        chunks.append(torch.stack([state[:, -patches:] for state in states], dim=1).half())
    return torch.cat(chunks)


def project(projector: nn.Module, config: DeltaLlavaConfig, hidden_states: torch.Tensor, budget: int) -> torch.Tensor:
    """hidden_states (B, layers + 1, P, C) -> visual tokens (B, budget, D), read as the model reads them."""
    patch_features, memory = projector_inputs(config, hidden_states.float().unbind(dim=1))
    return projector(patch_features, memory, config.check_num_visual_tokens(budget))


def cell_scores(logits: torch.Tensor, labels: torch.Tensor, word_classes: set[int]) -> dict[str, float]:
    """Accuracy over every cell, over filled cells (label != 0), and over the word and shape cells among them."""
    correct = logits.argmax(-1) == labels
    filled = labels != 0
    words = torch.zeros_like(filled)
    for label in word_classes:
        words |= labels == label
    shapes = filled & ~words
    return {
        "filled": correct[filled].float().mean().item(),
        "words": correct[words].float().mean().item(),
        "shapes": correct[shapes].float().mean().item(),
        "all_cells": correct.float().mean().item(),
    }


def train_and_score_probe(
    config: DeltaLlavaConfig,
    train_states: torch.Tensor,
    train_labels: torch.Tensor,
    test_states: torch.Tensor,
    test_labels: torch.Tensor,
    train_budgets: list[int],
    eval_budgets: list[int],
    num_classes: int,
    word_classes: set[int],
    steps: int,
    seed: int,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    desc: str = "probe",
) -> dict:
    """
    Trains a fresh projector (from `config`, initialised from `seed`) and a `CellReadout` on the cached states
    (N, layers + 1, P, C) and cell labels (N, cells), each batch at a budget drawn from `train_budgets` (one budget:
    a single-budget row), AdamW + cosine schedule; then scores the test set at each of `eval_budgets`. Returns the
    scores per budget, the last 50 steps' mean loss and the wall time of training and of scoring.
    """
    torch.manual_seed(seed)
    projector = fresh_projector(config)
    readout = CellReadout(
        config.text_config.hidden_size, config.patch_grid_size, math.isqrt(train_labels.shape[1]), num_classes
    )
    parameters = [*projector.parameters(), *readout.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    generator = torch.Generator().manual_seed(seed)
    budget_draws = random.Random(seed)
    losses = []
    started = time.perf_counter()
    projector.train()
    readout.train()
    for _ in tqdm(range(steps), desc=desc, leave=False):
        rows = torch.randint(len(train_states), (batch_size,), generator=generator)
        budget = budget_draws.choice(train_budgets)
        logits = readout(project(projector, config, train_states[rows], budget))
        loss = F.cross_entropy(logits.flatten(0, 1), train_labels[rows].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    train_seconds = time.perf_counter() - started
    projector.eval()
    readout.eval()
    scores = {}
    with torch.no_grad():
        for budget in eval_budgets:
            logits = torch.cat(
                [
                    readout(project(projector, config, test_states[start : start + 100], budget))
                    for start in range(0, len(test_states), 100)
                ]
            )
            scores[budget] = cell_scores(logits, test_labels, word_classes)
    return {
        "scores": scores,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "train_seconds": round(train_seconds, 1),
        "score_seconds": round(time.perf_counter() - started - train_seconds, 1),
    }
