"""Where the visual-token budget is the bottleneck: the region probe on dense scenes at the paper's 24x24 patch grid.

    python benchmarks/token_bottleneck.py                      # the table: every row group, 3 seeds (see --help)
    python benchmarks/token_bottleneck.py --rows mlp avgpool --budgets 16 4 --seeds 0   # a part of it
    python benchmarks/token_bottleneck.py --train_images 64 --test_images 16 --warmup_steps 2 --probe_steps 3 \
        --budgets 16 --seeds 0 --results_name token_bottleneck_smoke        # a smoke run (seconds)

Scenes (`training/dense_scenes.py`): 192-px images of an 8x8 grid of cells, ~60% of them holding a small shape or a
printed word, so one token covers several things from 36 tokens down. A 2-layer CLIP-style tower (8-px patches ->
24x24 = 576 patches) is warmed up on per-cell labels as in the quick start, frozen, and run once; its hidden states are
cached in `--output_dir`. Then every row trains a fresh projector plus a small readout (`region_probe.py`) to name all
64 cells from the visual tokens, and scores the test scenes: accuracy over the filled cells (chance 1/30: 24 shapes and
6 words), and over words and shapes apart. Row groups (`--rows`):

- mlp: LLaVA-1.5's MLP, 576 tokens (the uncompressed reference);
- delta / official: the Delta projector, `shared_base` layout (the paper's text) / `official` (the authors' code);
- tokenpacker, avgpool: the baselines (avgpool at 576 is the MLP, so it is not run there);
- ablations: shared_base without EMHSA / without DeltaProjection / without its transformer block, at
  `--ablation_budgets`;
- elastic: one shared_base projector trained over `--budgets` (a budget drawn per batch), scored at each;
- official_memory: the official layout with `--near_memory_layers` as its multi-level memory, at `--ablation_budgets`.
  On a 2-layer tower the default memory is one level, hidden state 1, while the queries read hidden state 2; this
  row gives the memory the query layer too.

Every row is run alone, one after the other, and records its wall time. Results go to
`benchmarks/results/<results_name>.json` (rewritten after every row, with every command that added rows; `--reuse`
keeps the rows already there, so a killed or partial run continues, and refuses rows trained with other settings or
probed on another warm-up of the tower: a tower warmed up on another machine rounds differently) and a plot
`<results_name>.png`.
"""

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from delta_llava import DeltaLlavaConfig
from delta_llava.training.dense_scenes import DENSE_IMAGE_SIZE, make_dense_scenes
from delta_llava.training.quickstart import small_projector
from delta_llava.training.synthetic_vqa import CELL_LABEL_NAMES
from delta_llava.training.vision_warmup import warm_up_vision_tower

sys.path.insert(0, str(Path(__file__).resolve().parent))
from region_probe import tower_hidden_states, train_and_score_probe  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ROW_GROUPS = ("mlp", "delta", "official", "tokenpacker", "avgpool", "ablations", "elastic", "official_memory")
FULL_GRID = 576
ABLATIONS = {
    "no EMHSA": {"use_emhsa": False},
    "no DeltaProjection": {"use_delta_projection": False},
    "no transformer block": {"use_transformer_block": False},
}
WORD_CLASSES = {index for index, name in enumerate(CELL_LABEL_NAMES) if name.startswith("word ")}
TEXT_WIDTH = 128  # the visual tokens' width: the quick start's language model width


@dataclass(frozen=True)
class ProbeRow:
    """One trained projector: its series label, config fields, the budgets it trains at and is scored at, its seed."""

    label: str
    projector: dict = field(hash=False)
    train_budgets: tuple[int, ...]
    eval_budgets: tuple[int, ...]
    seed: int

    @property
    def key(self) -> str:
        return f"{self.label} | trained at {'/'.join(map(str, self.train_budgets))} | seed {self.seed}"


def projector_fields(projector_type: str, layout: str = "shared_base", **extra) -> dict:
    """The config fields of a row's projector: the quick start's small widths (`small_projector`) plus `extra`."""
    return {"projector_type": projector_type, **small_projector(projector_type, layout), **extra}


