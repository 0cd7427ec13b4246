"""Run by `accelerate launch` (FSDP) or plain python (one process) in tests: a few training steps, then the
step-0 gradients and the final weights, both whole, saved by rank 0.

    fsdp_train_script.py PARTS_DIR OUTPUT_DIR BATCH_PER_PROCESS [RESUME_FROM]

With FSDP the processes run on CPU over gloo through the test-only switch in `fsdp_on_cpu.py`.
"""

import sys
from pathlib import Path

import torch
from accelerate import PartialState
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback

from delta_llava.training import train as train_module
from fsdp_on_cpu import force_fsdp_on_cpu
from training_setup import data_arguments, model_arguments, sft_config


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered (a collective: every rank calls it in the same order), or the tensor itself."""
    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


class FirstStepGradients(TrainerCallback):
    """The gradients of the first optimizer step (after clipping), gathered whole."""

    def __init__(self):
        self.gradients = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.gradients is None:
            self.gradients = {n: whole(p.grad) for n, p in model.named_parameters() if p.grad is not None}


def main(parts_dir: str, output_dir: str, batch_size: int, resume_from: str | None = None) -> None:
    force_fsdp_on_cpu()
    gradients = FirstStepGradients()
    trainer_class = train_module.DeltaLlavaSFTTrainer

    class RecordingTrainer(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(gradients)

    train_module.DeltaLlavaSFTTrainer = RecordingTrainer
    parts = {name: f"{parts_dir}/{sub}" for name, sub in
             (("vision_tower", "tower"), ("language_model", "lm"), ("dataset_path", "data"))}  # fmt: skip
    training_args = sft_config(
        Path(output_dir) / "run", max_steps=4, per_device_train_batch_size=batch_size, save_strategy="steps",
        save_steps=2, resume_from_checkpoint=resume_from,
    )  # fmt: skip
    # drop-path draws per process: off, to compare runs; the global token goes through the projector's second method
    model_args = model_arguments(parts, drop_path_rate=0.0, use_global_token=True)
    trainer = train_module.train(model_args, data_arguments(parts), training_args)
    weights = {name: whole(p) for name, p in trainer.model.named_parameters()}
    state = PartialState()
    if state.is_main_process:
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        record = {"num_processes": state.num_processes, "fsdp": trainer.is_fsdp_enabled, "losses": losses,
                  "gradients": gradients.gradients, "weights": weights}  # fmt: skip
        torch.save(record, Path(output_dir) / "result.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:])
