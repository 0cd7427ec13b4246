"""The Delta-LLaVA projector: base-then-specialize alignment of the patch grid into g*g LLM tokens (section 4)."""

import torch
from torch import nn

from .configuration_delta_llava import DeltaLlavaConfig
from .delta_projection import DeltaProjection
from .projector_layers import (
    EfficientSelfAttention,
    FeedForward,
    MultiHeadConvAttention,
    TransformerBlock,
    resize_tokens,
    sincos_position_embedding,
)
from .windowed_cross_attention import WindowedCrossAttention, order_by_window_position


class DeltaProjector(nn.Module):
    """
    Patch features Z (B, G*G, C) and memory (B, L, G*G, C) -> visual tokens (B, g*g, D) for any g dividing G:

        Interp -> MHCA -> EMHSA -> + Pos2D -> DeltaProjection (query role) -> NTB
        -> windowed cross-attention to the memory (key/value roles per level) -> linear d->D -> FFN refinement.

    Object and global tokens (B, K, C) take their own Delta roles and the same output map and refinement.
    """

    def __init__(self, config: DeltaLlavaConfig):
        super().__init__()
        vision_width = config.vision_config.hidden_size
        width = config.projector_hidden_size
        head_dim = config.projector_head_dim
        num_levels = len(config.memory_layers)
        act = config.projector_hidden_act

        self.refine_conv = MultiHeadConvAttention(vision_width, vision_width // head_dim)
        self.refine_attention = (
            EfficientSelfAttention(vision_width, vision_width // head_dim, config.spatial_reduction)
            if config.use_emhsa
            else None
        )
        self.memory_norm = nn.LayerNorm(vision_width)
        self.memory_roles = [(f"key_{level}", f"value_{level}") for level in range(num_levels)]
        roles = ["query", *[role for pair in self.memory_roles for role in pair]]
        roles += ["object"] * config.use_object_tokens + ["global"] * config.use_global_token
        self.delta_projection = DeltaProjection(
            vision_width, width, config.delta_rank, roles, use_delta=config.use_delta_projection
        )
        self.transformer_block = (
            TransformerBlock(width, width // head_dim, config.spatial_reduction, act, config.use_emhsa)
            if config.use_transformer_block
            else None
        )
        self.cross_attention = WindowedCrossAttention(width, width // head_dim, config.window_size)
        self.output_map = nn.Linear(width, config.text_config.hidden_size)
        self.refinement = FeedForward(config.text_config.hidden_size, config.ffn_hidden_size, act)
        self.positions_in_image = config.query_positions == "image"
        self.patch_grid_size = config.patch_grid_size

    def forward(self, patch_features: torch.Tensor, memory: torch.Tensor, query_side: int) -> torch.Tensor:
        """patch_features (B, G*G, C), memory (B, L, G*G, C) -> (B, query_side**2, D)."""
        dtype = self.output_map.weight.dtype  # the tower may run in another dtype
        patch_features, memory = patch_features.to(dtype), memory.to(dtype)
        queries = self.refine_conv(resize_tokens(patch_features, query_side))
        if self.refine_attention is not None:
            queries = self.refine_attention(queries)
        queries = queries + sincos_position_embedding(
            query_side, queries.shape[-1], queries.device, queries.dtype, cell_size=self.query_cell_size(query_side)
        )
        (queries,) = self.delta_projection(queries, ["query"])
        if self.transformer_block is not None:
            queries = self.transformer_block(queries)

        keys, values = self.project_memory(memory, self.cross_attention.windows_per_side(query_side))
        tokens = self.cross_attention.attend(queries, keys, values)
        return self.refinement(self.output_map(tokens))

    def query_cell_size(self, query_side: int) -> float | None:
        """Patches per query cell side when positions are measured in the image (None: the query grid's indices)."""
        return self.patch_grid_size / query_side if self.positions_in_image else None

    def project_memory(self, memory: torch.Tensor, windows_per_side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """
        memory (B, L, G*G, C) -> keys, values (L*R*R, B*n*n, d) in window-position order (n = windows_per_side,
        R = G/n): level l through its own key and value roles.
        """
        rows = order_by_window_position(self.memory_norm(memory), windows_per_side)  # (L*R*R, B*n*n, C)
        key_roles, value_roles = zip(*self.memory_roles)
        by_level = rows.view(len(key_roles), -1, rows.shape[-1])
        keys, values = self.delta_projection.project_levels(by_level, key_roles, value_roles)
        return keys.view(*rows.shape[:2], -1), values.view(*rows.shape[:2], -1)

    def project_extra_tokens(self, tokens: torch.Tensor, role: str) -> torch.Tensor:
        """Object or global tokens (B, K, C) -> (B, K, D) through their own Delta role, the output map and the FFN."""
        (projected,) = self.delta_projection(tokens.to(self.output_map.weight.dtype), [role])
        return self.refinement(self.output_map(projected))

