"""Building blocks of the Delta projector's specialization stages (paper section 4.1 and eq. 6, 11).

Every block takes tokens laid out row-major on a square grid, `(batch, g*g, width)`, and returns the same shape.
None of them holds a parameter whose shape depends on g, so one set of weights serves every token budget.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class ZeroInitLinear(nn.Linear):
    """A Linear that `DeltaLlavaPreTrainedModel` initialises to zero: the residual branch it closes starts off."""


def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(B, g*g, C) -> (B, C, g, g)."""
    batch, length, width = tokens.shape
    side = math.isqrt(length)
    return tokens.transpose(1, 2).reshape(batch, width, side, side)


def grid_to_tokens(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, g, g) -> (B, g*g, C)."""
    return grid.flatten(2).transpose(1, 2)


def resize_tokens(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """Interp: area-resample (B, G*G, C) patch tokens to (B, side*side, C); the identity when the side is unchanged."""
    if math.isqrt(tokens.shape[1]) == side:
        return tokens
    return grid_to_tokens(F.interpolate(tokens_to_grid(tokens), size=(side, side), mode="area"))


def sincos_position_embedding(side: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions for a side x side grid: (side*side, width), half the channels per axis."""
    quarter = width // 4
    frequencies = 1.0 / (10000.0 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    coordinates = torch.arange(side, device=device, dtype=torch.float32)
    rows, cols = torch.meshgrid(coordinates, coordinates, indexing="ij")
    angles_rows = rows.reshape(-1, 1) * frequencies
    angles_cols = cols.reshape(-1, 1) * frequencies
    table = torch.cat([angles_rows.sin(), angles_rows.cos(), angles_cols.sin(), angles_cols.cos()], dim=1)
    return table.to(dtype)


def split_heads(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, H*D) -> (B, H, L, D)."""
    batch, length, width = tensor.shape
    return tensor.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(tensor: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> (B, L, H*D)."""
    batch, heads, length, head_dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, length, heads * head_dim)


class MultiHeadConvAttention(nn.Module):
    """MHCA: x + 1x1conv(ReLU(LN(grouped 3x3 conv(LN(x))))), groups = heads: local mixing with no dot products."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.grouped_conv = nn.Conv2d(width, width, kernel_size=3, padding=1, groups=num_heads)
        self.conv_norm = nn.LayerNorm(width)
        self.merge_heads = nn.Conv2d(width, width, kernel_size=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mixed = grid_to_tokens(self.grouped_conv(tokens_to_grid(self.norm(tokens))))
        mixed = torch.relu(self.conv_norm(mixed))
        return tokens + grid_to_tokens(self.merge_heads(tokens_to_grid(mixed)))


class EfficientSelfAttention(nn.Module):
    """
    EMHSA: x + SDPA(LN(x)) with keys and values average-pooled by `spatial_reduction` when the grid side is at least
    2 * spatial_reduction, which cuts the cost from N*N to N*N/sr^2 while every query still sees the whole grid.
    """

    def __init__(self, width: int, num_heads: int, spatial_reduction: int):
        super().__init__()
        self.num_heads = num_heads
        self.spatial_reduction = spatial_reduction
        self.norm = nn.LayerNorm(width)
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        normed = self.norm(tokens)
        side = math.isqrt(tokens.shape[1])
        context = normed
        if self.spatial_reduction > 1 and side >= 2 * self.spatial_reduction:
            reduced_side = math.ceil(side / self.spatial_reduction)
            context = grid_to_tokens(F.adaptive_avg_pool2d(tokens_to_grid(normed), reduced_side))
        keys, values = self.key_value(context).chunk(2, dim=-1)
        queries = split_heads(self.query(normed), self.num_heads)
        attended = F.scaled_dot_product_attention(
            queries, split_heads(keys, self.num_heads), split_heads(values, self.num_heads)
        )
        return tokens + self.out(merge_heads(attended))


class FeedForward(nn.Module):
    """Pre-norm residual MLP: x + W2 act(W1 LN(x)) (the NTB's MLP and the final refinement, eq. 11)."""

    def __init__(self, width: int, hidden_size: int, activation: str = "gelu"):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden_size)
        self.act = ACT2FN[activation]
        self.fc2 = nn.Linear(hidden_size, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.fc2(self.act(self.fc1(self.norm(tokens))))


class TransformerBlock(nn.Module):
    """NTB (eq. 6): EMHSA -> MHCA -> MLP, each pre-norm with a residual. `use_emhsa=False` drops the EMHSA."""

    def __init__(self, width: int, num_heads: int, spatial_reduction: int, activation: str, use_emhsa: bool = True):
        super().__init__()
        self.self_attention = EfficientSelfAttention(width, num_heads, spatial_reduction) if use_emhsa else None
        self.conv_attention = MultiHeadConvAttention(width, num_heads)
        self.mlp = FeedForward(width, 4 * width, activation)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.self_attention is not None:
            tokens = self.self_attention(tokens)
        return self.mlp(self.conv_attention(tokens))
