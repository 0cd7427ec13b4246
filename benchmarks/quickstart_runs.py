"""Gathers quick-start runs into one JSON and one plot of their learning curves, to compare training settings.

    python benchmarks/quickstart_runs.py --output benchmarks/results/quickstart_runs \
        "plain elastic, seed 0=/tmp/runs/plain_s0" "9 first, seed 0=/tmp/runs/nine_first_s0" ...

Each run is `label=folder`, a folder written by `delta-llava-quickstart` (its `results.json`; `learning_curves.json`
where it ran with `--curve_every_steps`). The JSON keeps per run its arguments, total time, final accuracy per type and
budget, the verdicts and the curves; the plot shows, per run, accuracy vs training step for the question types named
by `--types`, averaged over the budgets the curves were measured at.
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def accuracy_only(point: dict) -> dict:
    """A learning-curve point with only the accuracy per budget and type."""
    budgets = point["budgets"]
    return {"step": point["step"], "accuracy": {b: {n: s["accuracy"] for n, s in budgets[b].items()} for b in budgets}}


def load_run(label: str, folder: Path) -> dict:
    results_path = folder / "results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} is missing: {label!r} must name a finished quick-start run.")
    results = json.loads(results_path.read_text())
    curves_path = folder / "learning_curves.json"
    curves = json.loads(curves_path.read_text())["points"] if curves_path.is_file() else None
    return {
        "label": label,
        "arguments": results["arguments"],
        "total_s": results["total_s"],
        "majority": {name: scores["accuracy"] for name, scores in results["majority"].items()},
        "accuracy": {
            budget: {name: round(score["accuracy"], 4) for name, score in scores.items()}
            for budget, scores in results["budgets"].items()
        },
        "bar_met": {budget: verdict["meets_bar"] for budget, verdict in results["verdict"].items()},
        "curves": [accuracy_only(point) for point in curves] if curves else None,
    }


def plot_runs(runs: list[dict], types: list[str], path: Path) -> None:
    """One panel per type: accuracy averaged over the measured budgets vs step, a line per run, majority dotted."""
    figure, axes = plt.subplots(1, len(types), figsize=(4.2 * len(types), 3.6), squeeze=False)
    for axis, name in zip(axes[0], types):
        for index, run in enumerate(r for r in runs if r["curves"]):
            steps = [point["step"] for point in run["curves"]]
            mean = [sum(s[name] for s in p["accuracy"].values()) / len(p["accuracy"]) for p in run["curves"]]
            axis.plot(steps, mean, color=f"C{index}", label=run["label"], linewidth=1.5)
        axis.axhline(runs[0]["majority"][name], color="black", linestyle=":", linewidth=1)
        axis.set_title(f"{name} (mean over budgets)", fontsize=9)
        axis.set_xlabel("training step")
        axis.set_ylim(0, 1.03)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (dotted: majority answer)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", help="label=folder of a delta-llava-quickstart run")
    parser.add_argument("--output", required=True, help="Path stem: writes <stem>.json and <stem>.png.")
    parser.add_argument("--types", nargs="+", default=["existence", "position", "overall"], help="question types plotted")
    parser.add_argument("--about", default="", help="What these runs compare and where they ran (kept in the JSON).")
    args = parser.parse_args(argv)
    bad = [run for run in args.runs if "=" not in run]
    if bad:
        parser.error(f"runs must be label=folder, got {bad}")
    runs = [load_run(label, Path(folder)) for label, folder in (run.rsplit("=", 1) for run in args.runs)]
    stem = Path(args.output)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"about": args.about, "runs": runs}, indent=1) + "\n")
    plot_runs(runs, args.types, stem.with_suffix(".png"))
    for run in runs:
        met = [budget for budget, met in run["bar_met"].items() if met]
        existence = [run["accuracy"][budget]["existence"] for budget in run["accuracy"]]
        print(f"{run['label']:<40} bar met at {met}, existence {existence}")


if __name__ == "__main__":
    main()
