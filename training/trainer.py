"""TRL's SFTTrainer with five additions: the projector's own learning rate (LLaVA recipes use it), batches of similar
length (optional), each step's rows run in groups of similar length (optional), a loss that weighs every answer equally
(optional) and whole checkpoints (a completion record written after every file of every process)."""

import os

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTTrainer

from delta_llava.modeling_delta_llava import PROJECTOR_MODULES

from .checkpoints import mark_complete
from .length_grouped_batches import ShuffledLengthGroupedSampler
from .length_split_step import length_split_groups, split_rows


class DeltaLlavaSFTTrainer(SFTTrainer):
    """`projector_learning_rate` (optional) moves the projector's parameters into their own optimizer group;
    `batch_lengths` (optional, one per training row) makes every batch rows of similar length, in random order;
    `length_split_passes` > 1 runs each batch as up to that many forward/backward passes over rows of similar length,
    each trimmed of padding, whose gradients sum to the batch's (one process only);
    `loss_per_answer` averages the loss over each answer's tokens first, then over the answers, so a one-word answer
    weighs as much as a twenty-word caption (TRL's loss averages over all answer tokens of the batch)."""

    def __init__(
        self,
        *args,
        projector_learning_rate: float | None = None,
        batch_lengths: list[int] | None = None,
        loss_per_answer: bool = False,
        length_split_passes: int = 1,
        **kwargs,
    ):
        self.projector_learning_rate = projector_learning_rate
        self.batch_lengths = batch_lengths
        self.loss_per_answer = loss_per_answer
        self.length_split_passes = length_split_passes
        super().__init__(*args, **kwargs)
        if length_split_passes < 1:
            raise ValueError(f"length_split_passes {length_split_passes} must be at least 1 (1: no split).")
        if length_split_passes > 1 and (loss_per_answer or self.args.world_size > 1 or self.is_deepspeed_enabled):
            raise ValueError(
                "length_split_passes > 1 splits one process's step into passes whose losses share the batch's token "
                "count: it does not combine with loss_per_answer, several processes or DeepSpeed. Set it to 1."
            )
        if loss_per_answer and (self.args.loss_type != "nll" or self.label_smoother or self.compute_loss_func):
            raise ValueError(
                "loss_per_answer replaces TRL's token-averaged negative log-likelihood: it does not combine with "
                f"loss_type={self.args.loss_type!r}, label smoothing or compute_loss_func. Drop one of them."
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.loss_per_answer or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if return_outputs:
            raise ValueError("loss_per_answer computes no logits to return: use it without compute_metrics.")
        outputs = model(**inputs, use_cache=False, fused_lm_head=True)  # TRL's fused head: log-probs, no logits
        answer_tokens = outputs.label_mask.sum(dim=1)  # (B,)
        per_answer = -outputs.log_probs.sum(dim=1) / answer_tokens.clamp(min=1)  # (B,)
        loss = per_answer.sum() / (answer_tokens > 0).sum().clamp(min=1)
        # Trainer leaves the division by the accumulation steps to the loss when it hands over a token count
        scaled_by_trainer = not (self.model_accepts_loss_kwargs and num_items_in_batch is not None)
        return loss if scaled_by_trainer else loss / self.current_gradient_accumulation_steps

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.length_split_passes == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        if num_items_in_batch is None:  # the batch's answer tokens, as Trainer counts them: each pass divides by them
            num_items_in_batch = inputs["labels"][:, 1:].ne(-100).sum()
        loss = 0
        for batch in split_rows(inputs, length_split_groups(lengths, self.length_split_passes), lengths):
            loss = loss + super().training_step(model, batch, num_items_in_batch)
        return loss

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
        projector = {id(p) for name, p in model.named_parameters() if any(part in name for part in PROJECTOR_MODULES)}
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
