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
    """(B, C, g, g) -> (B, g*g, C), contiguous: vLLM's CPU linear kernels refuse a transposed view."""
    return grid.flatten(2).transpose(1, 2).contiguous()


def resize_tokens(tokens: torch.Tensor, side: int, mode: str = "area") -> torch.Tensor:
    """
    Interp: resample (B, G*G, C) grid tokens to (B, side*side, C); the identity when the side is unchanged.
    `mode="area"` averages each cell (shared_base); `"bilinear"` and `"bicubic"` (no antialiasing, corners not
    aligned) are the authors' resizes of the patches and of the position table.
    """
    if math.isqrt(tokens.shape[1]) == side:
        return tokens
    align = None if mode == "area" else False
    return grid_to_tokens(F.interpolate(tokens_to_grid(tokens), size=(side, side), mode=mode, align_corners=align))


def sincos_position_embedding(
    side: int, width: int, device=None, dtype=None, columns_first: bool = False, cell_size: float | None = None
) -> torch.Tensor:
    """
    Fixed 2-D sine-cosine positions for a side x side grid: (side*side, width), a quarter of the channels each for
    sin/cos of the row and of the column coordinate. The coordinate is the index, or with `cell_size` the centre of
    the cell in those units, (index + 0.5) * cell_size. `columns_first=True` puts the column's half first (the
    authors' table).
    """
    quarter = width // 4
    frequencies = 1.0 / (10000.0 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    coordinates = torch.arange(side, device=device, dtype=torch.float32)
    if cell_size is not None:
        coordinates = (coordinates + 0.5) * cell_size
    rows, cols = torch.meshgrid(coordinates, coordinates, indexing="ij")
    angles_rows = rows.reshape(-1, 1) * frequencies
    angles_cols = cols.reshape(-1, 1) * frequencies
    halves = [torch.cat([angles.sin(), angles.cos()], dim=1) for angles in (angles_rows, angles_cols)]
    return torch.cat(halves[::-1] if columns_first else halves, dim=1).to(dtype)


class DropPath(nn.Module):
    """Stochastic depth on a residual branch (B, ...): while training, drops the whole branch of a sample with
    probability p and scales the kept ones by 1/(1-p); the identity in eval mode or with p = 0."""

    def __init__(self, probability: float = 0.0):
        super().__init__()
        self.probability = probability

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.training or self.probability == 0.0:
            return branch
        keep = 1.0 - self.probability
        mask = branch.new_empty((branch.shape[0],) + (1,) * (branch.dim() - 1)).bernoulli_(keep)
        return branch * mask / keep


def split_heads(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, H*D) -> (B, H, L, D)."""
    batch, length, width = tensor.shape
    return tensor.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def merge_heads(tensor: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> (B, L, H*D)."""
    batch, heads, length, head_dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, length, heads * head_dim)


class MultiHeadConvAttention(nn.Module):
    """
    MHCA: x + DropPath(1x1conv(ReLU(LN(grouped 3x3 conv(LN(x)))))), groups = heads: local mixing with no dot
    products. The authors' block has no input LayerNorm and no conv biases (`input_norm=False, bias=False`).
    """

    def __init__(self, width: int, num_heads: int, input_norm: bool = True, bias: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(width) if input_norm else nn.Identity()
        self.grouped_conv = nn.Conv2d(width, width, kernel_size=3, padding=1, groups=num_heads, bias=bias)
        self.conv_norm = nn.LayerNorm(width)
        self.merge_heads = nn.Conv2d(width, width, kernel_size=1, bias=bias)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mixed = grid_to_tokens(self.grouped_conv(tokens_to_grid(self.norm(tokens))))
        mixed = torch.relu(self.conv_norm(mixed))
        return tokens + self.drop_path(grid_to_tokens(self.merge_heads(tokens_to_grid(mixed))))


class EfficientSelfAttention(nn.Module):
    """
    EMHSA: x + DropPath(SDPA(LN(x))) with keys and values average-pooled by `spatial_reduction` when the grid side is
    at least 2 * spatial_reduction, which cuts the cost from N*N to N*N/sr^2 while every query still sees the whole
    grid. `double_norm=True` applies two LayerNorms in a row, as the authors' Next-ViT block does.
    """

    def __init__(
        self, width: int, num_heads: int, spatial_reduction: int, drop_path: float = 0.0, double_norm: bool = False
    ):
        super().__init__()
        self.num_heads = num_heads
        self.spatial_reduction = spatial_reduction
        self.norm = nn.Sequential(nn.LayerNorm(width), nn.LayerNorm(width)) if double_norm else nn.LayerNorm(width)
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.drop_path = DropPath(drop_path)

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
        return tokens + self.drop_path(self.out(merge_heads(attended)))


class FeedForward(nn.Module):
    """
    Residual MLP: x + DropPath(W2 act(W1 LN(x))) (the NTB's MLP and the final refinement, eq. 11). The authors'
    Next-ViT block uses it without the LayerNorm (`pre_norm=False`), with ReLU.
    """

    def __init__(
        self, width: int, hidden_size: int, activation: str = "gelu", pre_norm: bool = True, drop_path: float = 0.0
    ):
        super().__init__()
        self.norm = nn.LayerNorm(width) if pre_norm else nn.Identity()
        self.fc1 = nn.Linear(width, hidden_size)
        self.act = ACT2FN[activation]
        self.fc2 = nn.Linear(hidden_size, width)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.drop_path(self.fc2(self.act(self.fc1(self.norm(tokens)))))


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
