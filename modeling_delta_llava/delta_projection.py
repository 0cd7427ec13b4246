"""DeltaProjection: one shared base matrix plus a low-rank update per role (paper eq. 4 and 8)."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class LowRankUpdate(nn.Module):
    """The rank-r update x -> (x V) U^T of one role; U (`up`) starts at zero so a fresh role equals the base."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))  # V^T: (r, C)
        self.up = nn.Parameter(torch.empty(out_features, rank))  # U: (d, r)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(hidden_states, self.down), self.up)


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
        if not self.use_delta:
            return [self.independent[role](hidden_states) for role in roles]
        shared = self.base(hidden_states)
        return [shared + self.updates[role](hidden_states) for role in roles]
