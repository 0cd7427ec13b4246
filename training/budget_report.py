"""Tables and plots of accuracy per question type and token budget, beside the chance and majority levels."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def question_types(results: dict) -> list[str]:
    return [name for name in results["majority"] if name != "overall"]


def print_accuracy_table(results: dict) -> str:
    """Prints (and returns) accuracy per question type (rows) and budget (columns), with chance and majority."""
    budgets = list(results["budgets"])
    header = f"{'question type':<14}" + "".join(f"{str(b) + ' tok':>9}" for b in budgets) + f"{'majority':>10}{'chance':>8}"
    lines = [header, "-" * len(header)]
    for name in [*question_types(results), "overall"]:
        majority = results["majority"][name]
        cells = "".join(f"{results['budgets'][b][name]['accuracy']:>9.3f}" for b in budgets)
        lines.append(f"{name:<14}{cells}{majority['accuracy']:>10.3f}{majority.get('chance', float('nan')):>8.3f}")
    if "caption" in results["majority"]:
        cells = "".join(f"{results['budgets'][b]['caption']['bleu']:>9.3f}" for b in budgets)
        lines.append(f"{'caption BLEU':<14}{cells}{results['majority']['caption']['bleu']:>10.3f}")
    table = "\n".join(lines)
    print(table)
    return table


def plot_accuracy_by_budget(results: dict, path: Path) -> None:
    """Accuracy vs number of visual tokens (log scale), one line per question type, majority levels dashed."""
    budgets = [int(b) for b in results["budgets"]]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for index, name in enumerate([*question_types(results), "overall"]):
        colour = f"C{index}"
        accuracy = [results["budgets"][b][name]["accuracy"] for b in results["budgets"]]
        axis.plot(budgets, accuracy, marker="o", color=colour, label=name, linewidth=2.5 if name == "overall" else 1.5)
        axis.axhline(results["majority"][name]["accuracy"], color=colour, linestyle=":", linewidth=1)
    axis.set_xscale("log")
    axis.set_xticks(budgets, [str(b) for b in budgets])
    axis.set_xlabel("visual tokens per image")
    axis.set_ylabel("accuracy (dotted: majority answer)")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8, ncol=2)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def learning_verdict(results: dict, margin: float = 0.20) -> dict:
    """Per budget: overall accuracy minus the majority level, the types at or below their majority level, and
    whether the quick start's bar is met (overall at least `margin` above majority, every type above its majority)."""
    majority = results["majority"]
    verdict = {}
    for budget, scores in results["budgets"].items():
        gain = scores["overall"]["accuracy"] - majority["overall"]["accuracy"]
        lagging = [n for n in question_types(results) if scores[n]["accuracy"] <= majority[n]["accuracy"]]
        verdict[budget] = {"gain_over_majority": round(gain, 4), "types_not_above_majority": lagging,
                           "meets_bar": gain >= margin and not lagging}  # fmt: skip
    return verdict
