"""Start a Delta-LLaVA from a transformers LLaVA-1.5 checkpoint (e.g. `llava-hf/llava-1.5-7b-hf`)."""

import os

import torch
from transformers import AutoTokenizer, LlavaForConditionalGeneration

from .configuration_delta_llava import DeltaLlavaConfig
from .modeling_delta_llava import DeltaLlavaForConditionalGeneration

PROJECTOR_PREFIX = "model.multi_modal_projector."
IMAGE_TOKEN = "<image>"


def tokenizer_with_image_token(name_or_path: str | os.PathLike):
    """A LLaVA-family tokenizer with `<image>` added as a special token, padding with unk as LLaVA does."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def delta_llava_config_from_llava(llava_config, projector_type: str = "mlp2x_gelu", **overrides) -> DeltaLlavaConfig:
    """The DeltaLlavaConfig with LLaVA's towers, image token and feature layer; `overrides` set projector fields."""
    if not isinstance(llava_config.vision_feature_layer, int):
        raise ValueError(
            f"vision_feature_layer={llava_config.vision_feature_layer!r}: Delta-LLaVA reads one feature layer; convert "
            "a LLaVA checkpoint that uses a single layer (LLaVA-1.5 uses -2)."
        )
    if llava_config.vision_feature_select_strategy != "default":
        raise ValueError(
            "vision_feature_select_strategy='full' keeps the CLS token among the image tokens, which Delta-LLaVA does "
            "not do; only LLaVA checkpoints with the 'default' strategy (LLaVA-1.5) convert exactly."
        )
    if not llava_config.multimodal_projector_bias:
        raise ValueError("multimodal_projector_bias=False is not supported: the mlp2x_gelu projector has biases.")
    settings = {
        "vision_config": llava_config.vision_config.to_dict(),
        "text_config": llava_config.text_config.to_dict(),
        "image_token_id": llava_config.image_token_id,
        "vision_feature_layer": llava_config.vision_feature_layer,
        "projector_hidden_act": llava_config.projector_hidden_act,
        "tie_word_embeddings": llava_config.tie_word_embeddings,
        "projector_type": projector_type,
    }
    if projector_type == "mlp2x_gelu":
        vision = llava_config.vision_config
        settings["num_visual_tokens"] = (vision.image_size // vision.patch_size) ** 2
    settings.update(overrides)
    return DeltaLlavaConfig(**settings)


def convert_llava_to_delta_llava(
    llava: LlavaForConditionalGeneration | str | os.PathLike,
    projector_type: str = "mlp2x_gelu",
    dtype: torch.dtype | None = None,
    **projector_overrides,
) -> DeltaLlavaForConditionalGeneration:
    """
    Copies the vision tower, language model and head of a LLaVA model (or its saved folder / Hub id) into a
    DeltaLlavaForConditionalGeneration. With `projector_type="mlp2x_gelu"` the projector is copied too and the logits
    equal LLaVA's; with any other type the projector starts fresh, the way a user starts from LLaVA-1.5.
    The copy briefly holds both models in memory.
    """
    if not isinstance(llava, LlavaForConditionalGeneration):
        llava = LlavaForConditionalGeneration.from_pretrained(llava, dtype=dtype)
    config = delta_llava_config_from_llava(llava.config, projector_type, **projector_overrides)
    model = DeltaLlavaForConditionalGeneration(config).to(dtype or llava.dtype)
    state = llava.state_dict()
    if projector_type != "mlp2x_gelu":
        state = {name: tensor for name, tensor in state.items() if not name.startswith(PROJECTOR_PREFIX)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = [name for name in missing if not name.startswith(PROJECTOR_PREFIX) and name not in tied]
    if missing or unexpected:
        raise ValueError(
            f"The LLaVA checkpoint does not match Delta-LLaVA's layout: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. Load it with a transformers version that knows LlavaForConditionalGeneration's layout."
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.eval() if not llava.training else model
