"""Runs the quick start over seeds and CPU kernel settings, one run at a time, and tells whether its bar held in each.

    python benchmarks/quickstart_bar_check.py                      # seeds 0-4 x (default, avx2): 10 runs, ~2 hours
    python benchmarks/quickstart_bar_check.py --seeds 5 6 --kernels avx2 -- --train_steps 4000
    python benchmarks/quickstart_bar_check.py --merge part_1 part_2 --results_name quickstart_bar_check

A result that holds only on the machine that made it is luck: other CPUs round differently, and the quick start's
learning has tipping points that rounding moves. `avx2` runs a quick start with `ATEN_CPU_CAPABILITY=avx2
MKL_ENABLE_INSTRUCTIONS=AVX2`, so torch and MKL take other kernels, as on another machine; `default` leaves the
machine's own. On a CPU without AVX-512 those two are the same kernels (torch's own choice is AVX2 there), so
`generic` (`ATEN_CPU_CAPABILITY=default`, torch's unvectorised kernels, ~1.4x slower steps) gives other rounding; each
run records the kernels torch took (`cpu_capability`). Each run is `delta-llava-quickstart --seed S --output_dir
<output_dir>/<kernels>_s<S>` plus what follows `--`, timed by wall clock (run nothing beside it: the times are what
the issue bounds). After every run the summary is rewritten, so a cut-short check keeps its runs:
`benchmarks/results/<results_name>.json` (per run the seed, kernels, torch's CPU capability, wall time, accuracy per
budget and type, the verdict per budget and the learning curves if measured) and `.png` (per question type, every
run's accuracy at every budget beside majority + the type margin). The bar is the quick start's own
(`delta_llava.training.budget_report`); the printed table says, per run and budget, "met" or the types and margins
that missed it. `--merge A B ...` instead joins the runs of earlier summaries (a check run in pieces, in parallel or
on several machines) into one, refusing repeated runs and runs trained with other settings.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import measure  # noqa: E402
from delta_llava.training.budget_report import BAR_TEXT, OVERALL_MARGIN, TYPE_MARGIN, learning_verdict  # noqa: E402
from quickstart_runs import load_run  # noqa: E402

KERNEL_SETTINGS = {
    "default": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    # torch's unvectorised kernels: other rounding where the machine's own are AVX2 (so `avx2` changes nothing there)
    "generic": {"ATEN_CPU_CAPABILITY": "default"},
}
DEFAULT_KERNELS = ["default", "avx2"]

RUN_RECORD_FILE = "bar_check_wall_s.json"


def kernel_environment(kernels: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", **KERNEL_SETTINGS[kernels]}


def cpu_capability(kernels: str) -> str:
    """The kernels torch picks under the setting on this machine, e.g. 'AVX512', 'AVX2' or 'DEFAULT'."""
    query = [sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"]
    answer = subprocess.run(query, env=kernel_environment(kernels), check=True, capture_output=True, text=True)
    return answer.stdout.strip()


def run_quickstart(seed: int, kernels: str, folder: Path, extra: list[str]) -> dict:
    """One quick start in a fresh process with the kernel settings in its environment; returns its wall seconds and
    torch's CPU kernels, also written to `folder/RUN_RECORD_FILE` so that a later `--reuse` keeps them."""
    command = [sys.executable, "-m", "delta_llava.training.quickstart", "--seed", str(seed), "--output_dir", str(folder)]
    started = time.time()
    subprocess.run([*command, *extra], env=kernel_environment(kernels), check=True)
    record = {"wall_s": round(time.time() - started, 1), "cpu_capability": cpu_capability(kernels)}
    (folder / RUN_RECORD_FILE).write_text(json.dumps(record) + "\n")
    return record


def reused_record(folder: Path) -> dict:
    """What an earlier run of this script recorded in `folder` (wall_s None if it was not run by it)."""
    path = folder / RUN_RECORD_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    return {"wall_s": None, "cpu_capability": None, **recorded}


def closest_margin(run: dict, budget: str) -> tuple[str, float]:
    """The bar's condition at `budget` with the least room (`learning_verdict`'s), and that room."""
    room = run["verdict"][budget]["room"]
    name = min(room, key=room.get)
    return name, room[name]


def missed(run: dict, budget: str) -> str:
    """'met (closest: position +0.005)', what missed the bar at `budget` (e.g. 'existence 0.505 (<0.550); overall
    +0.21 (<+0.25)'), or 'not judged' at a budget the run did not train."""
    verdict = run["verdict"][budget]
    if verdict["meets_bar"] is None:
        return "not judged"
    if verdict["meets_bar"]:
        name, room = closest_margin(run, budget)
        return f"met (closest: {name} {room:+.3f})"
    accuracy = run["accuracy"][budget]
    parts = [
        f"{name} {accuracy[name]:.3f} (<{accuracy[name] - room:.3f})"
        if name != "overall"
        else f"overall +{verdict['gain_over_majority']:.3f} (<+{verdict['gain_over_majority'] - room:.2f})"
        for name, room in verdict["room"].items()
        if room < -1e-9
    ]
    return "; ".join(parts)


