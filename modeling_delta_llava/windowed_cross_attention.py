"""Windowed cross-attention from the query grid to the multi-level memory (paper eq. 7-10).

Memory rows travel in window-position order, (L*R*R, B*n*n, X): row (l, a) holds position a of the R x R region under
each of the B*n*n query windows, at level l. Putting the narrow vision features in this order once, before they are
projected, makes every projection come out already grouped by window, so the wide keys and values are never gathered.
"""

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


def order_by_window_position(
    memory: torch.Tensor, windows_per_side: int, levels_as_channels: bool = False
) -> torch.Tensor:
    """
    memory (B, L, G*G, X) -> (L*R*R, B*n*n, X) in window-position order, contiguous; n = windows_per_side, R = G/n.
    With `levels_as_channels`: (R*R, B*n*n, L*X), each position's levels concatenated along channels.
    """
    batch, levels, tokens, width = memory.shape
    region = math.isqrt(tokens) // windows_per_side
    grid = memory.view(batch, levels, windows_per_side, region, windows_per_side, region, width)
    windows = batch * windows_per_side**2
    if levels_as_channels:
        return grid.permute(3, 5, 0, 2, 4, 1, 6).reshape(region * region, windows, levels * width).contiguous()
    return grid.permute(1, 3, 5, 0, 2, 4, 6).reshape(levels * region * region, windows, width).contiguous()


def window_heads(memory_rows: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(S, B*n*n, H*D) in window-position order -> (B*n*n, H, S, D), a view: the S rows each window attends to."""
    length, windows, width = memory_rows.shape
    return memory_rows.view(length, windows, num_heads, width // num_heads).permute(1, 2, 0, 3)


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
        count = self.windows_per_side(math.isqrt(queries.shape[1]))
        return self.attend(queries, order_by_window_position(keys, count), order_by_window_position(values, count))

    def windows_per_side(self, query_side: int) -> int:
        """n: query windows along each side of the g x g grid."""
        return query_side // effective_window(query_side, self.window_size)

    def attend(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """queries (B, g*g, d); keys, values (L*R*R, B * n^2, d) in window-position order -> (B, g*g, d)."""
        batch, num_queries, width = queries.shape
        side = math.isqrt(num_queries)
        window = effective_window(side, self.window_size)
        query_windows = partition_query_windows(self.query_norm(queries).view(batch, side, side, width), window)
        attended = F.scaled_dot_product_attention(
            split_heads(query_windows, self.num_heads),
            window_heads(keys, self.num_heads),
            window_heads(values, self.num_heads),
        )
        attended = unpartition_query_windows(merge_heads(attended), batch, side, window)
        return queries + self.out(attended.reshape(batch, num_queries, width))
