"""DeltaProjection: a base matrix plus a low-rank update per role (paper eq. 4 and 8), in the two layouts.

`DeltaProjection` (shared_base) shares one base matrix between every role; `NormalizedDeltaProjection` (official)
is the authors' form: one role, its own base, GELU and LayerNorm after the product.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


class LowRankUpdate(nn.Module):
    """
    The rank-r update x -> (x V) U^T of one role. With `starts_at_zero` U (`up`) is initialised to zero, so a fresh
    role equals the base (shared_base); otherwise both factors are Xavier-uniform, as in the authors' module.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, starts_at_zero: bool = True):
        super().__init__()
        self.starts_at_zero = starts_at_zero
        self.down = nn.Parameter(torch.empty(rank, in_features))  # V^T: (r, C)
        self.up = nn.Parameter(torch.empty(out_features, rank))  # U: (d, r)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(hidden_states, self.down), self.up)

    def delta_weight(self) -> torch.Tensor:
        """The update as one (d, C) matrix, U V^T."""
        return self.up @ self.down


class DeltaProjection(nn.Module):
    """
    Maps width C to width d for several named roles (queries, each memory level's keys and values, object tokens).

    With `use_delta=True` every role is `W_s + U_role V_role^T`: the base `W_s` is a single tensor shared by all roles
    and its product is computed once per input. With `use_delta=False` (the paper's "no DeltaProjection" ablation)
    every role is an independent full linear map.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, roles: Sequence[str], use_delta: bool = True):
        super().__init__()
        self.use_delta = use_delta
        if use_delta:
            self.base = nn.Linear(in_features, out_features)
            self.updates = nn.ModuleDict({role: LowRankUpdate(in_features, out_features, rank) for role in roles})
        else:
            self.independent = nn.ModuleDict({role: nn.Linear(in_features, out_features) for role in roles})

    @property
    def roles(self) -> list[str]:
        return list(self.updates if self.use_delta else self.independent)

    def forward(self, hidden_states: torch.Tensor, roles: Sequence[str]) -> list[torch.Tensor]:
        """(..., C) -> one (..., d) tensor per role, in the order asked."""
        rows = self.project_rows(hidden_states.reshape(-1, hidden_states.shape[-1]), roles)
        return [projected.view(*hidden_states.shape[:-1], -1) for projected in rows]

    def project_rows(self, hidden_states: torch.Tensor, roles: Sequence[str]) -> list[torch.Tensor]:
        """(M, C) -> one (M, d) tensor per role; the shared base product is computed once and each role's update is
        added inside its own matmul."""
        if not self.use_delta:
            return [self.independent[role](hidden_states) for role in roles]
        shared = self.base(hidden_states)
        return [
            torch.addmm(shared, F.linear(hidden_states, self.updates[role].down), self.updates[role].up.T)
            for role in roles
        ]

    def project_levels(
        self, hidden_states: torch.Tensor, key_roles: Sequence[str], value_roles: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        hidden_states (L, M, C), the rows of L memory levels -> keys, values (L, M, d): level l's rows through
        `key_roles[l]` and `value_roles[l]`. The shared base is one product over every level, the updates are batched
        over the levels, and the values' updates are added in place to the base product (no copy of it).
        """
        if not self.use_delta:  # each level through its role's own Linear (called, never read: see BaseWeight)
            return tuple(
                torch.stack([self.independent[role](level) for role, level in zip(roles, hidden_states)])
                for roles in (key_roles, value_roles)
            )
        shared = self.base(hidden_states)
        pairs = zip(key_roles, value_roles)
        downs = torch.stack([torch.cat([self.updates[k].down, self.updates[v].down]) for k, v in pairs])  # (L, 2r, C)
        low_rank = torch.bmm(hidden_states, downs.transpose(1, 2))  # (L, M, 2r): keys' factors, then values'
        rank = downs.shape[1] // 2

        def ups(roles: Sequence[str]) -> torch.Tensor:  # (L, r, d)
            return torch.stack([self.updates[role].up for role in roles]).transpose(1, 2)

        keys = torch.baddbmm(shared, low_rank[..., :rank], ups(key_roles))
        return keys, shared.baddbmm_(low_rank[..., rank:], ups(value_roles))


class BaseWeight(nn.Module):
    """
    The (d, C) base matrix W_s of the authors' DeltaProjection, held as a plain parameter rather than an `nn.Linear`:
    the update is added to the weight itself, and serving engines (vLLM) swap every `nn.Linear` for kernels whose
    weight cannot be read back. Initialised like a Linear's weight (`DeltaLlavaPreTrainedModel._init_weights`).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))


class NormalizedDeltaProjection(nn.Module):
    """
    The authors' DeltaProjection of one role: y = LayerNorm(act(x (W_s + U V^T)^T)), W_s without bias, LayerNorm
    eps 1e-6. The update is added to the base weight before the product (one matmul over the tokens; the (d, C)
    update costs 2*d*r*C FLOPs, as in the authors' module). `use_delta=False` keeps W_s alone (the "no
    DeltaProjection" ablation: each role is then a plain linear map).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, activation: str, use_delta: bool = True):
        super().__init__()
        self.base = BaseWeight(in_features, out_features)
        self.update = LowRankUpdate(in_features, out_features, rank, starts_at_zero=False) if use_delta else None
        self.act = ACT2FN[activation]
        self.norm = nn.LayerNorm(out_features, eps=1e-6)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., d)."""
        weight = self.base.weight if self.update is None else self.base.weight + self.update.delta_weight()
        return self.norm(self.act(F.linear(hidden_states, weight)))
