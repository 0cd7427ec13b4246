"""Learning curves: accuracy per question type and budget, measured on a fixed test subset while training runs."""

import json
from pathlib import Path

import matplotlib
from transformers import TrainerCallback

from .evaluate_vqa import evaluate_budget

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class LearningCurveCallback(TrainerCallback):
    """
    Every `every_steps` optimizer steps (and after the last), scores greedy answers on `test_set` at each budget in
    `budgets` and appends them to `self.points`: [{"step": s, "budgets": {budget: scores}}]. The model is put back in
    training mode afterwards; evaluation draws no random numbers, so training goes on exactly as without it.
    """

    def __init__(self, test_set, budgets: list[int], every_steps: int):
        if every_steps <= 0:
            raise ValueError(f"every_steps must be positive, got {every_steps}: it is the evaluation interval.")
        self.test_set = test_set
        self.budgets = list(budgets)
        self.every_steps = every_steps
        self.points: list[dict] = []
        self.step_offset = 0  # steps of earlier training runs the same curves continue

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = self.step_offset + state.global_step
        if step % self.every_steps == 0 or state.global_step == state.max_steps:
            self.measure(model, processing_class, step)

    def measure(self, model, processor, step: int) -> None:
        scores = {  # batched by question text, as the final evaluation: short answers stop generating early
            budget: evaluate_budget(model, processor, self.test_set, budget, batch_by_question=True)["scores"]
            for budget in self.budgets
        }
        model.train()
        self.points.append({"step": step, "budgets": scores})
        for budget, by_type in scores.items():
            accuracies = " ".join(f"{name} {score['accuracy']:.2f}" for name, score in by_type.items())
            print(f"[curves] step {step}, {budget} tokens: {accuracies}", flush=True)

    def save(self, directory: Path, majority: dict) -> None:
        """`learning_curves.json` (the points and the majority levels) and `learning_curves.png` in `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "learning_curves.json").write_text(
            json.dumps({"majority": majority, "points": self.points}, indent=2) + "\n"
        )
        plot_learning_curves(self.points, majority, directory / "learning_curves.png")


def plot_learning_curves(points: list[dict], majority: dict, path: Path) -> None:
    """One panel per question type (and overall): accuracy vs training step, one line per budget, majority dotted."""
    names = [name for name in majority if name != "overall"] + ["overall"]
    budgets = list(points[0]["budgets"])
    steps = [point["step"] for point in points]
    columns = 4
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), sharex=True, squeeze=False)
    for axis, name in zip(axes.flat, names):
        for index, budget in enumerate(budgets):
            accuracy = [point["budgets"][budget][name]["accuracy"] for point in points]
            axis.plot(
                steps,
                accuracy,
                color=f"C{index}",
                label=f"{budget} tokens",
                linewidth=1.4,
            )
        axis.axhline(majority[name]["accuracy"], color="black", linestyle=":", linewidth=1)
        axis.set_title(name, fontsize=9)
        axis.set_ylim(0, 1.03)
        axis.grid(alpha=0.3)
    for axis in axes.flat[len(names) :]:
        axis.axis("off")
    for axis in axes[-1]:
        axis.set_xlabel("training step")
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(
        "Accuracy while training, per question type and budget (dotted: majority answer)",
        fontsize=10,
    )
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
