"""Run as a subprocess by a test: trains 6 steps saving every 2, and SIGKILLs itself in the middle of writing
checkpoint-4 (after its weights and optimizer state, before its RNG state, trainer state and completion record).

    killed_save_script.py PARTS_DIR OUTPUT_DIR
"""

import os
import signal
import sys

from delta_llava.training import trainer as trainer_module
from delta_llava.training.train import train
from training_setup import data_arguments, model_arguments, sft_config


def main(parts_dir: str, output_dir: str) -> None:
    save_rng_state = trainer_module.DeltaLlavaSFTTrainer._save_rng_state

    def killed_at_step_4(self, folder):
        if self.state.global_step == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        save_rng_state(self, folder)

    trainer_module.DeltaLlavaSFTTrainer._save_rng_state = killed_at_step_4
    parts = {"vision_tower": f"{parts_dir}/tower", "language_model": f"{parts_dir}/lm", "dataset_path": f"{parts_dir}/data"}
    train(model_arguments(parts), data_arguments(parts), sft_config(output_dir, max_steps=6, save_strategy="steps", save_steps=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
