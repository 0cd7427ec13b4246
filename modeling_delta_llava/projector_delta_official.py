"""The Delta-LLaVA projector as the authors' public code computes it (`delta_layout="official"`).

Reimplemented from a reading of class `Delta_LLaVA` in `llava/model/multimodal_projector/builder.py` of GitHub
`mzamini92/Delta-LLaVA`; `convert_official_projector_weights` maps that module's state dict onto this one.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .configuration_delta_llava import DeltaLlavaConfig, ntb_channel_split
from .delta_projection import NormalizedDeltaProjection
from .next_vit_block import NextViTTransformerBlock
from .projector_layers import merge_heads, resize_tokens, sincos_position_embedding, split_heads
from .windowed_cross_attention import order_by_window_position, window_heads


class PointToRegionAttention(nn.Module):
    """
    Standard multi-head attention (own query/key/value input maps and output map, no norm, no residual) in which the
    query at cell (i, j) of the g x g grid attends only to the s x s patches under it (s = G/g).
    """

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """queries (B, g*g, d); keys, values (s*s, B*g*g, d), the patches under each query in window-position order
        (`order_by_window_position`) -> (B, g*g, d)."""
        batch, num_queries, width = queries.shape
        point_queries = self.query(queries).reshape(batch * num_queries, 1, width)
        attended = F.scaled_dot_product_attention(
            split_heads(point_queries, self.num_heads),
            window_heads(self.key(keys), self.num_heads),
            window_heads(self.value(values), self.num_heads),
        )
        return self.out(merge_heads(attended).reshape(batch, num_queries, width))


class OfficialDeltaProjector(nn.Module):
    """
    Patch features Z (B, G*G, C) and memory (B, L, G*G, C) -> visual tokens (B, g*g, D) for any g dividing G:

        queries: bilinear resize of Z to g x g -> Next-ViT block -> + sin-cos positions of the G x G grid resized
                 (bicubic) to g x g -> query DeltaProjection (C -> d)
        keys, values: the L levels concatenated along channels (B, G*G, L*C) -> key / value DeltaProjections (-> d)
        point-to-region attention (d / head_dim heads) -> Linear(d, D) -> act -> Linear(D, D)

    Query, key and value each have their own DeltaProjection (no base is shared between them). Object and global
    tokens (B, K, C) take their own DeltaProjection role (C -> d) and the same output MLP.
    """

    def __init__(self, config: DeltaLlavaConfig):
        super().__init__()
        vision_width = config.vision_config.hidden_size
        width = config.projector_hidden_size
        memory_width = len(config.memory_layers) * vision_width
        act = config.projector_hidden_act

        def delta_projection(in_features: int) -> NormalizedDeltaProjection:
            return NormalizedDeltaProjection(in_features, width, config.delta_rank, act, config.use_delta_projection)

        self.query_block = (
            NextViTTransformerBlock(
                vision_width,
                ntb_channel_split(vision_width, config.ntb_head_dim)[0],
                config.ntb_head_dim,
                config.drop_path_rate,
                activation="relu",
                use_emhsa=config.use_emhsa,
            )
            if config.use_transformer_block
            else None
        )
        self.query_projection = delta_projection(vision_width)
        self.key_projection = delta_projection(memory_width)
        self.value_projection = delta_projection(memory_width)
        self.extra_projections = nn.ModuleDict(
            {role: delta_projection(vision_width) for role, used in
             (("object", config.use_object_tokens), ("global", config.use_global_token)) if used}
        )
        self.cross_attention = PointToRegionAttention(width, width // config.projector_head_dim)
        text_width = config.text_config.hidden_size
        self.output_mlp = nn.Sequential(nn.Linear(width, text_width), ACT2FN[act], nn.Linear(text_width, text_width))

    def forward(self, patch_features: torch.Tensor, memory: torch.Tensor, query_side: int) -> torch.Tensor:
        """patch_features (B, G*G, C), memory (B, L, G*G, C) -> (B, query_side**2, D)."""
        dtype = self.output_mlp[0].weight.dtype  # the tower may run in another dtype
        patch_features, memory = patch_features.to(dtype), memory.to(dtype)
        queries = resize_tokens(patch_features, query_side, mode="bilinear")
        if self.query_block is not None:
            queries = self.query_block(queries)
        queries = queries + self.query_positions(math.isqrt(patch_features.shape[1]), query_side, queries)
        stacked = order_by_window_position(memory, query_side, levels_as_channels=True)  # (s*s, B*g*g, L*C)
        tokens = self.cross_attention(
            self.query_projection(queries), self.key_projection(stacked), self.value_projection(stacked)
        )
        return self.output_mlp(tokens)

    @staticmethod
    def query_positions(grid: int, query_side: int, like: torch.Tensor) -> torch.Tensor:
        """(g*g, C): the G x G sin-cos table (columns first), bicubic-resized to g x g in float32."""
        table = sincos_position_embedding(grid, like.shape[-1], like.device, torch.float32, columns_first=True)
        return resize_tokens(table.unsqueeze(0), query_side, mode="bicubic")[0].to(like.dtype)

    def project_extra_tokens(self, tokens: torch.Tensor, role: str) -> torch.Tensor:
        """Object or global tokens (B, K, C) -> (B, K, D) through their own DeltaProjection and the output MLP."""
        return self.output_mlp(self.extra_projections[role](tokens.to(self.output_mlp[0].weight.dtype)))
