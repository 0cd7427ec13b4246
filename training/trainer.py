"""TRL's SFTTrainer with three additions: the projector's own learning rate (LLaVA recipes use it), batches of similar
length (optional) and whole checkpoints (a completion record written after every file of every process)."""

import os

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTTrainer

from .checkpoints import mark_complete
from .length_grouped_batches import ShuffledLengthGroupedSampler


class DeltaLlavaSFTTrainer(SFTTrainer):
    """`projector_learning_rate` (optional) moves the projector's parameters into their own optimizer group;
    `batch_lengths` (optional, one per training row) makes every batch rows of similar length, in random order."""

    def __init__(
        self, *args, projector_learning_rate: float | None = None, batch_lengths: list[int] | None = None, **kwargs
    ):
        self.projector_learning_rate = projector_learning_rate
        self.batch_lengths = batch_lengths
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        if self.batch_lengths is None:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if len(self.batch_lengths) != len(dataset):
            raise ValueError(
                f"batch_lengths has {len(self.batch_lengths)} entries but the training set {len(dataset)} rows: "
                "give one length per row."
            )
        seed = self.args.seed if self.args.data_seed is None else self.args.data_seed
        return ShuffledLengthGroupedSampler(self.batch_lengths, self._train_batch_size, seed=seed)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.projector_learning_rate is None:
            return optimizer
        model = self.model if model is None else model
        projector = {id(p) for name, p in model.named_parameters() if "multi_modal_projector" in name}
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in projector]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in projector]
                settings = {key: value for key, value in group.items() if key != "params"}
                optimizer.add_param_group({**settings, "params": moved, "lr": self.projector_learning_rate})
        return optimizer

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()  # every process has written its files (RNG states, shards)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            mark_complete(folder, self.state.global_step)
