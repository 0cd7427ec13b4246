"""FLOPs of one image + prompt at a visual token budget, counted on the meta device (no weights are allocated).

The model parts are built from a checkpoint's own config on the meta device and run under a `FakeTensorMode`, so a
7B model costs a few seconds and no memory. torch's `FlopCounterMode` counts a multiply-add as 2 FLOPs.
"""

from dataclasses import dataclass
from functools import cached_property

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModel

from delta_llava import DeltaLlavaConfig
from delta_llava.modeling_delta_llava import build_projector
from delta_llava.projector_baselines import MlpProjector

DEFAULT_TEXT_TOKENS = 64


@dataclass(frozen=True)
class InferenceFlops:
    """FLOPs of the vision tower, the projector and the language model's prefill for one image."""

    num_visual_tokens: int
    vision: int
    projector: int
    prefill: int

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.prefill


class InferenceCost:
    """Counts FLOPs of `config`'s model at any budget, and of LLaVA-1.5's MLP projector on every patch.

    The prefill runs the language model on `text_tokens` text tokens plus the visual tokens (plus the global token
    when the config uses one). Object tokens depend on the image's masks and are left out; decoding is left out too
    (its cost hardly depends on the budget).
    """

    def __init__(self, config: DeltaLlavaConfig, text_tokens: int = DEFAULT_TEXT_TOKENS):
        self.config = config
        self.text_tokens = text_tokens
        grid = config.patch_grid_size
        self.num_patches = grid * grid
        with torch.device("meta"):
            self.vision_tower = AutoModel.from_config(config.vision_config)
            self.language_model = AutoModel.from_config(config.text_config)
            self.baseline_projector = MlpProjector(config)
            self.projector = build_projector(config)
        self.vision_flops = self._count(self._run_vision_tower)

    def at_budget(self, num_visual_tokens: int) -> InferenceFlops:
        """Cost of this checkpoint's projector at `num_visual_tokens` (validated against the config)."""
        query_side = self.config.check_num_visual_tokens(num_visual_tokens)
        extra = 1 if self.config.use_global_token else 0
        return InferenceFlops(
            num_visual_tokens=num_visual_tokens,
            vision=self.vision_flops,
            projector=self._count(self._run_projector, self.projector, query_side),
            prefill=self._count(self._run_prefill, num_visual_tokens + extra),
        )

    @cached_property
    def mlp_baseline(self) -> InferenceFlops:
        """Cost of the same towers with LLaVA-1.5's `mlp2x_gelu` projector keeping every patch (576 for CLIP-L/336)."""
        return InferenceFlops(
            num_visual_tokens=self.num_patches,
            vision=self.vision_flops,
            projector=self._count(self._run_projector, self.baseline_projector, self.config.patch_grid_size),
            prefill=self._count(self._run_prefill, self.num_patches),
        )

    @staticmethod
    def _count(function, *args) -> int:
        # FakeTensorMode lets transformers skip data-dependent checks (mask shortcuts) that meta tensors cannot answer.
        with FakeTensorMode(allow_non_fake_inputs=True), FlopCounterMode(display=False) as counter:
            function(*args)
        return counter.get_total_flops()

    def _run_vision_tower(self) -> None:
        side = self.config.vision_config.image_size
        channels = getattr(self.config.vision_config, "num_channels", 3)
        self.vision_tower(torch.empty(1, channels, side, side, device="meta"), output_hidden_states=True)

    def _run_projector(self, projector: torch.nn.Module, query_side: int) -> None:
        width = self.config.vision_config.hidden_size
        patches = torch.empty(1, self.num_patches, width, device="meta")
        memory = torch.empty(1, len(self.config.memory_layers), self.num_patches, width, device="meta")
        projector(patches, memory, query_side)

    def _run_prefill(self, num_visual_tokens: int) -> None:
        length = self.text_tokens + num_visual_tokens
        embeddings = torch.empty(1, length, self.config.text_config.hidden_size, device="meta")
        self.language_model(inputs_embeds=embeddings, use_cache=False)


def format_flops(flops: int) -> str:
    """Human-readable FLOPs: '381.9 GFLOPs', '8.50 TFLOPs'."""
    for unit, scale in (("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6), ("KFLOPs", 1e3)):
        if flops >= scale:
            value = flops / scale
            return f"{value:.2f} {unit}" if value < 100 else f"{value:.1f} {unit}"
    return f"{flops} FLOPs"


__all__ = ["InferenceCost", "InferenceFlops", "format_flops", "DEFAULT_TEXT_TOKENS"]
