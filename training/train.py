"""Train Delta-LLaVA with TRL's SFTTrainer: stage 1 (projector alignment) or stage 2 (instruction tuning).

    delta-llava-train --config training/recipes/vicuna7b_pretrain.yaml [--num_visual_tokens 36 ...]
    accelerate launch --config_file training/accelerate_configs/multi_gpu.yaml -m delta_llava.training.train --config ...

Every YAML key is an argument below or an `SFTConfig` field; command-line flags override the YAML.
"""

import logging
import os
from pathlib import Path

import datasets
import torch
from transformers import set_seed
from trl import SFTConfig, TrlParser

from .arguments import DeltaLlavaDataArguments, DeltaLlavaModelArguments
from .checkpoints import resolve_resume_checkpoint
from .elastic_budget import ElasticBudgetCollator
from .length_grouped_batches import conversation_length
from .llava_json import convert_llava_json
from .model_builder import (
    build_model_and_processor,
    count_parameters,
    record_lora_base,
    set_trainable_parts,
    wrap_with_lora,
)
from .object_mask_collator import ObjectMaskCollator
from .trainer import DeltaLlavaSFTTrainer
from .vision_feature_cache import cached_vision_tower

logger = logging.getLogger(__name__)


def load_training_data(data_args: DeltaLlavaDataArguments) -> datasets.Dataset:
    """The `images` + `messages` dataset: a save_to_disk folder, or LLaVA JSON converted on the fly."""
    path = Path(data_args.dataset_path)
    if path.suffix in (".json", ".jsonl"):
        if not data_args.image_folder:
            raise ValueError(f"{path} is LLaVA JSON: pass --image_folder, the folder its image paths are relative to.")
        dataset, _ = convert_llava_json(path, data_args.image_folder, on_bad_row=data_args.on_bad_row)
    elif path.is_dir():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[data_args.dataset_split]
    else:
        raise FileNotFoundError(f"--dataset_path {path} is neither a datasets folder nor a LLaVA .json/.jsonl file.")
    missing = {"images", "messages"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"The training data lacks the columns {sorted(missing)}; it needs `images` and `messages`.")
    if data_args.max_train_samples is not None:
        dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    return dataset


def compute_dtype(args: SFTConfig) -> torch.dtype:
    """The dtype mixed precision computes in (QLoRA's 4-bit layers compute in it too)."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def train(
    model_args: DeltaLlavaModelArguments,
    data_args: DeltaLlavaDataArguments,
    training_args: SFTConfig,
    callbacks: list | None = None,
    vision_feature_store: dict | None = None,
):
    """Runs one stage and saves a checkpoint that loads with AutoModelForImageTextToText + trust_remote_code;
    `callbacks` go to the trainer. With --cache_vision_features, `vision_feature_store` holds the frozen tower's
    states from an earlier stage over the same tower weights (see `cached_vision_tower`), filled further here."""
    set_seed(training_args.seed)
    check_processes_are_synchronised(training_args.world_size)  # before anything is built
    resume_from = resolve_resume_checkpoint(
        training_args.resume_from_checkpoint, training_args.output_dir, model_args.resume_without_training_state
    )  # refused before anything is built
    training_args.assistant_only_loss = True  # loss on the assistant's tokens only, as LLaVA trains
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {"skip_prepare_dataset": True}
    model, processor = build_model_and_processor(model_args, compute_dtype(training_args))
    if model_args.use_lora or model_args.use_qlora:
        model = wrap_with_lora(model, model_args)  # adapters + the projector train, the rest is frozen
    else:
        set_trainable_parts(model, model_args.stage, model_args.freeze_vision_tower)
    trainable, total = count_parameters(model)
    logger.info("stage %s: %d of %d parameters train", model_args.stage, trainable, total)

    collator = ObjectMaskCollator(processor, max_length=training_args.max_length, assistant_only_loss=True)
    if model_args.elastic_budgets:
        for budget in model_args.elastic_budgets:
            model.config.check_num_visual_tokens(budget, field="elastic_budgets")
        collator = ElasticBudgetCollator(
            collator,
            processor,
            model_args.elastic_budgets,
            seed=training_args.seed,
            mode=model_args.elastic_mode,
            weights=model_args.elastic_budget_weights,
        )

    train_dataset = load_training_data(data_args)
    trainer = DeltaLlavaSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        data_collator=collator,
        projector_learning_rate=model_args.projector_learning_rate,
        loss_per_answer=model_args.loss_per_answer,
        length_split_passes=data_args.length_split_passes,
        batch_lengths=[conversation_length(m) for m in train_dataset["messages"]]
        if data_args.length_grouped_batches
        else None,
        callbacks=callbacks,
    )
    if model_args.cache_vision_features:
        delta_llava = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = delta_llava.config
        read_layers = [config.vision_feature_layer, *config.memory_layers]
        with cached_vision_tower(delta_llava.model.vision_tower, read_layers, vision_feature_store):
            trainer.train(resume_from_checkpoint=resume_from)
    else:
        trainer.train(resume_from_checkpoint=resume_from)
    save_checkpoint(trainer, processor, model_args, training_args.output_dir)
    return trainer


def check_processes_are_synchronised(num_processes: int) -> None:
    """Refuses a launch whose processes would train unsynchronised copies: the launcher started WORLD_SIZE
    processes but the trainer sees fewer (e.g. cpu_ddp_2proc.yaml on a machine without GPUs, without --use_cpu)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != num_processes:
        raise RuntimeError(
            f"The launcher started {launched} processes (WORLD_SIZE={launched}) but the trainer sees {num_processes}: "
            "each process would train its own copy with no gradient sync. On a machine without GPUs pass --use_cpu "
            "true (or set ACCELERATE_USE_CPU=true) so the processes join over gloo."
        )


def save_checkpoint(trainer, processor, model_args: DeltaLlavaModelArguments, output_dir: str) -> None:
    """Full model (or LoRA adapter, or the merged model) + processor, with the remote code beside them."""
    model = trainer.model
    if (model_args.use_lora or model_args.use_qlora) and model_args.merge_lora:
        if model_args.use_qlora:
            raise ValueError("--merge_lora with --use_qlora would merge into 4-bit weights: merge a LoRA run instead.")
        model = model.merge_and_unload()
        model.save_pretrained(output_dir)
    elif trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        # Gathered here, not by Trainer.save_model: under FSDP it writes nothing from sharded state dicts, and under
        # ZeRO-3 its save_pretrained "reverts" a renaming transformers recorded while loading the partitioned model,
        # writing model.language_model.model.* keys. Our checkpoints are always written under the model's own names.
        sharded = trainer.deepspeed if trainer.is_deepspeed_enabled else model
        state_dict = trainer.accelerator.get_state_dict(sharded)  # a collective: every rank gathers, rank 0 keeps
        if trainer.accelerator.is_main_process:
            trainer.accelerator.unwrap_model(model).save_pretrained(
                output_dir, state_dict=state_dict, save_original_format=False
            )
    else:
        trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(output_dir)
        if (model_args.use_lora or model_args.use_qlora) and not model_args.merge_lora:
            record_lora_base(model_args, output_dir)


def main(argv: list[str] | None = None) -> None:
    parser = TrlParser((DeltaLlavaModelArguments, DeltaLlavaDataArguments, SFTConfig), description=__doc__.split("\n")[0])
    model_args, data_args, training_args = parser.parse_args_and_config(args=argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    train(model_args, data_args, training_args)


if __name__ == "__main__":
    main()
