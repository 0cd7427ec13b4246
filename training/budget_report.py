"""Tables and plots of accuracy per question type and token budget, beside the chance and majority levels."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def question_types(results: dict) -> list[str]:
    return [name for name in results["majority"] if name != "overall"]


def print_accuracy_table(results: dict, trained_budgets: list[int]) -> str:
    """Prints (and returns) accuracy per question type (rows) and budget (columns), with chance and majority; the
    first row says which budgets the checkpoint was trained at."""
    budgets = list(results["budgets"])
    header = f"{'question type':<14}" + "".join(f"{str(b) + ' tok':>9}" for b in budgets) + f"{'majority':>10}{'chance':>8}"
    trained = f"{'trained':<14}" + "".join(f"{'yes' if int(b) in trained_budgets else 'no':>9}" for b in budgets)
    lines = [header, trained, "-" * len(header)]
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


def plot_accuracy_by_budget(results: dict, trained_budgets: list[int], path: Path) -> None:
    """Accuracy vs number of visual tokens (log scale), one line per question type with its majority level dotted;
    filled markers at the budgets the checkpoint was trained at, open ones elsewhere."""
    budgets = [int(b) for b in results["budgets"]]
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    for index, name in enumerate([*question_types(results), "overall"]):
        colour = f"C{index}"
        accuracy = [results["budgets"][b][name]["accuracy"] for b in results["budgets"]]
        axis.plot(budgets, accuracy, color=colour, label=name, linewidth=2.5 if name == "overall" else 1.5)
        for budget, value in zip(budgets, accuracy):
            axis.plot(budget, value, "o", color=colour, mfc=colour if budget in trained_budgets else "white")
        axis.axhline(results["majority"][name]["accuracy"], color=colour, linestyle=":", linewidth=1)
    axis.set_xscale("log")
    axis.set_xticks(budgets, [f"{b}\n{'trained' if b in trained_budgets else 'not trained'}" for b in budgets])
    axis.minorticks_off()
    axis.set_xlabel("visual tokens per image")
    axis.set_ylabel("accuracy (dotted: each type's majority answer)")
    axis.set_title("One checkpoint at every budget (filled: trained at that budget)", fontsize=10)
    axis.set_ylim(0, 1.03)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axis.grid(alpha=0.3)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


FULL_BAR_MIN_TOKENS = 4  # one token cannot place things in a 3x3 scene: below this only the overall gain is judged
OVERALL_MARGIN = 0.25  # the full bar: overall accuracy at least this far above the majority answer ...
TYPE_MARGIN = 0.05  # ... and every question type at least this far above its own majority level
SMALL_BUDGET_MARGIN = 0.10  # below FULL_BAR_MIN_TOKENS: overall accuracy this far above the majority answer
BAR_TEXT = {
    "full": f"bar (overall +{OVERALL_MARGIN:.2f}, every type +{TYPE_MARGIN:.2f} over its majority level)",
    "overall": f"bar (overall +{SMALL_BUDGET_MARGIN:.2f} over the majority answer)",
}


def bar_for(budget: int, trained_budgets: list[int]) -> str | None:
    """The quick start's bar at `budget`: "full" at trained budgets of at least FULL_BAR_MIN_TOKENS, "overall" at
    smaller trained budgets, None (not judged) at budgets the checkpoint was not trained at (see BAR_TEXT)."""
    if budget not in trained_budgets:
        return None
    return "full" if budget >= FULL_BAR_MIN_TOKENS else "overall"


def learning_verdict(results: dict, trained_budgets: list[int]) -> dict:
    """Per budget: overall accuracy minus the majority level, the types less than TYPE_MARGIN above their majority
    level, the bar that applies (`bar_for`), whether it is met (None where no bar applies) and `room`: per condition
    of that bar, how far the run is above what it asks (a type's accuracy minus its majority level + TYPE_MARGIN;
    "overall": the gain minus the margin asked), negative where it missed."""
    majority = results["majority"]
    verdict = {}
    for budget, scores in results["budgets"].items():
        gain = scores["overall"]["accuracy"] - majority["overall"]["accuracy"]
        type_room = {
            name: scores[name]["accuracy"] - majority[name]["accuracy"] - TYPE_MARGIN for name in question_types(results)
        }
        bar = bar_for(int(budget), trained_budgets)
        room = {
            "full": {**type_room, "overall": gain - OVERALL_MARGIN},
            "overall": {"overall": gain - SMALL_BUDGET_MARGIN},
            None: {},
        }[bar]
        verdict[budget] = {
            "gain_over_majority": round(gain, 4),
            "types_under_margin": [name for name, value in type_room.items() if value < -1e-9],
            "trained": bar is not None,
            "bar": bar,
            "meets_bar": all(value >= -1e-9 for value in room.values()) if bar else None,
            "room": {name: round(value, 4) for name, value in room.items()},
        }
    return verdict


def verdict_line(budget, verdict: dict) -> str:
    """One printed line per budget: the gain, the lagging types and the bar's outcome, in words."""
    lagging = ", ".join(verdict["types_under_margin"]) or "none"
    outcome = BAR_TEXT.get(verdict["bar"])
    judged = f"{outcome} {'met' if verdict['meets_bar'] else 'NOT met'}" if outcome else "not trained here: no bar"
    return (f"{budget:>4} tokens: {verdict['gain_over_majority']:+.3f} over the majority answer; types under "
            f"majority +{TYPE_MARGIN:.2f}: {lagging}; {judged}")