def plan_rows(args) -> list[ProbeRow]:
    """Every row the arguments ask for, seeds innermost, in `--rows` order."""
    rows = []
    compressed = [budget for budget in args.budgets if budget != FULL_GRID]
    for group in args.rows:
        if group == "mlp":
            plans = [("MLP", projector_fields("mlp2x_gelu"), [FULL_GRID])]
        elif group in ("delta", "official"):
            layout = "shared_base" if group == "delta" else "official"
            plans = [(f"delta {layout}", projector_fields("delta", layout), args.budgets)]
        elif group == "tokenpacker":
            plans = [("tokenpacker", projector_fields("tokenpacker"), args.budgets)]
        elif group == "avgpool":
            plans = [("avgpool", projector_fields("avgpool"), compressed)]
        elif group == "ablations":
            plans = [
                (name, projector_fields("delta", **switch), args.ablation_budgets) for name, switch in ABLATIONS.items()
            ]
        elif group == "official_memory":
            layers = args.near_memory_layers
            label = f"delta official, memory {layers}"
            plans = [(label, projector_fields("delta", "official", memory_layers=layers), args.ablation_budgets)]
        else:  # elastic: one projector for every budget
            budgets = tuple(args.budgets)
            elastic = projector_fields("delta")
            rows += [ProbeRow("elastic (shared_base)", elastic, budgets, budgets, seed) for seed in args.seeds]
            continue
        for label, fields, budgets in plans:
            rows += [ProbeRow(label, fields, (budget,), (budget,), seed) for budget in budgets for seed in args.seeds]
    return rows


