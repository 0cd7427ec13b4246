"""Builds the model and processor a training run starts from, and sets what trains in each stage."""

import dataclasses
import json
import logging
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
)
from transformers import initialization as init

from delta_llava import DeltaLlavaConfig, DeltaLlavaForConditionalGeneration, convert_llava_to_delta_llava
from delta_llava.conversion import IMAGE_TOKEN, tokenizer_with_image_token
from delta_llava.modeling_delta_llava import PROJECTOR_MODULES
from delta_llava.processing import DeltaLlavaProcessor
from delta_llava.strict_loading import load_checkpoint_strictly

from .arguments import DeltaLlavaModelArguments

logger = logging.getLogger(__name__)

PROJECTOR_FIELDS = (
    "projector_type",
    "delta_layout",
    "num_visual_tokens",
    "vision_feature_layer",
    "memory_layers",
    "projector_hidden_size",
    "delta_rank",
    "window_size",
    "ffn_hidden_size",
    "query_positions",
    "projector_head_dim",
    "ntb_head_dim",
    "drop_path_rate",
    "use_emhsa",
    "use_delta_projection",
    "use_transformer_block",
    "use_object_tokens",
    "max_object_tokens",
    "object_features",
    "object_embedding_dim",
    "mask_inversion",
    "use_global_token",
)
CALL_TIME_FIELDS = ("num_visual_tokens", "max_object_tokens")  # a checkpoint's weights do not fix these
LANGUAGE_MODEL_LINEARS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def projector_settings(args: DeltaLlavaModelArguments) -> dict:
    """The projector fields the user set (None means: keep the config's default)."""
    return {name: getattr(args, name) for name in PROJECTOR_FIELDS if getattr(args, name) is not None}


def build_processor(image_processor, tokenizer, config: DeltaLlavaConfig) -> DeltaLlavaProcessor:
    """A DeltaLlavaProcessor whose token counts follow the model's config."""
    return DeltaLlavaProcessor(
        image_processor,
        tokenizer,
        num_visual_tokens=config.num_visual_tokens,
        use_global_token=config.use_global_token,
        use_object_tokens=config.use_object_tokens,
        max_object_tokens=config.max_object_tokens,
        allowed_visual_token_counts=config.allowed_visual_token_counts(),
    )


def build_from_towers(args: DeltaLlavaModelArguments, dtype: torch.dtype):
    """A fresh projector between a pretrained vision tower and a pretrained causal LM."""
    tokenizer = tokenizer_with_image_token(args.language_model)
    vision_config = AutoConfig.from_pretrained(args.vision_tower)
    vision_config = getattr(vision_config, "vision_config", vision_config)  # CLIPConfig -> CLIPVisionConfig
    config = DeltaLlavaConfig(
        vision_config=vision_config,
        text_config=AutoConfig.from_pretrained(args.language_model),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **projector_settings(args),
    )
    with init.no_init_weights():  # the towers are replaced right away; only the projector needs initialising
        model = DeltaLlavaForConditionalGeneration(config)
    attention = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    model.model.vision_tower = AutoModel.from_pretrained(args.vision_tower, config=vision_config, dtype=dtype, **attention)
    language_model = AutoModelForCausalLM.from_pretrained(args.language_model, dtype=dtype, **attention)
    model.model.language_model = language_model.model
    model.lm_head = language_model.lm_head
    for part in model.model.projector_parts():
        part.apply(model._init_weights)
    model.to(dtype)
    if len(tokenizer) > model.config.text_config.vocab_size:
        model.resize_token_embeddings(len(tokenizer))
    processor = build_processor(AutoImageProcessor.from_pretrained(args.vision_tower), tokenizer, config)
    return model, processor


