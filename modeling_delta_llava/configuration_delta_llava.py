"""Configuration of Delta-LLaVA: a vision tower, a causal language model and a token-efficient projector between them."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


PROJECTOR_TYPES = ("delta", "mlp2x_gelu", "tokenpacker", "avgpool")

# Files of a saved checkpoint that hold these classes (the checkpoint folder is flat, so module names are file names).
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_delta_llava.DeltaLlavaConfig",
    "AutoModel": "modeling_delta_llava.DeltaLlavaModel",
    "AutoModelForImageTextToText": "modeling_delta_llava.DeltaLlavaForConditionalGeneration",
}


def patch_grid_size(vision_config: PreTrainedConfig) -> int:
    """Side of the square patch grid the vision tower produces (24 for CLIP ViT-L/14 at 336 px)."""
    image_size, patch_size = vision_config.image_size, vision_config.patch_size
    if image_size % patch_size:
        raise ValueError(
            f"vision_config.image_size={image_size} is not a multiple of vision_config.patch_size={patch_size}; "
            "use a vision tower whose patch grid is whole."
        )
    return image_size // patch_size


def allowed_visual_token_counts(grid_size: int, projector_type: str = "delta") -> list[int]:
    """Budgets g*g with g dividing `grid_size`, largest first ([576, 144, 64, 36, 16, 9, 4, 1] for a 24 grid)."""
    if projector_type == "mlp2x_gelu":
        return [grid_size * grid_size]
    return [(grid_size // step) ** 2 for step in range(1, grid_size + 1) if grid_size % step == 0]


def default_memory_layers(num_hidden_layers: int) -> list[int]:
    """Hidden-state indices of the multi-level memory: TokenPacker's 12, 16, 22, 23 of 24, scaled to other depths."""
    n = num_hidden_layers
    return sorted({max(1, index) for index in (n // 2, (2 * n) // 3, n - 2, n - 1)})


class DeltaLlavaConfig(PreTrainedConfig):
    r"""
    Configuration of [`DeltaLlavaForConditionalGeneration`].

    Args:
        vision_config (`dict` or `PreTrainedConfig`): any transformers vision tower (CLIP, SigLIP, ...).
        text_config (`dict` or `PreTrainedConfig`): any causal language model (Llama/Vicuna, Qwen2, ...).
        image_token_id (`int`): id of the `<image>` placeholder token.
        projector_type (`str`): `"delta"`, `"mlp2x_gelu"` (LLaVA-1.5), `"tokenpacker"` or `"avgpool"`.
        num_visual_tokens (`int`): default budget V = g*g per image; every call can override it.
        vision_feature_layer (`int`): hidden-state index of the patch features (-2: second to last layer).
        memory_layers (`list[int]`): hidden-state indices of the multi-level memory; scaled from the tower depth
            when `None` (12, 16, 22, 23 for a 24-layer tower).
        projector_hidden_size (`int`): width d of the projector's attention stages.
        delta_rank (`int`): rank r of each role's update to the shared base matrix. 64 keeps the updates at 1/16
            of the base's parameters for C = d = 1024, while leaving each role room to specialise.
        window_size (`int`): side w of the query windows of the cross-attention (1 = point-to-region).
        ffn_hidden_size (`int`): hidden width of the final FFN refinement (4096 in the paper).
        projector_head_dim (`int`): channels per attention head in the projector (heads = width / head_dim).
        spatial_reduction (`int`): key/value pooling ratio sr of the efficient self-attention, used when g >= 2*sr.
        use_emhsa / use_delta_projection / use_transformer_block (`bool`): ablation switches (paper table 3).
        use_object_tokens (`bool`), max_object_tokens (`int`), use_global_token (`bool`): Mask-LLaVA tokens.
        projector_hidden_act (`str`): activation of the MLPs in the projectors.
    """

    model_type = "delta_llava"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 336,
                "projection_dim": 768,
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    projector_type: str = "delta"
    num_visual_tokens: int = 144
    vision_feature_layer: int = -2
    memory_layers: list[int] | None = None
    projector_hidden_size: int = 1024
    delta_rank: int = 64
    window_size: int = 1
    ffn_hidden_size: int = 4096
    projector_head_dim: int = 64
    spatial_reduction: int = 2
    use_emhsa: bool = True
    use_delta_projection: bool = True
    use_transformer_block: bool = True
    use_object_tokens: bool = False
    max_object_tokens: int = 8
    use_global_token: bool = False
    projector_hidden_act: str = "gelu"
    tie_word_embeddings: bool = False
    auto_map: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        if self.memory_layers is None:
            self.memory_layers = default_memory_layers(self.vision_config.num_hidden_layers)
        if self.auto_map is None:
            self.auto_map = dict(REMOTE_CODE_AUTO_MAP)
        self.validate_projector_settings()

    @property
    def patch_grid_size(self) -> int:
        return patch_grid_size(self.vision_config)

    def allowed_visual_token_counts(self) -> list[int]:
        return allowed_visual_token_counts(self.patch_grid_size, self.projector_type)

    def check_num_visual_tokens(self, num_visual_tokens: int, field: str = "num_visual_tokens") -> int:
        """Returns the query grid side g for a budget, or raises a ValueError listing the budgets that work."""
        allowed = self.allowed_visual_token_counts()
        if isinstance(num_visual_tokens, bool) or not isinstance(num_visual_tokens, int) or num_visual_tokens not in allowed:
            grid = self.patch_grid_size
            reason = (
                "the mlp2x_gelu projector keeps every patch"
                if self.projector_type == "mlp2x_gelu"
                else f"a budget is g*g with g dividing the {grid}x{grid} patch grid"
            )
            raise ValueError(f"{field}={num_visual_tokens!r} is not possible: {reason}. Allowed values: {allowed}.")
        return int(round(num_visual_tokens**0.5))

    def validate_projector_settings(self) -> None:
        """Raises a ValueError naming the field and the allowed values for any impossible setting."""
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type={self.projector_type!r} is unknown. Allowed values: {list(PROJECTOR_TYPES)}.")
        self.check_num_visual_tokens(self.num_visual_tokens)
        depth = self.vision_config.num_hidden_layers
        for field, layers in (("vision_feature_layer", [self.vision_feature_layer]), ("memory_layers", self.memory_layers)):
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or not -depth - 1 <= i <= depth for i in layers):
                raise ValueError(
                    f"{field}={layers if field == 'memory_layers' else layers[0]!r} must be hidden-state indices "
                    f"of the {depth}-layer vision tower: integers in [{-depth - 1}, {depth}]."
                )
        positive = {
            "projector_hidden_size": self.projector_hidden_size,
            "delta_rank": self.delta_rank,
            "window_size": self.window_size,
            "ffn_hidden_size": self.ffn_hidden_size,
            "projector_head_dim": self.projector_head_dim,
            "spatial_reduction": self.spatial_reduction,
        }
        for field, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field}={value!r} must be a positive integer.")
        if isinstance(self.max_object_tokens, bool) or not isinstance(self.max_object_tokens, int) or self.max_object_tokens < 0:
            raise ValueError(f"max_object_tokens={self.max_object_tokens!r} must be an integer >= 0 (0 turns them off).")
        if self.projector_type != "delta":
            return
        vision_width = self.vision_config.hidden_size
        max_rank = min(vision_width, self.projector_hidden_size)
        if self.delta_rank > max_rank:
            raise ValueError(
                f"delta_rank={self.delta_rank} is larger than the widths it updates (vision width {vision_width}, "
                f"projector_hidden_size {self.projector_hidden_size}). Allowed values: 1 to {max_rank}."
            )
        for field, width in (("vision_config.hidden_size", vision_width), ("projector_hidden_size", self.projector_hidden_size)):
            if width % self.projector_head_dim or width % 4:
                raise ValueError(
                    f"{field}={width} must be divisible by projector_head_dim={self.projector_head_dim} (attention "
                    "heads) and by 4 (2-D sine-cosine positions). Pick a projector_head_dim that divides it."
                )


__all__ = ["DeltaLlavaConfig"]
