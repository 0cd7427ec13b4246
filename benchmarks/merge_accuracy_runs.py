"""One accuracy-vs-budget table and plot from several `accuracy_vs_budget.py` runs made with the same training setup.

    python benchmarks/merge_accuracy_runs.py accuracy_vs_budget accuracy_vs_budget_elastic \
        accuracy_vs_budget_objects_ablations accuracy_vs_budget_avgpool_ablations_seeds

A full table does not fit one sitting on a 2-core machine, so it is run in pieces (`--rows`, `--results_name`).
This script checks that every piece trained alike (the settings in `SHARED_SETTINGS` must be equal), takes each
checkpoint once (the first file that has it; a checkpoint trained again in a later file is a rerun with the same
seed, and the difference between the two is reported as run-to-run noise), leaves out the row groups named by
`--exclude RUN:GROUP` (rows trained by code that has changed since; the JSON records them), then summarises over
seeds, prints the table (plain and as markdown) and writes benchmarks/results/<results_name>.json and .png.
"""

import argparse
import json
import sys

import accuracy_vs_budget as benchmark
import measure

SHARED_SETTINGS = (
    "train_samples", "test_samples", "max_steps", "batch_size", "learning_rate", "warmup_steps",
    "warmup_learning_rate", "image_size", "patch_size", "data_seed", "learned_margin",
)  # fmt: skip


def load_run(name: str) -> dict:
    path = measure.RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give result names as written by --results_name (no .json).")
    return json.loads(path.read_text())


def check_same_setup(runs: dict[str, dict]) -> None:
    """Raises ValueError naming the first setting or majority level that differs between runs."""
    (first_name, first), *others = runs.items()
    for name, run in others:
        for key in SHARED_SETTINGS:
            if run["settings"][key] != first["settings"][key]:
                raise ValueError(
                    f"{name} was trained with {key}={run['settings'][key]!r} but {first_name} with "
                    f"{first['settings'][key]!r}; only runs with the same training setup can share a table."
                )
        if run["majority"] != first["majority"]:
            raise ValueError(f"{name} and {first_name} have different test splits (majority levels differ).")


def parse_exclusions(pairs: list[str], runs: dict[str, dict]) -> dict[str, set[str]]:
    """["run:group", ...] -> {run: {group, ...}}; refuses a run that is not an input or a group it does not hold."""
    excluded: dict[str, set[str]] = {}
    for pair in pairs:
        name, _, group = pair.partition(":")
        if name not in runs or not group:
            raise ValueError(f"--exclude {pair!r}: give RUN:GROUP with RUN one of the inputs {list(runs)}.")
        if group not in {row["group"] for row in runs[name]["rows"]}:
            raise ValueError(f"--exclude {pair!r}: {name} has no {group!r} rows.")
        excluded.setdefault(name, set()).add(group)
    return excluded


def merge_rows(
    runs: dict[str, dict], excluded: dict[str, set[str]] | None = None
) -> tuple[list[dict], list[dict], list[dict]]:
    """(checkpoints, rows, reruns): each checkpoint from the first run that has it, leaving out the `excluded`
    groups of a run (e.g. rows trained by code that has changed since); reruns pair repeated rows."""
    checkpoints, rows, reruns = [], [], []
    kept: dict[tuple, dict] = {}
    excluded = excluded or {}
    for name, run in runs.items():
        run = {**run, "checkpoints": [c for c in run["checkpoints"] if c["group"] not in excluded.get(name, ())],
               "rows": [r for r in run["rows"] if r["group"] not in excluded.get(name, ())]}  # fmt: skip
        new_checkpoints = {c["name"] for c in run["checkpoints"]} - {c["name"] for c in checkpoints}
        checkpoints += [{**c, "source": name} for c in run["checkpoints"] if c["name"] in new_checkpoints]
        for row in run["rows"]:
            key = (row["checkpoint"], row["label"], row["budget"], row["max_object_tokens"])
            if row["checkpoint"] in new_checkpoints:
                kept[key] = {**row, "source": name}
                rows.append(kept[key])
            elif key in kept:
                first = kept[key]
                reruns.append(
                    {
                        "checkpoint": row["checkpoint"],
                        "budget": row["budget"],
                        "first": first["source"],
                        "rerun": name,
                        "overall_first": first["accuracy"]["overall"],
                        "overall_rerun": row["accuracy"]["overall"],
                        "difference": row["accuracy"]["overall"] - first["accuracy"]["overall"],
                    }
                )
    return checkpoints, rows, reruns


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", help="result names in benchmarks/results (without .json), first wins")
    parser.add_argument("--exclude", nargs="*", default=[], metavar="RUN:GROUP",
                        help="leave a run's row group out, e.g. rows trained before a fix (recorded in the JSON)")
    parser.add_argument("--results_name", default="accuracy_vs_budget_combined", help="benchmarks/results/<name>.json and .png")
    args = parser.parse_args(argv)
    if args.results_name in args.runs:
        raise ValueError(f"--results_name {args.results_name} is one of the inputs; pick a new name.")
    runs = {name: load_run(name) for name in args.runs}
    check_same_setup(runs)
    excluded = parse_exclusions(args.exclude, runs)
    checkpoints, rows, reruns = merge_rows(runs, excluded)
    first = next(iter(runs.values()))
    majority = first["majority"]
    summary = benchmark.summarise(rows, majority)
    summary.sort(key=lambda e: (benchmark.ROW_GROUPS.index(e["group"]), e["label"], -e["tokens"]))
    payload = {
        "sources": {name: {"command": run["command"], "training_runs_done": run["training_runs_done"],
                           "total_s": run["total_s"], "warmup_final_loss": run["warmup_final_loss"]}
                    for name, run in runs.items()},
        "excluded": {name: sorted(groups) for name, groups in excluded.items()},
        "settings": {key: first["settings"][key] for key in (*SHARED_SETTINGS, "patch_grid", "allowed_budgets")},
        "majority": majority,
        "checkpoints": checkpoints,
        "rows": rows,
        "reruns": reruns,
        "training_s_summed": round(sum(c["train_s"] for c in checkpoints), 1),  # over runs and their workers
        "wall_s_of_sources": round(sum(run["total_s"] for run in runs.values()), 1),
        "summary": summary,
    }  # fmt: skip
    command = "python benchmarks/merge_accuracy_runs.py " + " ".join(sys.argv[1:] if argv is None else argv)
    path = measure.write_results(args.results_name, payload, command)
    benchmark.plot(summary, majority, first["settings"], path.with_suffix(".png"))

    headers, table = benchmark.summary_table(summary, majority)
    measure.print_table(headers, table)
    print()
    print(measure.markdown_table(headers, table))
    for rerun in reruns:
        print(
            f"rerun {rerun['checkpoint']}: {rerun['overall_first']:.3f} ({rerun['first']}) vs "
            f"{rerun['overall_rerun']:.3f} ({rerun['rerun']}), difference {rerun['difference']:+.3f}"
        )
    print(f"\nWrote {path} and .png: {len(checkpoints)} checkpoints, {len(rows)} rows, "
          f"{payload['training_s_summed'] / 3600:.1f} h of training summed over runs, "
          f"{payload['wall_s_of_sources'] / 3600:.1f} h wall time of the source runs.")  # fmt: skip
    return payload


if __name__ == "__main__":
    main()
