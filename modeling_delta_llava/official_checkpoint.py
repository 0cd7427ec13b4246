"""Convert a checkpoint trained with the authors' code (GitHub `mzamini92/Delta-LLaVA`) into a Delta-LLaVA folder.

    delta-llava-convert-official --checkpoint path/to/llava-v1.5-7b-delta --output_dir delta-llava-7b-144 \
        [--vision_tower openai/clip-vit-large-patch14-336]
    delta-llava-convert-official --stage1_projector path/to/mm_projector.bin --scale_factor 2 \
        --language_model lmsys/vicuna-7b-v1.5 --vision_tower openai/clip-vit-large-patch14-336 --output_dir out

A stage-2 folder is LLaVA's `LlavaLlamaForCausalLM` format: `config.json` (`model_type` `llava_llama`, the authors'
`mm_projector_type`, `scale_factor`, `mm_vision_tower`, ...), safetensors or `.bin` shards holding
`model.mm_projector.*`, `model.layers.*`, `model.embed_tokens.weight`, `model.norm.weight`, `lm_head.weight`, and
its tokenizer. A stage-1 output is `mm_projector.bin` (the projector alone) beside the base LLM and the tower.
The result is written whole or not at all: it is built in a temporary folder beside `--output_dir` and renamed.
"""

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoImageProcessor, AutoModelForCausalLM, CLIPVisionModel, LlamaConfig

from .configuration_delta_llava import DeltaLlavaConfig, default_memory_layers, patch_grid_size
from .conversion import IMAGE_TOKEN, tokenizer_with_image_token
from .modeling_delta_llava import DeltaLlavaForConditionalGeneration
from .official_weights import convert_official_projector_weights
from .processing import DeltaLlavaProcessor
from .processing.processing_delta_llava import VICUNA_V1_CHAT_TEMPLATE

# How the authors' scripts spell the projector type (`--mm_projector_type delatallava`); their builder builds the
# Delta projector whatever the field says, so any of these means it.
OFFICIAL_PROJECTOR_TYPES = ("delatallava", "deltallava", "delta_llava")
VOCAB_MULTIPLE = 64  # llava-hf pads the resized vocabulary to a multiple of 64 (32064 for Vicuna)
LANGUAGE_MODEL_PREFIX = "model."
VISION_TOWER_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_projector."


def normalized_projector_type(name: str) -> str:
    """Lower-case letters and digits only, so `delta_llava`, `Delta-LLaVA` and `deltallava` compare equal."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def read_official_config(folder: Path) -> dict:
    """The LLaVA `config.json` of an official checkpoint, checked for what the conversion relies on."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass the folder the authors' training wrote (config.json + weights).")
    config = json.loads(path.read_text())
    projector_type = str(config.get("mm_projector_type", ""))
    if normalized_projector_type(projector_type) not in map(normalized_projector_type, OFFICIAL_PROJECTOR_TYPES):
        raise ValueError(
            f"{path}: mm_projector_type={projector_type!r} is not the authors' Delta-LLaVA projector (spelled "
            f"{list(OFFICIAL_PROJECTOR_TYPES)}). A LLaVA-1.5 MLP checkpoint converts with "
            "`delta_llava.convert_llava_to_delta_llava` from its llava-hf form."
        )
    for key in ("scale_factor", "mm_vision_tower"):
        if key not in config:
            raise ValueError(f"{path} has no {key!r}: it was not written by the authors' Delta-LLaVA training.")
    feature = config.get("mm_vision_select_feature", "patch")
    if feature != "patch":
        raise ValueError(f"{path}: mm_vision_select_feature={feature!r}; the authors' projector reads patches only ('patch').")
    return config


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors files, or else of its `.bin` files (read with weights_only=True)."""
    files = sorted(folder.glob("*.safetensors"))
    loader = load_file
    if not files:
        files = sorted(path for path in folder.glob("*.bin") if path.name != "training_args.bin")
        loader = lambda path: torch.load(path, map_location="cpu", weights_only=True)  # noqa: E731
    if not files:
        raise FileNotFoundError(f"{folder} holds no *.safetensors or *.bin weights.")
    state = {}
    for path in files:
        state.update(loader(path))
    return state


def text_config_from_llava(config: dict) -> LlamaConfig:
    """The Llama config inside a `llava_llama` config.json (the LLaVA-only keys dropped)."""
    llama_keys = set(LlamaConfig().to_dict())
    return LlamaConfig(**{key: value for key, value in config.items() if key in llama_keys and key != "model_type"})


def vision_config_of(vision_tower: str):
    config = AutoConfig.from_pretrained(vision_tower)
    return getattr(config, "vision_config", config)  # CLIPConfig -> CLIPVisionConfig


def query_side_for(scale_factor: int, grid: int) -> int:
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, int) or scale_factor < 1 or grid % scale_factor:
        raise ValueError(
            f"scale_factor={scale_factor!r} does not divide the tower's {grid}x{grid} patch grid; the authors' budget is "
            f"(grid / scale_factor)^2, so it must be one of {[s for s in range(1, grid + 1) if grid % s == 0]}."
        )
    return grid // scale_factor


def projector_widths(converted: dict[str, torch.Tensor], vision_width: int, memory_levels: int) -> dict:
    """Projector fields read off the converted authors' weights (their module hard-codes CLIP-L's widths; a checkpoint
    says what it was trained with): width d, rank, the Next-ViT head width; cross-attention heads stay the authors' 8."""
    query_base = converted["query_projection.base.weight"]
    key_base = converted["key_projection.base.weight"]
    if query_base.shape[1] != vision_width or key_base.shape[1] != memory_levels * vision_width:
        raise ValueError(
            f"The projector reads {query_base.shape[1]} query and {key_base.shape[1]} key channels, but the vision "
            f"tower is {vision_width} wide with {memory_levels} memory levels ({memory_levels * vision_width} channels). "
            "Pass the vision tower the checkpoint was trained with (--vision_tower)."
        )
    width = query_base.shape[0]
    return {
        "projector_hidden_size": width,
        "delta_rank": converted["query_projection.update.down"].shape[0],
        "projector_head_dim": width // 8,
        "ntb_head_dim": converted["query_block.conv_attention.grouped_conv.weight"].shape[1],
    }


