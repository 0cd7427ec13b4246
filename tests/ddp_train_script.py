"""Run by `accelerate launch` in tests: a few training steps in each process, then every rank saves its weights."""

import sys
from pathlib import Path

import torch
from accelerate import PartialState

from delta_llava.training.train import train
from training_setup import data_arguments, model_arguments, sft_config


def main(parts_dir: str, output_dir: str) -> None:
    parts = {
        "vision_tower": f"{parts_dir}/tower",
        "language_model": f"{parts_dir}/lm",
        "dataset_path": f"{parts_dir}/data",
    }
    trainer = train(model_arguments(parts), data_arguments(parts), sft_config(Path(output_dir) / "run", max_steps=4))
    state = PartialState()
    weights = {name: tensor.detach().cpu() for name, tensor in trainer.model.state_dict().items()}
    torch.save(
        {"num_processes": state.num_processes, "backend": state.backend, "weights": weights},
        Path(output_dir) / f"rank{state.process_index}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
