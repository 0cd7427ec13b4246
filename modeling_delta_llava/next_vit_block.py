"""The authors' query-refinement block: one Next-ViT transformer block (NTB) on the interpolated query grid."""

import torch
from torch import nn

from .projector_layers import EfficientSelfAttention, FeedForward, MultiHeadConvAttention

# The authors' fixed choices: 3/4 of the channels through self-attention, the MLP twice as wide as the block.
MLP_RATIO = 2
ATTENTION_SHARE = 0.75


class NextViTTransformerBlock(nn.Module):
    """
    (B, g*g, C) -> (B, g*g, C), as Next-ViT's NTB with LayerNorms instead of BatchNorms:

        x = reduce(x)                              C -> Ca (about 3/4 C), a 1x1 conv without bias
        x = x + DropPath(E-MHSA(LN(x)))            E-MHSA normalises again, every token attends to every token
        local = split(x)                           Ca -> Cb = C - Ca, a 1x1 conv without bias
        local = local + DropPath(MHCA(local))
        x = concat(x, local)                       back to C channels
        x = x + DropPath(conv-MLP(x))              1x1 convs C -> 2C -> C with ReLU

    `use_emhsa=False` drops the E-MHSA residual (the "no EMHSA" ablation). The branches' drop-path rates are
    the block's rate times 3/4, 1/4 and 1, as in Next-ViT.
    """

    def __init__(
        self, width: int, attention_width: int, head_dim: int, drop_path: float, activation: str, use_emhsa: bool
    ):
        super().__init__()
        conv_width = width - attention_width
        self.reduce = nn.Linear(width, attention_width, bias=False)
        self.self_attention = (
            EfficientSelfAttention(
                attention_width,
                attention_width // head_dim,
                spatial_reduction=1,
                drop_path=drop_path * ATTENTION_SHARE,
                double_norm=True,
            )
            if use_emhsa
            else None
        )
        self.split = nn.Linear(attention_width, conv_width, bias=False)
        self.conv_attention = MultiHeadConvAttention(
            conv_width, conv_width // head_dim, input_norm=False, bias=False, drop_path=drop_path * (1 - ATTENTION_SHARE)
        )
        self.mlp = FeedForward(width, MLP_RATIO * width, activation, pre_norm=False, drop_path=drop_path)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.reduce(tokens)
        if self.self_attention is not None:
            tokens = self.self_attention(tokens)
        local = self.conv_attention(self.split(tokens))
        return self.mlp(torch.cat([tokens, local], dim=-1))