def summary_table(runs: list[dict]) -> tuple[list[str], list[list]]:
    budgets = list(runs[0]["accuracy"])
    headers = ["run", "wall s", *[f"{budget} tok" for budget in budgets]]
    rows = [
        [run["label"], run["wall_s"] or f"{run['total_s']:.0f} (reused)", *(missed(run, budget) for budget in budgets)]
        for run in runs
    ]
    return headers, rows


def plot_runs(runs: list[dict], path: Path) -> None:
    """One panel per question type: each run's accuracy vs budget (log x), the bar's level dashed."""
    names = [name for name in runs[0]["majority"] if name != "overall"] + ["overall"]
    budgets = [int(budget) for budget in runs[0]["accuracy"]]
    figure, axes = plt.subplots(1, len(names), figsize=(2.9 * len(names), 3.4), sharey=True, squeeze=False)
    for axis, name in zip(axes[0], names):
        for index, run in enumerate(runs):
            style = "-" if run["kernels"] == "default" else "--"
            values = [run["accuracy"][str(budget)][name] for budget in budgets]
            axis.plot(budgets, values, style, marker="o", markersize=3, color=f"C{index % 10}", label=run["label"])
        margin = OVERALL_MARGIN if name == "overall" else TYPE_MARGIN
        axis.axhline(runs[0]["majority"][name] + margin, color="black", linestyle=":", linewidth=1)
        axis.set_xscale("log")
        axis.set_xticks(budgets, [str(budget) for budget in budgets])
        axis.minorticks_off()
        axis.set_title(f"{name} (dotted: majority +{margin:.2f})", fontsize=8)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (solid: default kernels, dashed: others)")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def merged_runs(results_names: list[str]) -> list[dict]:
    """The runs of `benchmarks/results/<name>.json` for every name, in order; raises ValueError if a seed and kernel
    setting repeats or the runs were given other quick-start arguments (they would not be one check)."""
    runs = []
    for name in results_names:
        path = measure.RESULTS_DIR / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: --merge takes the --results_name of earlier checks.")
        runs += json.loads(path.read_text())["runs"]
    seen = [(run["seed"], run["kernels"]) for run in runs]
    repeated = sorted({key for key in seen if seen.count(key) > 1})
    if repeated:
        raise ValueError(f"--merge got these (seed, kernels) more than once: {repeated}; leave out one of their files.")
    settings = {tuple(run["quickstart_arguments"]) for run in runs}
    if len(settings) > 1:
        raise ValueError(f"--merge got runs trained with different quick-start arguments {sorted(settings)}: "
                         "merge only the runs of one recipe.")  # fmt: skip
    return runs


def write_summary(runs: list[dict], results_name: str, command: str) -> tuple[Path, bool]:
    """Writes the JSON summary and its plot; returns the JSON's path and whether every run met the bar."""
    all_met = all(verdict["meets_bar"] is not False for run in runs for verdict in run["verdict"].values())
    path = measure.write_results(results_name, {"bar": BAR_TEXT, "runs": runs, "all_met": all_met}, command)
    plot_runs(runs, path.with_suffix(".png"))
    return path, all_met


def run_check(args: argparse.Namespace, extra: list[str], command: str) -> tuple[list[dict], Path, bool]:
    """Runs (or with --reuse keeps) every kernels x seed quick start, rewriting the summary after each; returns the runs,
    the summary's path and whether every run met the bar."""
    runs = []
    for kernels in args.kernels:
        for seed in args.seeds:
            label = f"{kernels} kernels, seed {seed}"
            folder = Path(args.output_dir) / f"{kernels}_s{seed}"
            done = args.reuse and (folder / "results.json").is_file()
            print(f"{'Reusing' if done else 'Running'} {label} in {folder}", flush=True)
            record = reused_record(folder) if done else run_quickstart(seed, kernels, folder, extra)
            run = load_run(label, folder)
            results = json.loads((folder / "results.json").read_text())
            verdict = learning_verdict(results, results["arguments"]["elastic_budgets"])  # with `room`, also for old runs
            runs.append({**run, "seed": seed, "kernels": kernels, **record, "verdict": verdict,
                         "quickstart_arguments": extra})  # fmt: skip
            path, all_met = write_summary(runs, args.results_name, command)
    return runs, path, all_met


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    own, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Arguments after -- go to delta-llava-quickstart unchanged.",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--kernels", nargs="+", choices=list(KERNEL_SETTINGS), default=DEFAULT_KERNELS)
    parser.add_argument("--output_dir", default="outputs/quickstart_bar_check", help="one folder per run inside")
    parser.add_argument("--results_name", default="quickstart_bar_check", help="benchmarks/results/<name>.json/.png")
    parser.add_argument(
        "--reuse", action="store_true", help="keep runs whose folder already has a results.json (and their wall times)"
    )
    parser.add_argument(
        "--merge", nargs="+", metavar="RESULTS_NAME", help="join the runs of these earlier summaries; runs nothing"
    )
    args = parser.parse_args(own)
    command = "python benchmarks/quickstart_bar_check.py " + " ".join(argv)
    if args.merge:
        runs = merged_runs(args.merge)
        path, all_met = write_summary(runs, args.results_name, command)
    else:
        runs, path, all_met = run_check(args, extra, command)
    measure.print_table(*summary_table(runs))
    print(f"\nBar met in every run and budget: {all_met}. Wrote {path} and {path.with_suffix('.png')}.")
    return runs


if __name__ == "__main__":
    main()
