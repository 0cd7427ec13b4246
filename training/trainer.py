"""TRL's SFTTrainer with one addition LLaVA recipes use: the projector's own learning rate."""

from trl import SFTTrainer


class DeltaLlavaSFTTrainer(SFTTrainer):
    """`projector_learning_rate` (optional) moves the projector's parameters into their own optimizer group."""

    def __init__(self, *args, projector_learning_rate: float | None = None, **kwargs):
        self.projector_learning_rate = projector_learning_rate
        super().__init__(*args, **kwargs)

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
