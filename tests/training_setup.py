"""Tiny pretrained-looking parts for training tests: a vision tower folder, a language model folder, a dataset."""

from pathlib import Path

import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
from trl import SFTConfig

from conftest import tiny_projector_sizes
from delta_llava.training.arguments import DeltaLlavaDataArguments, DeltaLlavaModelArguments
from delta_llava.training.local_tokenizer import build_word_level_tokenizer
from delta_llava.training.synthetic_vqa import make_synthetic_vqa, word_vocabulary

IMAGE_SIZE = 32  # patch 4 -> an 8x8 patch grid: budgets 64, 16, 4, 1


def write_tiny_parts(root: Path, num_samples: int = 16) -> dict[str, str]:
    """Saves a tiny CLIP tower (+ image processor), a tiny Llama (+ word-level tokenizer) and a synthetic dataset."""
    torch.manual_seed(0)
    tower_dir, lm_dir, data_dir = root / "tower", root / "lm", root / "data"
    CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=4
        )
    ).save_pretrained(tower_dir)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(tower_dir)
    tokenizer = build_word_level_tokenizer(word_vocabulary(3))
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).save_pretrained(lm_dir)
    tokenizer.save_pretrained(lm_dir)
    dataset = make_synthetic_vqa(num_samples, seed=0, image_size=IMAGE_SIZE, question_types=["attribute", "existence"])
    dataset.save_to_disk(str(data_dir))
    return {"vision_tower": str(tower_dir), "language_model": str(lm_dir), "dataset_path": str(data_dir)}


def model_arguments(parts: dict[str, str], **overrides) -> DeltaLlavaModelArguments:
    settings = {
        "vision_tower": parts["vision_tower"],
        "language_model": parts["language_model"],
        "num_visual_tokens": 16,
        **tiny_projector_sizes(overrides.get("projector_type", "delta"), overrides.get("delta_layout") or "official"),
    }
    settings.update(overrides)
    return DeltaLlavaModelArguments(**settings)


def data_arguments(parts: dict[str, str], **overrides) -> DeltaLlavaDataArguments:
    return DeltaLlavaDataArguments(dataset_path=parts["dataset_path"], **overrides)


def sft_config(output_dir: Path, **overrides) -> SFTConfig:
    settings = {
        "output_dir": str(output_dir),
        "max_steps": 8,
        "per_device_train_batch_size": 4,
        "learning_rate": 3e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "activation_checkpointing": False,
        "max_length": None,
        "use_cpu": True,
        "bf16": False,
        "seed": 0,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    settings.update(overrides)
    return SFTConfig(**settings)