def build_model_and_processor(args: DeltaLlavaModelArguments, compute_dtype: torch.dtype = torch.float32):
    """(model, processor) from one of the three sources in `args`, weights in `args.dtype`."""
    dtype = getattr(torch, args.dtype)
    if args.use_qlora:
        if not args.model_name_or_path:
            raise ValueError(
                "--use_qlora loads a saved Delta-LLaVA checkpoint in 4 bit: pass --model_name_or_path (e.g. the stage-1 "
                "output); build from towers or a LLaVA checkpoint with a first full-precision run."
            )
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=["model.vision_tower", *(f"model.{name}" for name in PROJECTOR_MODULES), "lm_head"],
        )
        model = DeltaLlavaForConditionalGeneration.from_pretrained(
            args.model_name_or_path, quantization_config=quantization, dtype=dtype
        )
        processor = DeltaLlavaProcessor.from_pretrained(args.model_name_or_path)
    elif args.model_name_or_path:
        model = load_checkpoint_strictly(args.model_name_or_path, dtype=dtype)
        processor = DeltaLlavaProcessor.from_pretrained(args.model_name_or_path)
    elif args.llava_checkpoint:
        settings = projector_settings(args)
        projector_type = settings.pop("projector_type", "delta")
        model = convert_llava_to_delta_llava(args.llava_checkpoint, projector_type, dtype, **settings)
        tokenizer = tokenizer_with_image_token(args.llava_checkpoint)
        processor = build_processor(AutoImageProcessor.from_pretrained(args.llava_checkpoint), tokenizer, model.config)
    else:
        return build_from_towers(args, dtype)  # the towers are loaded with args.attn_implementation
    if args.attn_implementation:
        model.set_attn_implementation(args.attn_implementation)
    if args.model_name_or_path:
        continue_with_checkpoint_settings(model, processor, args)
    return model, processor


def continue_with_checkpoint_settings(model, processor: DeltaLlavaProcessor, args: DeltaLlavaModelArguments) -> None:
    """
    A checkpoint keeps its budget, object-token settings and layout. Flags may change the call-time settings
    (`CALL_TIME_FIELDS`); any other projector flag must agree with the checkpoint, whose weights fix it.
    """
    config = model.config
    for name, value in projector_settings(args).items():
        if name in CALL_TIME_FIELDS:
            continue
        if getattr(config, name) != value:
            raise ValueError(
                f"--{name} {value!r} differs from the checkpoint {args.model_name_or_path}, trained with "
                f"{name}={getattr(config, name)!r}: its weights fix that setting. Drop the flag to continue with the "
                "checkpoint's, or build a new model from --vision_tower and --language_model."
            )
    if args.num_visual_tokens is not None:
        config.check_num_visual_tokens(args.num_visual_tokens)
        config.num_visual_tokens = processor.num_visual_tokens = args.num_visual_tokens
    if args.max_object_tokens is not None:
        config.max_object_tokens = processor.max_object_tokens = args.max_object_tokens


def set_trainable_parts(model: DeltaLlavaForConditionalGeneration, stage: str, freeze_vision_tower: bool) -> None:
    """pretrain: only the projector (and the object-embedding map, if any) trains. finetune: projector + language model (+ the tower if not frozen)."""
    model.requires_grad_(False)
    for part in model.model.projector_parts():
        part.requires_grad_(True)
    if stage == "finetune":
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    if not freeze_vision_tower:
        model.model.vision_tower.requires_grad_(True)


def wrap_with_lora(model: DeltaLlavaForConditionalGeneration, args: DeltaLlavaModelArguments):
    """LoRA on the language model's linear layers; the projector trains fully (peft `modules_to_save`)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if args.use_qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora_config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=LANGUAGE_MODEL_LINEARS,
        modules_to_save=[name for name in PROJECTOR_MODULES if hasattr(model.model, name)],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora_config)
    if not args.freeze_vision_tower:
        model.base_model.model.model.vision_tower.requires_grad_(True)
    return model


LORA_BASE_RECORD = "delta_llava_lora_base.json"
LORA_FIELDS = ("use_lora", "use_qlora", "lora_r", "lora_alpha", "lora_dropout", "merge_lora")


def record_lora_base(args: DeltaLlavaModelArguments, output_dir: str | Path) -> None:
    """Writes, beside a LoRA adapter, the arguments that built its base model (source, projector settings), so
    `load_lora_output` rebuilds that base and loads the adapter without the training command."""
    base = {name: value for name, value in dataclasses.asdict(args).items() if name not in LORA_FIELDS}
    (Path(output_dir) / LORA_BASE_RECORD).write_text(json.dumps(base, indent=1) + "\n")


def load_lora_output(folder: str | Path):
    """(PeftModel, processor) of a LoRA run's output folder: its recorded base rebuilt, the adapter (with the trained
    projector) loaded on it."""
    from peft import PeftModel

    record = Path(folder) / LORA_BASE_RECORD
    if not record.is_file():
        raise FileNotFoundError(f"{folder} has no {LORA_BASE_RECORD}: it is not the output of a LoRA run of this project.")
    model, _ = build_model_and_processor(DeltaLlavaModelArguments(**json.loads(record.read_text())))
    return PeftModel.from_pretrained(model, folder), DeltaLlavaProcessor.from_pretrained(folder)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
