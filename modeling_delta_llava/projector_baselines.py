"""Baseline projectors with the Delta projector's interface, so every claim is measured against them in one run."""

import torch
from torch import nn
from transformers.activations import ACT2FN

from .configuration_delta_llava import DeltaLlavaConfig
from .projector_layers import resize_tokens
from .windowed_cross_attention import WindowedCrossAttention


class MlpProjector(nn.Module):
    """LLaVA-1.5's `mlp2x_gelu`: Linear -> GELU -> Linear on every patch; names match `llava-hf` checkpoints."""

    def __init__(self, config: DeltaLlavaConfig):
        super().__init__()
        text_width = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size, text_width)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(text_width, text_width)

    def forward(self, patch_features: torch.Tensor, memory: torch.Tensor | None, query_side: int) -> torch.Tensor:
        """(B, G*G, C) -> (B, G*G, D); the budget is always the full grid."""
        return self.project_extra_tokens(patch_features, "query")

    def project_extra_tokens(self, tokens: torch.Tensor, role: str) -> torch.Tensor:
        """(B, K, C) -> (B, K, D): every token type goes through the same MLP."""
        return self.linear_2(self.act(self.linear_1(tokens.to(self.linear_1.weight.dtype))))


class AvgPoolProjector(MlpProjector):
    """Adaptive average pooling of the patch grid to g x g, then LLaVA's MLP."""

    def forward(self, patch_features: torch.Tensor, memory: torch.Tensor | None, query_side: int) -> torch.Tensor:
        """(B, G*G, C) -> (B, g*g, D)."""
        return self.project_extra_tokens(resize_tokens(patch_features, query_side), "query")


class TokenPackerProjector(nn.Module):
    """
    TokenPacker-style point-to-region projector: interpolated queries attend to the s x s patch region under them in
    the multi-level memory (levels concatenated along channels), then a LayerNorm and an MLP map to the LLM width.

    Two choices make it a fair baseline at small width (64 in the CPU benchmarks), where with the 0.02-std init of
    transformers it did not learn at 1-4 tokens: the LayerNorm keeps the packed tokens at the MLP baseline's scale
    (five stacked narrow linears otherwise shrink them ~150x), and the attention's output map starts at zero
    (`zero_init_output`), so training starts from the pooled query, which carries what an
    avg-pool token does; otherwise the uniform attention average over every level swamps it (a linear probe read the
    printed word from the fresh 1-token output at 0.42 vs 0.99 from the query alone).
    """

    def __init__(self, config: DeltaLlavaConfig):
        super().__init__()
        vision_width = config.vision_config.hidden_size
        width = config.projector_hidden_size
        levels = len(config.memory_layers)
        act = config.projector_hidden_act
        self.query_mlp = nn.Sequential(nn.Linear(vision_width, width), ACT2FN[act], nn.Linear(width, width))
        self.key_mlp = nn.Sequential(nn.Linear(levels * vision_width, width), ACT2FN[act], nn.Linear(width, width))
        self.value_mlp = nn.Sequential(nn.Linear(levels * vision_width, width), ACT2FN[act], nn.Linear(width, width))
        self.cross_attention = WindowedCrossAttention(
            width, width // config.projector_head_dim, window_size=1, zero_init_output=True
        )
        text_width = config.text_config.hidden_size
        self.output_norm = nn.LayerNorm(width)
        self.output_mlp = nn.Sequential(nn.Linear(width, text_width), ACT2FN[act], nn.Linear(text_width, text_width))

    def forward(self, patch_features: torch.Tensor, memory: torch.Tensor, query_side: int) -> torch.Tensor:
        """patch_features (B, G*G, C), memory (B, L, G*G, C) -> (B, g*g, D)."""
        dtype = self.output_mlp[0].weight.dtype  # the tower may run in another dtype
        patch_features, memory = patch_features.to(dtype), memory.to(dtype)
        queries = self.query_mlp(resize_tokens(patch_features, query_side))
        stacked = memory.permute(0, 2, 1, 3).flatten(2).unsqueeze(1)  # (B, 1, G*G, L*C)
        tokens = self.cross_attention(queries, self.key_mlp(stacked), self.value_mlp(stacked))
        return self.output_mlp(self.output_norm(tokens))

    def project_extra_tokens(self, tokens: torch.Tensor, role: str) -> torch.Tensor:
        """(B, K, C) -> (B, K, D) through the query MLP, the output norm and the output MLP."""
        return self.output_mlp(self.output_norm(self.query_mlp(tokens.to(self.output_mlp[0].weight.dtype))))