def probe_config(tower_config: CLIPVisionConfig, row: ProbeRow) -> DeltaLlavaConfig:
    text_config = {"model_type": "llama", "hidden_size": TEXT_WIDTH, "intermediate_size": 2 * TEXT_WIDTH,
                   "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 8}  # fmt: skip
    return DeltaLlavaConfig(
        vision_config=tower_config.to_dict(),
        text_config=text_config,
        image_token_id=4,
        vision_feature_layer=-1,
        num_visual_tokens=row.train_budgets[0],
        **row.projector,
    )


def tower_settings(args) -> dict:
    return {name: getattr(args, name) for name in ("train_images", "test_images", "warmup_steps", "scene_seed")}


TRAINING_SETTINGS = ("probe_steps", "batch_size", "learning_rate")


def check_reusable(previous: dict, args, shared: dict, json_path: Path) -> None:
    """`--reuse` only extends a table whose rows were trained alike and on this same tower: raise otherwise."""
    settings = [*tower_settings(args), *TRAINING_SETTINGS]
    changed = [name for name in settings if previous["settings"][name] != getattr(args, name)]
    if changed:
        raise ValueError(
            f"--reuse: {json_path} was trained with other {', '.join(changed)}; rerun with the same values or choose "
            "another --results_name."
        )
    if previous["tower"]["warmup_final_loss"] != shared["warmup_final_loss"]:
        raise ValueError(
            f"--reuse: the rows in {json_path} were probed on another warm-up of the tower (final loss "
            f"{previous['tower']['warmup_final_loss']:.4f}, this one {shared['warmup_final_loss']:.4f}: another machine, "
            "CPU kernel or thread count rounds differently); rerun the table without --reuse."
        )


def build_tower_states(args, work: Path) -> dict:
    """Scenes -> warmed-up frozen tower -> cached hidden states (reused from `work` when built with the same settings)."""
    cache = work / "tower_states.pt"
    if cache.is_file():
        cached = torch.load(cache)
        if cached["settings"] == tower_settings(args):
            print(f"Reusing the tower's hidden states in {cache}")
            return cached
    started = time.perf_counter()
    train = make_dense_scenes(args.train_images, seed=args.scene_seed)
    test = make_dense_scenes(args.test_images, seed=args.scene_seed + 1000)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": DENSE_IMAGE_SIZE}, crop_size={"height": DENSE_IMAGE_SIZE, "width": DENSE_IMAGE_SIZE}
    )
    pixels = {name: processor([images[0] for images in split["images"]], return_tensors="pt")["pixel_values"]
              for name, split in (("train", train), ("test", test))}  # fmt: skip
    labels = {name: torch.tensor(split["cell_labels"]) for name, split in (("train", train), ("test", test))}
    config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                              image_size=DENSE_IMAGE_SIZE, patch_size=8)  # fmt: skip
    torch.manual_seed(args.scene_seed)
    tower = CLIPVisionModel(config)
    losses = warm_up_vision_tower(
        tower, pixels["train"], labels["train"], len(CELL_LABEL_NAMES), args.warmup_steps, learning_rate=5e-3,
        seed=args.scene_seed,
    )  # fmt: skip
    built = {
        "settings": tower_settings(args),
        "tower_config": config.to_dict(),
        "warmup_final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "train_states": tower_hidden_states(tower, pixels["train"], desc="tower features (train)"),
        "test_states": tower_hidden_states(tower, pixels["test"], desc="tower features (test)"),
        "train_labels": labels["train"],
        "test_labels": labels["test"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    work.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(".partial")
    torch.save(built, partial)
    partial.replace(cache)  # never a half-written cache
    return built


def summarise(results: list[dict]) -> list[dict]:
    """Mean and std over seeds of each (label, trained budgets, scored budget)."""
    groups: dict[tuple, list[dict]] = {}
    for result in results:
        for budget, scores in result["scores"].items():
            groups.setdefault((result["label"], tuple(result["train_budgets"]), int(budget)), []).append(
                {**scores, "seconds": result["train_seconds"] + result["score_seconds"]}
            )
    summary = []
    for (label, trained, budget), entries in groups.items():
        entry = {"label": label, "budget": budget, "trained_at": list(trained), "seeds": len(entries)}
        for metric in ("filled", "words", "shapes"):
            values = [scores[metric] for scores in entries]
            entry[metric] = statistics.mean(values)
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        entry["seconds"] = statistics.mean(scores["seconds"] for scores in entries)
        summary.append(entry)
    return summary


def separation(summary: list[dict]) -> dict:
    """Issue 31's check: the MLP at 576 against average pooling at 16 tokens or fewer, on filled-cell accuracy."""
    mlp = next((entry for entry in summary if entry["label"] == "MLP"), None)
    pooled = [entry for entry in summary if entry["label"] == "avgpool" and entry["budget"] <= 16]
    if mlp is None or not pooled:
        return {}
    stds = [entry["filled_std"] for entry in summary if entry["filled_std"] is not None]
    return {
        "mlp_576": mlp["filled"],
        "points_above_avgpool": {entry["budget"]: round(100 * (mlp["filled"] - entry["filled"]), 1) for entry in pooled},
        "largest_seed_std_points": round(100 * max(stds), 2) if stds else None,
    }


def print_table(summary: list[dict]) -> None:
    budgets = sorted({entry["budget"] for entry in summary}, reverse=True)
    labels = list(dict.fromkeys(entry["label"] for entry in summary))
    print("\nfilled-cell accuracy (mean ± std over seeds); chance 0.033")
    print(f"{'row':34s}" + "".join(f"{budget:>16d}" for budget in budgets))
    for label in labels:
        cells = []
        for budget in budgets:
            entry = next((e for e in summary if e["label"] == label and e["budget"] == budget), None)
            std = "" if entry is None or entry["filled_std"] is None else f" ± {entry['filled_std']:.3f}"
            cells.append("" if entry is None else f"{entry['filled']:.3f}{std}")
        print(f"{label:34s}" + "".join(f"{cell:>16s}" for cell in cells))


SERIES_STYLE = {"MLP": "k*", "avgpool": "C0o-", "tokenpacker": "C1s-", "delta shared_base": "C2^-",
                "delta official": "C3v-", "elastic (shared_base)": "C2^--"}  # fmt: skip


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8), sharey=True)
    for axis, metric in zip(axes, ("filled", "words", "shapes")):
        for label in dict.fromkeys(entry["label"] for entry in summary):
            entries = sorted((e for e in summary if e["label"] == label), key=lambda e: e["budget"])
            style = SERIES_STYLE.get(label, "x")
            axis.errorbar([e["budget"] for e in entries], [e[metric] for e in entries],
                          yerr=[e[f"{metric}_std"] or 0 for e in entries], fmt=style, capsize=3, label=label)  # fmt: skip
        axis.axhline(1 / 30, color="grey", linestyle=":", label="chance (1/30)")
        axis.set_xscale("log")
        axis.set_xlabel("visual tokens per image")
        axis.set_title({"filled": "every filled cell", "words": "printed words", "shapes": "shapes"}[metric])
    axes[0].set_ylabel("accuracy naming a cell's content")
    axes[-1].legend(fontsize=7)
    figure.suptitle("Region probe on dense 24x24-patch scenes (mean ± std over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_arguments(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", choices=ROW_GROUPS, default=list(ROW_GROUPS))
    parser.add_argument("--budgets", nargs="+", type=int, default=[576, 144, 36, 16, 4, 1])
    parser.add_argument("--ablation_budgets", nargs="+", type=int, default=[36, 16])
    parser.add_argument("--near_memory_layers", nargs="+", type=int, default=[1, 2],
                        help="the official_memory row's memory levels (the queries read hidden state 2)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train_images", type=int, default=3000)
    parser.add_argument("--test_images", type=int, default=500)
    parser.add_argument("--scene_seed", type=int, default=0, help="scenes and tower (fixed across rows and seeds)")
    parser.add_argument("--warmup_steps", type=int, default=800, help="the tower's warm-up on per-cell labels")
    parser.add_argument("--probe_steps", type=int, default=600)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--output_dir", default="outputs/token_bottleneck", help="the tower's cached hidden states")
    parser.add_argument("--results_name", default="token_bottleneck")
    parser.add_argument("--reuse", action="store_true",
                        help="keep every row already in the results JSON and run only the planned rows it lacks")
    args = parser.parse_args(argv)
    for budget in [*args.budgets, *args.ablation_budgets]:
        if budget not in [576, 144, 64, 36, 16, 9, 4, 1]:
            parser.error(f"budget {budget} is not possible on a 24x24 patch grid: use one of 576 144 64 36 16 9 4 1.")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_arguments(argv)
    json_path = RESULTS / f"{args.results_name}.json"
    shared = build_tower_states(args, Path(args.output_dir))
    done, commands = {}, []
    if args.reuse and json_path.is_file():
        previous = json.loads(json_path.read_text())
        check_reusable(previous, args, shared, json_path)
        done = {result["key"]: result for result in previous["rows"]}
        commands = previous["commands"]
    commands.append("python benchmarks/token_bottleneck.py " + " ".join(sys.argv[1:] if argv is None else argv))
    tower_config = CLIPVisionConfig(**shared["tower_config"])
    rows = plan_rows(args)
    print(f"{len(rows)} rows ({sum(row.key in done for row in rows)} reused); tower warm-up loss "
          f"{shared['warmup_final_loss']:.3f}")  # fmt: skip
    results = list(done.values())  # every reused row, those of other row groups too
    for index, row in enumerate(rows):
        if row.key in done:
            continue
        outcome = train_and_score_probe(
            probe_config(tower_config, row), shared["train_states"], shared["train_labels"], shared["test_states"],
            shared["test_labels"], list(row.train_budgets), list(row.eval_budgets), len(CELL_LABEL_NAMES),
            WORD_CLASSES, args.probe_steps, row.seed, args.batch_size, args.learning_rate,
            desc=f"[{index + 1}/{len(rows)}] {row.key}",
        )  # fmt: skip
        results.append({"key": row.key, **asdict(row), **outcome})
        filled = ", ".join(f"{budget}: {scores['filled']:.3f}" for budget, scores in outcome["scores"].items())
        print(f"[{index + 1}/{len(rows)}] {row.key}: filled {filled} ({outcome['train_seconds']:.0f} s)", flush=True)
        write_results(args, commands, shared, results, json_path)
    summary = write_results(args, commands, shared, results, json_path)
    print_table(summary)
    print(f"separation (issue 31): {separation(summary)}")
    print(f"Wrote {json_path} and {json_path.with_suffix('.png')}")
    return summary


def write_results(args, commands: list[str], shared: dict, results: list[dict], json_path: Path) -> list[dict]:
    summary = summarise(results)
    payload = {
        "commands": commands,
        "settings": vars(args),
        "machine": {"torch_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()},
        "tower": {"warmup_final_loss": shared["warmup_final_loss"], "build_seconds": shared["seconds"]},
        "separation": separation(summary),
        "summary": summary,
        "rows": results,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    partial = json_path.with_suffix(".partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    partial.replace(json_path)
    plot(summary, json_path.with_suffix(".png"))
    return summary


if __name__ == "__main__":
    main()
