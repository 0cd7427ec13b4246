"""Speed of length-split steps on the quick start's training, as ratios measured in one run.

The same batches' forward and backward as one pass (every row padded to the batch's longest) and as 2, 3, ... passes
over rows of similar length (`--length_split_passes`).

    python benchmarks/length_split_speed.py                                        # ~6 min alone on 2 cores
    python benchmarks/length_split_speed.py --batches 4 --repeats 1 --no-json      # smoke run, under a minute

The quick start's model, data and elastic budgets as its defaults build them (2-layer Llama with 32 eager heads,
shared_base Delta projector, 9 drawn three times as often; `--elastic_budgets`: the quick start's 16/9/1 by default;
the recorded results were measured with 36/16/9/1, its default then), from `--train_samples` questions,
the tower warmed up for one step only (speed does not depend on its weights) and its features memoised as in the quick
start. Every batch goes through the trainer's training step (forward and backward, no optimizer step: every setting
sees the same weights) once per setting per repeat, the settings in rotating order; a setting's time is summed over
the batches of a repeat, its ratio to one pass taken within the repeat and reported as median (min-max) over the
repeats. Also per padded width (the batch's budget plus its longest text): the median time per batch of each setting,
and the positions each setting computes. One torch thread, as the quick start trains. Writes
benchmarks/results/length_split_speed.json.
"""

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from delta_llava.training.length_split_step import length_split_groups
from delta_llava.training.quickstart import (
    QuickStartArguments,
    build_data,
    build_models,
    check_arguments,
    cpu_threads,
    train_in_phases,
)
from delta_llava.training.vision_feature_cache import cached_vision_tower
from measure import print_table, write_results


def training_batches(trainer, count: int) -> list[dict]:
    """The first `count` batches the quick start's trainer would train on."""
    batches = []
    for batch in trainer.get_train_dataloader():
        batches.append(trainer._prepare_inputs(batch))
        if len(batches) == count:
            return batches
    raise ValueError(f"--batches {count} is more than --train_samples holds: give fewer batches or more samples.")


def step_seconds(trainer, batch: dict, passes: int) -> float:
    """Wall time of one training step (forward + backward) over `batch` in `passes` length-split passes."""
    trainer.length_split_passes = passes
    trainer.model.zero_grad()
    start = time.perf_counter()
    trainer.training_step(trainer.model, dict(batch))
    return time.perf_counter() - start


def computed_positions(batch: dict, passes: int) -> int:
    """Language-model positions the step computes: rows x longest row, summed over its passes."""
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    return sum(len(group) * max(lengths[row] for row in group) for group in length_split_groups(lengths, passes))


def measure(trainer, batches: list[dict], settings: list[int], repeats: int) -> tuple[dict, dict]:
    """Per setting: its total seconds in each repeat, and each batch's seconds in each repeat."""
    totals = {passes: [] for passes in settings}
    per_batch = {passes: [[] for _ in batches] for passes in settings}
    for repeat in range(repeats):
        order = settings[repeat % len(settings) :] + settings[: repeat % len(settings)]
        sums = dict.fromkeys(settings, 0.0)
        for index, batch in enumerate(tqdm(batches, desc=f"repeat {repeat + 1}/{repeats}")):
            for passes in order:
                seconds = step_seconds(trainer, batch, passes)
                sums[passes] += seconds
                per_batch[passes][index].append(seconds)
        for passes in settings:
            totals[passes].append(sums[passes])
    return totals, per_batch