def resize_embeddings_like_llava_hf(model: DeltaLlavaForConditionalGeneration, vocab_size: int) -> None:
    """Grow the token embeddings and the LM head to `vocab_size` rounded up to a multiple of 64; new rows are the
    mean of the old ones (their values never matter for `<image>`, whose positions hold image features)."""
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(vocab_size, pad_to_multiple_of=VOCAB_MULTIPLE, mean_resizing=False)
    with torch.no_grad():
        for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            matrix[old:] = matrix[:old].mean(dim=0)


def build_model(
    text_config, vision_tower: str, image_token_id: int, scale_factor: int, select_layer: int, projector_state: dict
) -> DeltaLlavaForConditionalGeneration:
    converted = convert_official_projector_weights(projector_state)  # refuses missing or unknown tensors first
    vision_config = vision_config_of(vision_tower)
    grid = patch_grid_size(vision_config)
    memory_layers = default_memory_layers(vision_config.num_hidden_layers)
    config = DeltaLlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=image_token_id,
        projector_type="delta",
        delta_layout="official",
        num_visual_tokens=query_side_for(scale_factor, grid) ** 2,
        vision_feature_layer=select_layer,
        memory_layers=memory_layers,
        **projector_widths(converted, vision_config.hidden_size, len(memory_layers)),
    )
    model = DeltaLlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(CLIPVisionModel.from_pretrained(vision_tower).state_dict())
    model.model.multi_modal_projector.load_state_dict(converted, strict=True)
    return model


def load_language_model(model: DeltaLlavaForConditionalGeneration, state: dict[str, torch.Tensor], source: str) -> None:
    """Copies `model.layers.*`, `model.embed_tokens.weight`, `model.norm.weight` and `lm_head.weight` (LLaVA names)."""
    language_state = {
        name[len(LANGUAGE_MODEL_PREFIX):]: tensor
        for name, tensor in state.items()
        if name.startswith(LANGUAGE_MODEL_PREFIX)
        and not name.startswith((PROJECTOR_PREFIX, VISION_TOWER_PREFIX))
        and not name.endswith("rotary_emb.inv_freq")  # a buffer older transformers versions saved
    }
    missing, unexpected = model.model.language_model.load_state_dict(language_state, strict=False)
    if "lm_head.weight" in state:
        model.lm_head.load_state_dict({"weight": state["lm_head.weight"]})
    elif not model.config.tie_word_embeddings:
        missing.append("lm_head.weight")
    if missing or unexpected:
        raise ValueError(
            f"{source}: the language model weights do not fit a {model.config.text_config.model_type} model: missing "
            f"{sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}."
        )


