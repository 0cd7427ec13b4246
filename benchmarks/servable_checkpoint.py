"""A Delta-LLaVA checkpoint folder with random weights that vLLM can serve: model, processor, tokenizer, remote code.

The serving test and `serve_vllm.py` build theirs here. vLLM's CPU attention takes head sizes 32, 64, 80, ... only,
so the language models below have heads of 32 channels; the vision tower runs through transformers and has no limit.
"""

from pathlib import Path

import torch
from transformers import CLIPImageProcessor

from delta_llava import DeltaLlavaConfig, DeltaLlavaForConditionalGeneration
from delta_llava.training.local_tokenizer import build_word_level_tokenizer
from delta_llava.training.model_builder import build_processor

# The words a prompt may use; anything else tokenizes to <unk>.
WORDS = (
    "what is in the picture describe this image how many shapes are there which colour is the object on left right "
    "top bottom a red green blue circle square triangle one two three yes no"
).split()

SERVING_HEAD_DIM = 32


def serving_text_config(hidden_size: int = 64, num_hidden_layers: int = 2, intermediate_size: int = 128) -> dict:
    """A Llama whose heads have 32 channels (the smallest head size vLLM's CPU backend serves)."""
    heads = hidden_size // SERVING_HEAD_DIM
    return {
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 4096,
        "initializer_range": 0.2,  # random logits far apart: greedy ids do not hang on rounding between engines
    }


def write_random_checkpoint(folder: str | Path, seed: int = 0, vocabulary_size: int | None = None, **config_fields) -> Path:
    """
    Builds a word-level tokenizer (padded with filler words up to `vocabulary_size`, so that a benchmark's
    lm_head has a real model's width and every id it generates decodes), a `DeltaLlavaConfig(**config_fields)` whose
    vocabulary and `<image>` id follow it, random weights from `seed`, and the processor (budgets the model allows,
    the tower's image size); saves all of it with the remote code into `folder` and returns the folder.
    """
    tokenizer = build_word_level_tokenizer(WORDS)
    if vocabulary_size is not None and vocabulary_size > len(tokenizer):
        tokenizer = build_word_level_tokenizer([*WORDS, *(f"w{index}" for index in range(vocabulary_size - len(tokenizer)))])
    text_config = {
        **config_fields.pop("text_config", serving_text_config()),
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = DeltaLlavaConfig(text_config=text_config, image_token_id=tokenizer.image_token_id, **config_fields)
    torch.manual_seed(seed)
    model = DeltaLlavaForConditionalGeneration(config).eval()
    side = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    folder = Path(folder)
    model.save_pretrained(folder)
    build_processor(image_processor, tokenizer, config).save_pretrained(folder)
    return folder