def summarise(batches: list[dict], settings: list[int], totals: dict, per_batch: dict) -> dict:
    """Ratios to one pass (median, min, max over repeats), and per padded width the median ms and positions."""
    ratios = {
        passes: [total / one for total, one in zip(totals[passes], totals[1])] for passes in settings
    }
    overall = {
        str(passes): {
            "ratio_to_one_pass": {"median": statistics.median(r), "min": min(r), "max": max(r)},
            "ms_per_batch_median": 1000 * statistics.median(totals[passes]) / len(batches),
            "positions": sum(computed_positions(batch, passes) for batch in batches),
        }
        for passes, r in ratios.items()
    }
    widths = {}
    for index, batch in enumerate(batches):
        widths.setdefault(batch["input_ids"].shape[1], []).append(index)
    by_width = {
        str(width): {
            "batches": len(indices),
            **{
                f"ms_{passes}_passes": 1000 * statistics.median(t for i in indices for t in per_batch[passes][i])
                for passes in settings
            },
            **{
                f"positions_{passes}_passes": sum(computed_positions(batches[i], passes) for i in indices)
                for passes in settings
            },
        }
        for width, indices in sorted(widths.items())
    }
    return {"overall": overall, "by_padded_width": by_width}


def print_report(results: dict, settings: list[int]) -> None:
    """The overall ratios, then the median milliseconds per batch at each padded width."""
    one_pass_positions = results["overall"]["1"]["positions"]
    rows = []
    for passes, row in results["overall"].items():
        ratio = row["ratio_to_one_pass"]
        spread = f"{ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})"
        positions = f"{row['positions'] / one_pass_positions:.3f}"
        rows.append([passes, f"{row['ms_per_batch_median']:.1f}", spread, positions])
    print_table(["passes", "ms / batch", "time vs 1 pass", "positions vs 1 pass"], rows)
    print()
    widths = results["by_padded_width"]
    print_table(
        ["padded width", "batches", *[f"ms, {passes} pass(es)" for passes in settings]],
        [[width, row["batches"], *[f"{row[f'ms_{p}_passes']:.1f}" for p in settings]] for width, row in widths.items()],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--passes", type=int, nargs="+", default=[2, 3], help="settings compared with one pass")
    parser.add_argument("--batches", type=int, default=60, help="batches of 32, the quick start's first ones")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every batch and setting")
    parser.add_argument("--train_samples", type=int, default=2000, help="synthetic questions the batches come from")
    parser.add_argument("--seed", type=int, default=0, help="the quick start's seed (data, models, batch order)")
    parser.add_argument(
        "--elastic_budgets", type=int, nargs="+", default=QuickStartArguments().elastic_budgets,
        help="budgets the batches are drawn from, as the quick start's (it must include 9, its own budget)",
    )
    parser.add_argument("--no-json", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if any(passes < 2 for passes in args.passes) or args.batches < 1 or args.repeats < 1:
        parser.error("--passes must each be 2 or more, --batches and --repeats at least 1.")
    settings = [1, *sorted(set(args.passes))]

    with tempfile.TemporaryDirectory() as folder, cpu_threads(1):
        out = Path(folder)
        quick_start = QuickStartArguments(
            output_dir=folder, train_samples=args.train_samples, test_samples=1, warmup_steps=1, train_steps=1,
            single_budget_steps=0, seed=args.seed, dataloader_workers=0, elastic_budgets=args.elastic_budgets,
        )  # fmt: skip
        check_arguments(quick_start)
        train_set, _ = build_data(quick_start, out)
        build_models(quick_start, out, train_set)
        trainer = train_in_phases(quick_start, out, out / "checkpoint", curves=None)
        config = trainer.model.config
        read_layers = [config.vision_feature_layer, *config.memory_layers]
        with cached_vision_tower(trainer.model.model.vision_tower, read_layers):
            batches = training_batches(trainer, args.batches)
            for batch in tqdm(batches, desc="untimed pass (fills the tower-feature cache)"):
                step_seconds(trainer, batch, 1)
            totals, per_batch = measure(trainer, batches, settings, args.repeats)
    results = summarise(batches, settings, totals, per_batch)

    print_report(results, settings)
    if not args.no_json:
        command = "python " + shlex.join([sys.argv[0], *(argv or sys.argv[1:])])
        path = write_results("length_split_speed", {"settings": vars(args), **results}, command)
        print(f"\nWrote {path}")


if __name__ == "__main__":
    main()