def write_folder(model, processor, output_dir: Path) -> Path:
    """Writes model and processor to a temporary folder beside `output_dir`, then renames it: never half a folder."""
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} already exists; pass a new --output_dir (nothing was written).")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def convert_official_checkpoint(
    output_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    stage1_projector: str | os.PathLike | None = None,
    language_model: str | None = None,
    vision_tower: str | None = None,
    scale_factor: int | None = None,
) -> Path:
    """
    Writes a Delta-LLaVA folder (official layout) from the authors' stage-2 `checkpoint` folder, or from a stage-1
    `stage1_projector` (`mm_projector.bin`) plus its `language_model`. `vision_tower` overrides the tower id stored
    in `config.json` (e.g. a local copy); `scale_factor` overrides or, for a bare `mm_projector.bin`, supplies the
    budget (grid / scale_factor)^2. Returns the output folder.
    """
    if (checkpoint is None) == (stage1_projector is None):
        raise ValueError("Pass exactly one of `checkpoint` (a stage-2 folder) or `stage1_projector` (mm_projector.bin).")
    if checkpoint is not None:
        folder = Path(checkpoint)
        official = read_official_config(folder)
        state = load_state_dict(folder)
        projector_state = {name: t for name, t in state.items() if name.startswith(PROJECTOR_PREFIX)}
        text_config = text_config_from_llava(official)
        tokenizer_source = folder
    else:
        if language_model is None:
            raise ValueError("A stage-1 mm_projector.bin needs `language_model`: the base LLM it was trained on.")
        projector_path = Path(stage1_projector)
        if not projector_path.is_file():
            raise FileNotFoundError(f"{projector_path} does not exist.")
        projector_state = torch.load(projector_path, map_location="cpu", weights_only=True)
        beside = projector_path.parent / "config.json"
        official = read_official_config(projector_path.parent) if beside.is_file() else {}
        text_config = AutoConfig.from_pretrained(language_model)
        state, tokenizer_source = None, language_model
    scale_factor = scale_factor if scale_factor is not None else official.get("scale_factor")
    if scale_factor is None:
        raise ValueError("No scale_factor: pass --scale_factor (the budget is (24 / scale_factor)^2 for CLIP-L/336).")
    vision_tower = vision_tower or official.get("mm_vision_tower")
    if vision_tower is None:
        raise ValueError("No vision tower: pass --vision_tower (e.g. openai/clip-vit-large-patch14-336).")

    tokenizer = tokenizer_with_image_token(tokenizer_source)
    model = build_model(
        text_config, vision_tower, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), scale_factor,
        official.get("mm_vision_select_layer", -2), projector_state,
    )  # fmt: skip
    if state is not None:
        load_language_model(model, state, str(checkpoint))
    else:
        base = AutoModelForCausalLM.from_pretrained(language_model)
        model.model.language_model.load_state_dict(base.model.state_dict())
        model.lm_head.load_state_dict(base.lm_head.state_dict())
    resize_embeddings_like_llava_hf(model, len(tokenizer))

    image_processor = AutoImageProcessor.from_pretrained(vision_tower)
    processor = DeltaLlavaProcessor(
        image_processor,
        tokenizer,
        chat_template=VICUNA_V1_CHAT_TEMPLATE,
        num_visual_tokens=model.config.num_visual_tokens,
        mask_size=patch_grid_size(model.config.vision_config),
        pad_to_square=official.get("image_aspect_ratio") == "pad",
        allowed_visual_token_counts=model.config.allowed_visual_token_counts(),
    )
    return write_folder(model.eval(), processor, Path(output_dir))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="the authors' stage-2 output folder (config.json + weights + tokenizer)")
    source.add_argument("--stage1_projector", help="the authors' stage-1 mm_projector.bin")
    parser.add_argument("--language_model", help="base LLM of a stage-1 projector, e.g. lmsys/vicuna-7b-v1.5")
    parser.add_argument("--vision_tower", help="tower id or local folder (default: mm_vision_tower of config.json)")
    parser.add_argument("--scale_factor", type=int, help="override or supply the budget: (grid / scale_factor)^2")
    parser.add_argument("--output_dir", required=True, help="a new folder for the Delta-LLaVA checkpoint")
    args = parser.parse_args(argv)
    output = convert_official_checkpoint(
        args.output_dir, args.checkpoint, args.stage1_projector, args.language_model, args.vision_tower, args.scale_factor
    )
    config = DeltaLlavaConfig.from_pretrained(output)
    print(f"Wrote {output}: delta_layout='official', {config.num_visual_tokens} visual tokens by default.")


if __name__ == "__main__":
    main()
