"""Command-line / YAML arguments of `delta-llava-train`, parsed with TRL's `TrlParser` beside `SFTConfig`."""

import json
from dataclasses import dataclass, field

from .elastic_budget import ELASTIC_MODES, check_budget_weights

STAGES = ("pretrain", "finetune")


@dataclass
class DeltaLlavaModelArguments:
    """Where the model comes from, the projector settings, what trains, and LoRA/QLoRA."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "A Delta-LLaVA checkpoint to continue from."})
    llava_checkpoint: str | None = field(
        default=None, metadata={"help": "A transformers LLaVA checkpoint (e.g. llava-hf/llava-1.5-7b-hf) to start from."}
    )
    vision_tower: str | None = field(default=None, metadata={"help": "Vision tower id, e.g. openai/clip-vit-large-patch14-336."})
    language_model: str | None = field(default=None, metadata={"help": "Causal LM id, e.g. lmsys/vicuna-7b-v1.5."})
    stage: str = field(default="finetune", metadata={"help": "pretrain (projector only) or finetune (projector + LLM)."})
    projector_type: str | None = field(
        default=None, metadata={"help": "delta (the default), mlp2x_gelu, tokenpacker or avgpool."}
    )
    delta_layout: str | None = field(
        default=None,
        metadata={"help": "official (the authors' module, the config default) or shared_base (the paper's text)."},
    )
    num_visual_tokens: int | None = field(
        default=None, metadata={"help": "Default budget per image (144 for a new model; a checkpoint keeps its own)."}
    )
    elastic_budgets: list[int] | None = field(
        default=None, metadata={"help": "Draw the budget of each batch from these (one checkpoint, every budget)."}
    )
    elastic_mode: str = field(
        default="one_per_batch",
        metadata={"help": "With --elastic_budgets: one_per_batch (a budget drawn per batch) or every_budget (each "
                  "example at every budget in its batch: B x budgets rows, the loss covers all budgets every step)."},
    )
    elastic_budget_weights: list[int] | None = field(
        default=None,
        metadata={"help": "With --elastic_budgets and one_per_batch: how often each budget is drawn, relative to the "
                  "others (whole numbers, one per budget; default: all alike). E.g. 1 1 3 1 over 36 16 9 1."},
    )
    vision_feature_layer: int | None = field(default=None, metadata={"help": "Hidden-state index of the patch features."})
    memory_layers: list[int] | None = field(
        default=None,
        metadata={"help": "Hidden-state indices of the multi-level memory (delta, tokenpacker); default: scaled from "
                  "TokenPacker's 12/16/22/23 of 24 to the tower's depth (one level, [1], on a 2-layer tower)."},
    )
    projector_hidden_size: int | None = field(default=None, metadata={"help": "Projector width d (config default 1024)."})
    delta_rank: int | None = field(
        default=None, metadata={"help": "Rank r of the Delta updates (default 16 official, 64 shared_base)."}
    )
    window_size: int | None = field(default=None, metadata={"help": "Cross-attention window side w (default 1)."})
    ffn_hidden_size: int | None = field(default=None, metadata={"help": "FFN refinement width (shared_base; 4096)."})
    query_positions: str | None = field(
        default=None,
        metadata={"help": "shared_base query positions: 'query_grid' (default) or 'image' (same code at every budget)."},
    )
    projector_head_dim: int | None = field(
        default=None, metadata={"help": "Channels per cross-attention head (default 128 official, 64 shared_base)."}
    )
    ntb_head_dim: int | None = field(default=None, metadata={"help": "Next-ViT block head width (official; 32)."})
    drop_path_rate: float | None = field(default=None, metadata={"help": "Next-ViT block drop-path (official; 0.1)."})
    # Left at None, the fields below take the config's default for a new model and the checkpoint's own value when
    # continuing from --model_name_or_path.
    use_emhsa: bool | None = field(default=None, metadata={"help": "Ablation switch: keep the EMHSA blocks (True)."})
    use_delta_projection: bool | None = field(
        default=None, metadata={"help": "Ablation switch: shared base + low rank (True)."}
    )
    use_transformer_block: bool | None = field(default=None, metadata={"help": "Ablation switch: keep the NTB (True)."})
    use_object_tokens: bool | None = field(
        default=None, metadata={"help": "Add Mask-LLaVA object tokens (False; needs masks)."}
    )
    max_object_tokens: int | None = field(default=None, metadata={"help": "Object tokens kept per image (8)."})
    object_features: str | None = field(
        default=None,
        metadata={"help": "mask_pooling (the default) or mask_inversion (needs an object_embeddings column, from "
                  "precompute_object_embeddings)."},
    )
    object_embedding_dim: int | None = field(
        default=None, metadata={"help": "Width E of the MaskInversion embeddings (the tower's projection_dim)."}
    )
    mask_inversion: str | None = field(
        default=None,
        metadata={"help": "JSON of the CLIP checkpoint and settings the object_embeddings were computed with, recorded "
                  "in the config, e.g. '{\"source\": \"openai/clip-vit-large-patch14-336\"}' (keys: source, "
                  "layer_index, iterations, lr, alpha, weight_decay; the rest default as in precompute_object_embeddings)."},
    )
    use_global_token: bool | None = field(default=None, metadata={"help": "Add the CLS feature as a global token (False)."})
    dtype: str = field(
        default="float32",
        metadata={"help": "Weight dtype: float32 (mixed precision comes from --bf16), bfloat16 or float16 to save memory."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel of the tower and the language model: sdpa, eager, flash_attention_2, ... "
                  "(default: transformers' choice, sdpa)."},
    )
    freeze_vision_tower: bool = field(default=True, metadata={"help": "Keep the vision tower frozen."})
    cache_vision_features: bool = field(
        default=False, metadata={"help": "Memoise the frozen tower's outputs per image (small data, many epochs)."}
    )
    projector_learning_rate: float | None = field(default=None, metadata={"help": "Own learning rate of the projector."})
    loss_per_answer: bool = field(
        default=False,
        metadata={"help": "Average the loss per answer, then over answers (a one-word answer weighs as a caption)."},
    )
    use_lora: bool = field(default=False, metadata={"help": "LoRA on the language model (finetune stage)."})
    use_qlora: bool = field(default=False, metadata={"help": "QLoRA: 4-bit NF4 language model + LoRA (needs a GPU)."})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=256, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    merge_lora: bool = field(default=False, metadata={"help": "Merge the LoRA adapters into the saved checkpoint."})
    resume_without_training_state: bool = field(
        default=False,
        metadata={"help": "Let --resume_from_checkpoint take a checkpoint without optimizer/scheduler/RNG state."},
    )

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"--stage {self.stage!r} is unknown. Allowed values: {list(STAGES)}.")
        sources = [n for n in ("model_name_or_path", "llava_checkpoint") if getattr(self, n)]
        if self.vision_tower or self.language_model:
            sources.append("vision_tower + language_model")
        if len(sources) != 1 or (sources[0].startswith("vision") and not (self.vision_tower and self.language_model)):
            raise ValueError(
                "Give exactly one model source: --model_name_or_path (a Delta-LLaVA checkpoint), --llava_checkpoint "
                f"(a transformers LLaVA checkpoint), or both --vision_tower and --language_model; got {sources or 'none'}."
            )
        if (self.use_lora or self.use_qlora) and self.stage != "finetune":
            raise ValueError("--use_lora/--use_qlora apply to --stage finetune; stage 1 trains only the projector.")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"--dtype {self.dtype!r} is unknown. Allowed values: ['float32', 'bfloat16', 'float16'].")
        if isinstance(self.mask_inversion, str):
            try:
                self.mask_inversion = json.loads(self.mask_inversion)
            except json.JSONDecodeError as error:
                raise ValueError(f"--mask_inversion {self.mask_inversion!r} is not JSON ({error}); give e.g. "
                                 '\'{"source": "openai/clip-vit-large-patch14-336"}\'.') from error
        if self.elastic_mode not in ELASTIC_MODES:
            raise ValueError(f"--elastic_mode {self.elastic_mode!r} is unknown. Allowed values: {list(ELASTIC_MODES)}.")
        if self.elastic_budget_weights is not None:
            check_budget_weights(self.elastic_budgets, self.elastic_budget_weights, self.elastic_mode)
        if self.cache_vision_features and not self.freeze_vision_tower:
            raise ValueError("--cache_vision_features needs --freeze_vision_tower true: a training tower changes.")


@dataclass
class DeltaLlavaDataArguments:
    """The training data: a `datasets` folder with `images` + `messages`, or LLaVA's JSON with an image folder."""

    dataset_path: str = field(metadata={"help": "save_to_disk folder, or a LLaVA-format .json/.jsonl file."})
    image_folder: str | None = field(default=None, metadata={"help": "Image root of a LLaVA-format JSON file."})
    dataset_split: str = field(default="train", metadata={"help": "Split to train on when the folder holds several."})
    on_bad_row: str = field(default="skip", metadata={"help": "LLaVA JSON rows that fail checks: skip or raise."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N samples only."})
    length_grouped_batches: bool = field(
        default=False,
        metadata={"help": "Batches of conversations of similar length, in random order: less padding per step."},
    )
    length_split_passes: int = field(
        default=1,
        metadata={"help": "Run each batch as up to this many passes over rows of similar length, each without the "
                  "others' padding; the gradients sum to the batch's (1: one pass; one process only)."},
    )
