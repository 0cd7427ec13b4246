"""Warm up a small vision tower with a cheap dense objective: predict each grid cell's content from its patches.

A tower trained from random weights inside the full VLM learns too slowly on a CPU (see the planning note on CPU
training); a short supervised warm-up on per-cell labels gives the projector features worth aligning.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup


def patch_cell_labels(cell_labels: torch.Tensor, grid_size: int, patch_grid: int) -> torch.Tensor:
    """cell_labels (B, grid_size**2) -> (B, patch_grid**2): each patch takes the label of the cell its centre is in."""
    centres = (torch.arange(patch_grid) + 0.5) * grid_size / patch_grid
    cell_of_patch = centres.floor().long().clamp(max=grid_size - 1)
    index = (cell_of_patch[:, None] * grid_size + cell_of_patch[None, :]).flatten()
    return cell_labels[:, index]


def warm_up_vision_tower(
    tower: nn.Module,
    pixel_values: torch.Tensor,
    cell_labels: torch.Tensor,
    num_classes: int,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> list[float]:
    """
    Trains `tower` in place with a linear head on its last hidden state, per patch, cross-entropy against the label
    of the patch's cell. pixel_values (N, 3, H, W), cell_labels (N, grid_size**2). Returns the loss of every step.
    """
    generator = torch.Generator().manual_seed(seed)
    patch_grid = tower.config.image_size // tower.config.patch_size
    grid_size = math.isqrt(cell_labels.shape[1])
    targets = patch_cell_labels(cell_labels, grid_size, patch_grid)
    head = nn.Linear(tower.config.hidden_size, num_classes)
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=learning_rate)
    schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=max(1, steps // 10), num_training_steps=steps)
    tower.train()
    losses = []
    for _ in tqdm(range(steps), desc="vision tower warm-up"):
        rows = torch.randint(len(pixel_values), (batch_size,), generator=generator)
        patches = tower(pixel_values[rows]).last_hidden_state[:, -patch_grid**2 :]
        loss = F.cross_entropy(head(patches).flatten(0, 1), targets[rows].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    tower.eval()
    return losses
