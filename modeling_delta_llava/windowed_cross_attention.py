"""Windowed cross-attention from the query grid to the multi-level memory (paper eq. 7-10)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .projector_layers import ZeroInitLinear, merge_heads, split_heads


def effective_window(query_side: int, window_size: int) -> int:
    """Largest divisor of the query grid side that is not above `window_size`, so every budget can be windowed."""
    return max(w for w in range(1, min(window_size, query_side) + 1) if query_side % w == 0)


def partition_query_windows(queries: torch.Tensor, window: int) -> torch.Tensor:
    """(B, g, g, d) -> (B * (g/w)^2, w*w, d): each row holds one w x w window."""
    batch, side, _, width = queries.shape
    count = side // window
    windows = queries.view(batch, count, window, count, window, width).permute(0, 1, 3, 2, 4, 5)
    return windows.reshape(batch * count * count, window * window, width)


def partition_memory_regions(memory: torch.Tensor, windows_per_side: int) -> torch.Tensor:
    """(B, L, G, G, d) -> (B * n^2, L*R*R, d) with n = windows_per_side and R = G/n: every level under each window."""
    batch, levels, grid, _, width = memory.shape
    region = grid // windows_per_side
    regions = memory.view(batch, levels, windows_per_side, region, windows_per_side, region, width)
    regions = regions.permute(0, 2, 4, 1, 3, 5, 6)
    return regions.reshape(batch * windows_per_side**2, levels * region * region, width)


def unpartition_query_windows(windows: torch.Tensor, batch: int, side: int, window: int) -> torch.Tensor:
    """Inverse of `partition_query_windows`: (B * (g/w)^2, w*w, d) -> (B, g, g, d)."""
    count = side // window
    width = windows.shape[-1]
    grid = windows.view(batch, count, count, window, window, width).permute(0, 1, 3, 2, 4, 5)
    return grid.reshape(batch, side, side, width)


class WindowedCrossAttention(nn.Module):
    """
    Each w x w window of the g x g query grid attends to the (w*s) x (w*s) patch region under it, at every memory level
    (s = G/g). w = 1 is TokenPacker's point-to-region attention. All windows run in one batched SDPA call.

    Keys and values arrive already projected (each level through its own Delta role); this module adds the query
    norm, the head split and the output map, and returns Y = Q + attention output.
    """

    def __init__(self, width: int, num_heads: int, window_size: int, zero_init_output: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.query_norm = nn.LayerNorm(width)
        self.out = (ZeroInitLinear if zero_init_output else nn.Linear)(width, width)  # zero: starts as Y = Q

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """queries (B, g*g, d); keys, values (B, L, G*G, d) -> (B, g*g, d)."""
        batch, num_queries, width = queries.shape
        side = math.isqrt(num_queries)
        windows_per_side = side // effective_window(side, self.window_size)
        grid = math.isqrt(keys.shape[2])
        memory_shape = (batch, keys.shape[1], grid, grid, width)
        key_regions = partition_memory_regions(keys.reshape(memory_shape), windows_per_side)
        value_regions = partition_memory_regions(values.reshape(memory_shape), windows_per_side)
        return self.attend(queries, key_regions, value_regions)

    def attend(self, queries: torch.Tensor, key_regions: torch.Tensor, value_regions: torch.Tensor) -> torch.Tensor:
        """queries (B, g*g, d); key/value regions (B * (g/w)^2, L*R*R, d), the memory under each query window in
        `partition_memory_regions` order -> (B, g*g, d)."""
        batch, num_queries, width = queries.shape
        side = math.isqrt(num_queries)
        window = effective_window(side, self.window_size)
        query_windows = partition_query_windows(self.query_norm(queries).view(batch, side, side, width), window)
        attended = F.scaled_dot_product_attention(
            split_heads(query_windows, self.num_heads),
            split_heads(key_regions, self.num_heads),
            split_heads(value_regions, self.num_heads),
        )
        attended = unpartition_query_windows(merge_heads(attended), batch, side, window)
        return queries + self.out(attended.reshape(batch, num_queries, width))
