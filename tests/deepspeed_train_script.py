"""Run by `accelerate launch` (ZeRO-3) or plain python (one process) in tests: continue a saved checkpoint for 4
steps and save the losses (rank 0); the checkpoint itself is written to OUTPUT_DIR/run by the trainer.

    deepspeed_train_script.py START_CHECKPOINT DATASET_DIR OUTPUT_DIR BATCH_PER_PROCESS

Starting from a saved checkpoint keeps the comparison exact: a model built under ZeRO-3 draws the projector's random
initialisation in another order than one process does.
"""

import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from delta_llava.training import train as train_module
from delta_llava.training.arguments import DeltaLlavaDataArguments, DeltaLlavaModelArguments
from deepspeed_on_cpu import force_deepspeed_on_cpu
from training_setup import sft_config


def main(start: str, dataset: str, output_dir: str, batch_size: int) -> None:
    force_deepspeed_on_cpu()
    under_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true"  # set by accelerate launch
    training_args = sft_config(
        Path(output_dir) / "run", max_steps=4, per_device_train_batch_size=batch_size, use_cpu=not under_deepspeed
    )
    model_args = DeltaLlavaModelArguments(model_name_or_path=start)
    trainer = train_module.train(model_args, DeltaLlavaDataArguments(dataset_path=dataset), training_args)
    state = PartialState()
    if state.is_main_process:
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        record = {"num_processes": state.num_processes, "deepspeed": trainer.is_deepspeed_enabled, "losses": losses}
        torch.save(record, Path(output_dir) / "result.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
