"""Speed of Delta-LLaVA on this CPU as ratios measured in one run: the Delta projector (both layouts) at each budget vs
the MLP at 576.

    python benchmarks/speed_cpu.py                      # defaults, about 7 minutes on the 2-core machine
    python benchmarks/speed_cpu.py --repeats 1 --train-repeats 1 --budgets 144 1 --train-budgets 1 \
        --projector-repeats 1 --new-tokens 4 --no-json             # smoke run, about 2 minutes

One mid-size model with random weights: a Llama LLM (hidden 1024, 12 layers, FFN 2816, vocab 32064; 220M parameters
with lm_head) behind a CLIP-like tower shrunk to width 512 and 8 layers (25M parameters, 14-pixel patches at
336 px, so the 24x24 grid and every paper budget stay) to keep the run short. Measured, with every configuration of a
section visited once per repeat in rotating order (round-robin); a ratio vs the MLP at 576 is taken within each
repeat (the two runs are seconds apart, under the same load) and reported as median (min-max) over the repeats:

- inference: time to first token (vision + projector + prefill of 64 text + V tokens) and decode tokens/s over a
  fixed number of new tokens (min_new_tokens = max_new_tokens, greedy), from timestamps a logits processor takes at
  every generated token;
- projector forward time of every projector variant (both delta layouts and the baselines) at the same budgets, on
  the same random tower features, with 1 and with 8 images per call (`--projector-batches`), beside its FLOPs in
  this same setup (FlopCounterMode on the meta device): the time ratio vs the MLP at 576 (same images per call) over
  the FLOPs ratio says how efficiently this CPU runs the projector's FLOPs compared with the MLP's (1.0 = equally
  well). One image per call is time to first token; several are training micro-batches and batched inference, where
  the few-row products of small budgets stop being weight-bound;
- training samples/s with real optimizer steps in a plain loop (forward with labels, backward, AdamW.step), stage 1
  (projector trains, tower and LLM frozen) and stage 2 (projector + LLM + lm_head), batch of one sample;
- peak memory: for the first (untimed, warm-up) run of every configuration, the resident set's high-water mark above
  the RSS at its start (Linux: free memory is handed back with malloc_trim, then /proc/self/clear_refs resets
  VmHWM), i.e. the activations, KV cache, gradients and Adam states that run adds on top of the loaded weights.

torch runs with a fixed thread count (default 1: on 2 cores shared with other jobs, 2 threads were several times
slower), and malloc keeps freed memory for reuse (`keep_freed_memory`; `--glibc-default-allocator` turns it off).
Writes benchmarks/results/speed_cpu.json and speed_cpu.png.
"""

import argparse
import ctypes
import gc
import math
import os
import statistics
import time
from collections.abc import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from delta_llava import DeltaLlavaConfig, DeltaLlavaForConditionalGeneration
from delta_llava.modeling_delta_llava import PROJECTORS_READING_MEMORY, build_projector
from measure import PAPER_BUDGETS, PROJECTOR_VARIANTS, RESULTS_DIR, print_table, projector_cost, write_results

TEXT_CONFIG = {
    "model_type": "llama",
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 12,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "vocab_size": 32064,
    "max_position_embeddings": 2048,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "image_size": 336,
    "patch_size": 14,
}
IMAGE_TOKEN_ID = 32000
BASELINE = ("mlp2x_gelu", 576)
DELTA_VARIANTS = ("delta official", "delta shared_base")
MODEL_VARIANTS = ("mlp2x_gelu", *DELTA_VARIANTS)  # the variants built as whole models (inference, training)
EFFICIENCY_BAR = 1.3  # a delta layout's time ratio vs the MLP may exceed its FLOPs ratio by this much

# Paper table 4 (one epoch, h:mm:ss) and figure 3 (tokens/s), to set our ratios beside.
PAPER_TRAINING_TIME = {
    576: ("1:24:01", "4:34:20"), 144: ("0:33:32", "3:21:37"), 64: ("0:23:24", "3:17:23"),
    16: ("0:18:36", "3:14:29"), 4: ("0:16:32", "3:12:34"), 1: ("0:16:00", "2:51:50"),
}
PAPER_DECODE_TOKENS_PER_S = {576: 23.96, 1: 37.08}


def paper_training_speedup(stage: int, budget: int) -> float | None:
    """The paper's one-epoch time at 576 over the time at `budget` (stage 1 = pretraining, 2 = finetuning)."""
    def seconds(text: str) -> int:
        hours, minutes, secs = (int(x) for x in text.split(":"))
        return 3600 * hours + 60 * minutes + secs

    if budget not in PAPER_TRAINING_TIME:
        return None
    return seconds(PAPER_TRAINING_TIME[576][stage - 1]) / seconds(PAPER_TRAINING_TIME[budget][stage - 1])


# ---------------------------------------------------------------- memory

class PeakMemory:
    """High-water mark of the resident set above its level at entry, in MiB (None where Linux does not allow it)."""

    def __init__(self):
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            self._trim = None

    @staticmethod
    def _status_kib(field: str) -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise KeyError(field)

    def __enter__(self):
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        self.extra_mib = None
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets VmHWM to the current RSS
            self._start = self._status_kib("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc):
        if self._start is not None:
            self.extra_mib = (self._status_kib("VmHWM") - self._start) / 1024
        return False


def keep_freed_memory() -> bool:
    """
    Has glibc's malloc keep freed memory for reuse, as jemalloc and tcmalloc (the allocators PyTorch's CPU tuning
    guide recommends) do: no mmap for large blocks (M_MMAP_MAX = 0) and no trimming of the heap (M_TRIM_THRESHOLD at
    its maximum). With glibc's defaults a large tensor is a fresh mapping every time and its first write page-faults,
    measured here at ~2.6 ms per 9.4 MB; that time lands on whichever op first writes the tensor. Returns whether
    both settings took (False without glibc).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


# ---------------------------------------------------------------- models and inputs

def speed_config(variant: str, text_config: dict = TEXT_CONFIG, vision_config: dict = VISION_CONFIG, **overrides):
    """The benchmark's model with a projector variant of `PROJECTOR_VARIANTS` (e.g. "delta official")."""
    projector_type, variant_overrides = PROJECTOR_VARIANTS[variant]
    budget = 576 if projector_type == "mlp2x_gelu" else 144
    grid = vision_config["image_size"] // vision_config["patch_size"]
    return DeltaLlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        projector_type=projector_type,
        num_visual_tokens=min(budget, grid * grid),
        image_token_id=min(IMAGE_TOKEN_ID, text_config["vocab_size"] - 1),
        **{**variant_overrides, **overrides},
    )


def build_model(config: DeltaLlavaConfig, seed: int = 0) -> DeltaLlavaForConditionalGeneration:
    torch.manual_seed(seed)
    return DeltaLlavaForConditionalGeneration(config)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_inputs(config: DeltaLlavaConfig, budget: int, text_tokens: int, batch_size: int = 1, labels: bool = False):
    """[bos] + V image placeholders + (text_tokens - 1) word tokens per sample, and one random image each."""
    generator = torch.Generator().manual_seed(budget)
    words = torch.randint(3, min(config.text_config.vocab_size, config.image_token_id), (batch_size, text_tokens - 1),
                          generator=generator)
    images = torch.full((batch_size, budget), config.image_token_id)
    bos = torch.full((batch_size, 1), config.text_config.bos_token_id)
    input_ids = torch.cat([bos, images, words], dim=1)
    size = config.vision_config.image_size
    inputs = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator),
    }
    if labels:  # loss on the last quarter of the text, like an answer after a question
        target = input_ids.clone()
        target[:, : input_ids.shape[1] - max(1, text_tokens // 4)] = -100
        inputs["labels"] = target
    return inputs


# ---------------------------------------------------------------- round-robin timing

def round_robin(tasks: dict[str, Callable[[], dict]], repeats: int, warmup: bool = True) -> dict[str, dict]:
    """Runs every task once per repeat, starting each repeat one task later; a memory-measured warm-up run first."""
    names = list(tasks)
    results = {name: {"runs": []} for name in names}
    if warmup:
        for name in names:
            with PeakMemory() as memory:
                tasks[name]()
            results[name]["peak_extra_mib"] = memory.extra_mib
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            results[name]["runs"].append(tasks[name]())
    return results


class TokenClock(LogitsProcessor):
    """Takes a timestamp each time generate asks for the next token's scores."""

    def __init__(self):
        self.stamps = []

    def __call__(self, input_ids, scores):
        self.stamps.append(time.perf_counter())
        return scores


def generation_task(model, budget: int, text_tokens: int, new_tokens: int) -> Callable[[], dict]:
    inputs = make_inputs(model.config, budget, text_tokens)

    def run() -> dict:
        clock = TokenClock()
        start = time.perf_counter()
        with torch.no_grad():
            output = model.generate(
                **inputs,
                num_visual_tokens=budget,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                logits_processor=LogitsProcessorList([clock]),
            )
        if output.shape[1] != inputs["input_ids"].shape[1] + new_tokens or len(clock.stamps) != new_tokens:
            raise RuntimeError(f"generate made {output.shape[1] - inputs['input_ids'].shape[1]} tokens, not {new_tokens}")
        decode_time = clock.stamps[-1] - clock.stamps[0]
        return {
            "ttft_s": clock.stamps[0] - start,
            "decode_tokens_per_s": (new_tokens - 1) / decode_time if new_tokens > 1 else None,
            "total_s": clock.stamps[-1] - start,
        }

    return run


def projector_task(projector, features: torch.Tensor, memory: torch.Tensor | None, side: int) -> Callable[[], dict]:
    def once() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            projector(features, memory, side)
        return time.perf_counter() - start

    calls = max(1, math.ceil(0.2 / once()))  # a measurement of at least ~0.2 s, so the timer's grain does not matter

    def run() -> dict:
        return {"forward_s": sum(once() for _ in range(calls)) / calls, "calls": calls}

    return run


def set_stage(model, stage: int) -> list[torch.nn.Parameter]:
    """Stage 1: the projector trains; stage 2: projector + LLM + lm_head. The tower stays frozen in both."""
    model.requires_grad_(False)
    model.model.multi_modal_projector.requires_grad_(True)
    if stage == 2:
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def training_task(model, stage: int, budget: int, text_tokens: int, batch_size: int) -> Callable[[], dict]:
    inputs = make_inputs(model.config, budget, text_tokens, batch_size, labels=True)
    state = {}

    def run() -> dict:
        parameters = set_stage(model, stage)
        if "optimizer" not in state:  # Adam states are created by the first (warm-up, memory-measured) step
            state["optimizer"] = torch.optim.AdamW(parameters, lr=1e-5)
        optimizer = state["optimizer"]
        model.train()
        start = time.perf_counter()
        loss = model(**inputs, num_visual_tokens=budget).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        model.eval()
        return {"step_s": elapsed, "samples_per_s": batch_size / elapsed, "loss": loss.item()}

    return run


# ---------------------------------------------------------------- the three sections

def median_of(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run[key] is not None]
    return statistics.median(values) if values else None


def paired_ratio(runs: list[dict], base_runs: list[dict], key: str, higher_is_faster: bool) -> dict | None:
    """Speedup vs the baseline from runs of the same repeat (the same round of the round-robin): median and range."""
    if runs[0][key] is None:
        return None
    ratios = [(run[key] / base[key]) if higher_is_faster else (base[key] / run[key]) for run, base in zip(runs, base_runs)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def delta_configs(models: dict, budgets: list[int]) -> list[tuple[str, int]]:
    """The baseline, then every delta variant among `models` at each budget."""
    return [BASELINE] + [(variant, budget) for variant in DELTA_VARIANTS if variant in models for budget in budgets]


def measure_inference(models: dict, budgets: list[int], text_tokens: int, new_tokens: int, repeats: int) -> list[dict]:
    configs = delta_configs(models, budgets)
    tasks = {f"{kind}@{budget}": generation_task(models[kind], budget, text_tokens, new_tokens) for kind, budget in configs}
    results = round_robin(tasks, repeats)
    rows = []
    for (kind, budget), name in zip(configs, tasks):
        runs = results[name]["runs"]
        rows.append({
            "variant": kind, "num_visual_tokens": budget, "runs": runs,
            "ttft_s": median_of(runs, "ttft_s"), "decode_tokens_per_s": median_of(runs, "decode_tokens_per_s"),
            "peak_extra_mib": results[name]["peak_extra_mib"],
        })
    for row in rows:
        row["ttft_speedup"] = paired_ratio(row["runs"], rows[0]["runs"], "ttft_s", higher_is_faster=False)
        row["decode_speedup"] = paired_ratio(row["runs"], rows[0]["runs"], "decode_tokens_per_s", higher_is_faster=True)
    return rows


def measure_projectors(make_config: Callable[[str], DeltaLlavaConfig], budgets: list[int], repeats: int,
                       models: dict | None = None, batch_sizes: tuple[int, ...] = (1,)) -> list[dict]:
    """Every projector variant at each budget (the MLP at the full grid) with B images per call for each B in
    `batch_sizes`, on the same random tower features, with its FLOPs per image in the same setup. Ratios are taken
    against the MLP at 576 with the same B."""
    reference = make_config("delta official")
    grid, width = reference.patch_grid_size, reference.vision_config.hidden_size
    projectors = {}
    for variant in PROJECTOR_VARIANTS:
        if models and variant in models:
            projectors[variant] = models[variant].model.multi_modal_projector
        else:
            torch.manual_seed(0)
            projectors[variant] = build_projector(make_config(variant)).eval()
    reads_memory = {v for v, (projector_type, _) in PROJECTOR_VARIANTS.items() if projector_type in PROJECTORS_READING_MEMORY}
    configs = [BASELINE] + [(v, b) for b in budgets for v in PROJECTOR_VARIANTS if v != "mlp2x_gelu"]
    flops = {(variant, budget): projector_cost(make_config(variant), budget)[0] for variant, budget in configs}
    rows = []
    for batch in batch_sizes:
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(batch, grid * grid, width, generator=generator)
        memory = torch.randn(batch, len(reference.memory_layers), grid * grid, width, generator=generator)
        tasks = {
            f"{variant}@{budget}": projector_task(
                projectors[variant], features, memory if variant in reads_memory else None,
                reference.check_num_visual_tokens(budget),
            )
            for variant, budget in configs
        }
        results = round_robin(tasks, repeats, warmup=False)
        batch_rows = [
            {"variant": variant, "num_visual_tokens": budget, "images_per_call": batch,
             "parameters": parameter_count(projectors[variant]), "flops": flops[variant, budget],
             "runs": results[name]["runs"], "forward_s": median_of(results[name]["runs"], "forward_s")}
            for (variant, budget), name in zip(configs, tasks)
        ]
        baseline = batch_rows[0]
        for row in batch_rows:  # > 1: slower than the MLP at 576
            row["time_vs_mlp_576"] = paired_ratio(row["runs"], baseline["runs"], "forward_s", higher_is_faster=True)
            row["flops_vs_mlp_576"] = row["flops"] / baseline["flops"]
            row["time_over_flops_ratio"] = row["time_vs_mlp_576"]["median"] / row["flops_vs_mlp_576"]
        rows += batch_rows
    return rows


def measure_training(models: dict, budgets: list[int], stages: list[int], text_tokens: int, batch_size: int,
                     repeats: int) -> list[dict]:
    configs = [(stage, kind, budget) for stage in stages for kind, budget in delta_configs(models, budgets)]
    tasks = {
        f"stage{stage}:{kind}@{budget}": training_task(models[kind], stage, budget, text_tokens, batch_size)
        for stage, kind, budget in configs
    }
    results = round_robin(tasks, repeats)
    rows = []
    for (stage, kind, budget), name in zip(configs, tasks):
        runs = results[name]["runs"]
        rows.append({
            "stage": stage, "variant": kind, "num_visual_tokens": budget, "batch_size": batch_size,
            "runs": runs, "samples_per_s": median_of(runs, "samples_per_s"),
            "peak_extra_mib": results[name]["peak_extra_mib"],
        })
    for row in rows:
        base = next(r for r in rows if r["stage"] == row["stage"] and (r["variant"], r["num_visual_tokens"]) == BASELINE)
        row["speedup"] = paired_ratio(row["runs"], base["runs"], "samples_per_s", higher_is_faster=True)
        row["paper_speedup"] = paper_training_speedup(row["stage"], row["num_visual_tokens"])
    return rows


# ---------------------------------------------------------------- report

def fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_ratio(ratio: dict | None) -> str:
    return "-" if ratio is None else f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})"


def print_report(inference: list[dict], projectors: list[dict], training: list[dict]) -> None:
    print("\nInference (medians; speedup = vs mlp2x_gelu@576 in the same repeat: median (min-max) over repeats)")
    print_table(
        ["projector", "V", "TTFT s", "TTFT speedup", "decode tok/s", "decode speedup", "paper tok/s", "peak +MiB"],
        [[r["variant"], r["num_visual_tokens"], fmt(r["ttft_s"], 3), fmt_ratio(r["ttft_speedup"]),
          fmt(r["decode_tokens_per_s"], 1), fmt_ratio(r["decode_speedup"]),
          fmt(PAPER_DECODE_TOKENS_PER_S.get(r["num_visual_tokens"]) if r["variant"] == "mlp2x_gelu"
              or r["num_visual_tokens"] != 576 else None), fmt(r["peak_extra_mib"], 0)] for r in inference],
    )
    print("\nProjector forward, B images per call (medians); GFLOPs per image, in this same setup; ratios vs the MLP "
          "at 576 with the same B; time ratio / FLOPs ratio: 1.0 = the projector's FLOPs run as fast as the MLP's")
    print_table(
        ["projector", "V", "B", "params (M)", "GFLOPs", "ms", "time vs mlp@576", "FLOPs vs mlp@576",
         "time/FLOPs ratio"],
        [[r["variant"], r["num_visual_tokens"], r["images_per_call"], fmt(r["parameters"] / 1e6), fmt(r["flops"] / 1e9),
          fmt(1e3 * r["forward_s"], 1), fmt_ratio(r["time_vs_mlp_576"]), fmt(r["flops_vs_mlp_576"]),
          fmt(r["time_over_flops_ratio"])] for r in projectors],
    )
    for variant in DELTA_VARIANTS:
        for batch in sorted({r["images_per_call"] for r in projectors}):
            ratios = [r["time_over_flops_ratio"] for r in projectors
                      if r["variant"] == variant and r["images_per_call"] == batch]
            if ratios:
                verdict = "within" if max(ratios) <= EFFICIENCY_BAR else "NOT within"
                print(f"{variant}, {batch} image(s) per call: time ratio / FLOPs ratio {min(ratios):.2f}-"
                      f"{max(ratios):.2f}, {verdict} {EFFICIENCY_BAR}x")
    print("\nTraining (medians; speedup = samples/s vs mlp2x_gelu@576, same stage and repeat; paper = table 4 epoch times)")
    print_table(
        ["stage", "projector", "V", "samples/s", "speedup", "paper speedup", "peak +MiB"],
        [[r["stage"], r["variant"], r["num_visual_tokens"], fmt(r["samples_per_s"], 3), fmt_ratio(r["speedup"]),
          fmt(r["paper_speedup"]), fmt(r["peak_extra_mib"], 0)] for r in training],
    )


def errorbar(ax, xs: list, ratios: list[dict], fmt_: str, label: str, colour: str | None = None) -> None:
    """Medians with the min-max range over repeats."""
    medians = [r["median"] for r in ratios]
    spread = [[m - r["min"] for m, r in zip(medians, ratios)], [r["max"] - m for m, r in zip(medians, ratios)]]
    ax.errorbar(xs, medians, yerr=spread, fmt=fmt_, capsize=3, label=label, color=colour)


VARIANT_STYLE = {"delta official": ("#dd8452", "official"), "delta shared_base": ("#c44e52", "shared_base")}


def plot(inference: list[dict], projectors: list[dict], training: list[dict], path, threads: int | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    for variant, (colour, name) in VARIANT_STYLE.items():
        delta = [r for r in inference if r["variant"] == variant]
        if not delta:
            continue
        budgets = [r["num_visual_tokens"] for r in delta]
        for key, marker, label in (("ttft_speedup", "o-", "time to first token"), ("decode_speedup", "s:", "decode tok/s")):
            if all(r[key] for r in delta):
                errorbar(ax, budgets, [r[key] for r in delta], marker, f"{name}: {label}", colour)
        ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.axhline(1.0, color="gray", lw=1, ls="--", label="MLP @ 576")
    paper = PAPER_DECODE_TOKENS_PER_S
    ax.plot([1], [paper[1] / paper[576]], "k*", ms=10, label="paper decode tok/s @1")
    ax.set_xscale("log", base=2)
    ax.invert_xaxis()  # fewer tokens to the right, as in the FLOPs plot
    ax.set_xlabel("visual tokens (Delta projector)")
    ax.set_ylabel("speedup vs MLP @ 576 (higher is faster)")
    ax.set_title("Inference")
    ax.legend(fontsize=7)

    ax = axes[1]
    names = {"mlp2x_gelu": "mlp", "delta official": "official", "delta shared_base": "shared", "tokenpacker": "tp", "avgpool": "pool"}
    colours = {"mlp2x_gelu": "#4c72b0", "tokenpacker": "#55a868", "avgpool": "#8172b3"}
    colours.update({variant: colour for variant, (colour, _) in VARIANT_STYLE.items()})
    configs = list(dict.fromkeys((r["variant"], r["num_visual_tokens"]) for r in projectors))
    batch_sizes = sorted({r["images_per_call"] for r in projectors})
    width = 0.8 / len(batch_sizes)
    batch_keys = []  # legend entries: one grey patch per images-per-call hatch
    for index, (batch, hatch) in enumerate(zip(batch_sizes, ("", "//", "..", "xx"))):
        rows = {(r["variant"], r["num_visual_tokens"]): r for r in projectors if r["images_per_call"] == batch}
        ax.bar([i + (index - (len(batch_sizes) - 1) / 2) * width for i in range(len(configs))],
               [rows[config]["time_over_flops_ratio"] for config in configs], width,
               color=[colours[variant] for variant, _ in configs], hatch=hatch, edgecolor="white")
        label = f"{batch} image(s) per call"
        batch_keys.append(Patch(facecolor="#999999", hatch=hatch, edgecolor="white", label=label))
    ax.set_xticks(range(len(configs)), [f"{names[variant]}\n@{budget}" for variant, budget in configs])
    ax.axhline(1.0, color="gray", lw=1, ls="--")
    bar = ax.axhline(EFFICIENCY_BAR, color="black", lw=1, ls=":",
                     label=f"bar for the delta layouts ({EFFICIENCY_BAR}x)")
    ax.set_ylabel("time ratio / FLOPs ratio, both vs MLP @ 576")
    ax.set_title("Projector forward: time per FLOP relative to the MLP")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(handles=[bar, *batch_keys], fontsize=7)

    ax = axes[2]
    for variant, (colour, name) in VARIANT_STYLE.items():
        for stage, marker in ((1, "o-"), (2, "s:")):
            rows = [r for r in training if r["stage"] == stage and r["variant"] == variant]
            if rows:
                xs = [r["num_visual_tokens"] for r in rows]
                errorbar(ax, xs, [r["speedup"] for r in rows], marker, f"{name}: stage {stage}", colour)
    for stage, marker in ((1, "o"), (2, "s")):
        known = sorted({(r["num_visual_tokens"], r["paper_speedup"]) for r in training
                        if r["stage"] == stage and r["variant"] != "mlp2x_gelu" and r["paper_speedup"]})
        if known:
            ax.plot(*zip(*known), marker, mfc="none", color="black", label=f"stage {stage} (paper table 4)")
    ax.axhline(1.0, color="gray", lw=1, ls="--", label="MLP @ 576")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["num_visual_tokens"] for r in training if r["variant"] != "mlp2x_gelu"}, reverse=True)
    ax.set_xticks(ticks, [str(b) for b in ticks])
    ax.invert_xaxis()
    ax.set_xlabel("visual tokens (Delta projector)")
    ax.set_ylabel("training samples/s vs MLP @ 576")
    ax.set_title("Training")
    ax.legend(fontsize=7)
    threads = torch.get_num_threads() if threads is None else threads
    fig.suptitle(f"Speed on this CPU, ratios within one run vs MLP @ 576 (median and min-max over repeats; "
                 f"{threads} torch thread(s))")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=5, help="inference repeats")
    parser.add_argument("--train-repeats", type=int, default=3, help="training repeats")
    parser.add_argument("--projector-repeats", type=int, default=7, help="projector forward repeats")
    parser.add_argument("--budgets", type=int, nargs="+", default=PAPER_BUDGETS, help="inference budgets")
    parser.add_argument("--projector-budgets", type=int, nargs="+", default=[144, 16], help="projector forward budgets")
    parser.add_argument("--projector-batches", type=int, nargs="+", default=[1, 8],
                        help="images per projector call; each is measured with the MLP at the same count")
    parser.add_argument("--train-budgets", type=int, nargs="+", default=[144, 16, 1], help="training budgets")
    parser.add_argument("--text-tokens", type=int, default=64, help="prompt text tokens beside the visual tokens")
    parser.add_argument("--new-tokens", type=int, default=30, help="generated tokens per inference run")
    parser.add_argument("--train-batch", type=int, default=1, help="samples per training step")
    parser.add_argument("--glibc-default-allocator", action="store_true",
                        help="leave malloc as glibc sets it (freed memory returned to the OS; see keep_freed_memory)")
    parser.add_argument("--no-json", action="store_true", help="print only; do not overwrite the results files")
    args = parser.parse_args()

    freed_memory_kept = not args.glibc_default_allocator and keep_freed_memory()
    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()
    models = {variant: build_model(speed_config(variant)).eval() for variant in MODEL_VARIANTS}
    delta = models["delta official"]
    inference = measure_inference(models, args.budgets, args.text_tokens, args.new_tokens, args.repeats)
    projectors = measure_projectors(speed_config, args.projector_budgets, args.projector_repeats, models,
                                    args.projector_batches)
    training = measure_training(models, args.train_budgets, [1, 2], args.text_tokens, args.train_batch,
                                args.train_repeats)
    print_report(inference, projectors, training)
    wall = time.perf_counter() - started
    print(f"\n{torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs, load average {load_before[0]:.1f} -> "
          f"{os.getloadavg()[0]:.1f}, wall {wall:.0f} s, freed memory kept by malloc: {freed_memory_kept}")
    if args.no_json:
        return
    setup = {
        "torch_threads": torch.get_num_threads(),
        "malloc": "freed memory kept (glibc M_MMAP_MAX=0, M_TRIM_THRESHOLD=2**31-1)" if freed_memory_kept
        else "glibc defaults",
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "wall_s": wall,
        "text_config": TEXT_CONFIG,
        "vision_config": VISION_CONFIG,
        "parameters": {
            "language_model_with_lm_head": parameter_count(delta.model.language_model) + parameter_count(delta.lm_head),
            "vision_tower": parameter_count(delta.model.vision_tower),
            "delta_official_projector": parameter_count(delta.model.multi_modal_projector),
            "delta_shared_base_projector": parameter_count(models["delta shared_base"].model.multi_modal_projector),
            "mlp_projector": parameter_count(models["mlp2x_gelu"].model.multi_modal_projector),
        },
        "text_tokens": args.text_tokens,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "train_repeats": args.train_repeats,
        "projector_repeats": args.projector_repeats,
        "train_batch": args.train_batch,
        "training_loop": "plain forward(labels) / backward / AdamW.step / zero_grad, fp32, tower frozen",
        "memory_method": "VmHWM above VmRSS at the start of the warm-up run, after malloc_trim and a clear_refs reset",
        "round_robin": "every configuration once per repeat, start rotated by one each repeat; medians reported",
        "ratios": "per repeat, vs the baseline's run in the same repeat; median, min and max over repeats",
    }
    command = "python benchmarks/speed_cpu.py"
    defaults = {action.dest: action.default for action in parser._actions}
    for name, value in vars(args).items():
        if value != defaults.get(name):
            flag = "--" + name.replace("_", "-")
            command += f" {flag} " + (" ".join(map(str, value)) if isinstance(value, list) else str(value))
    path = write_results("speed_cpu", {"setup": setup, "inference": inference, "projectors": projectors,
                                       "training": training}, command)
    plot(inference, projectors, training, RESULTS_DIR / "speed_cpu.png")
    print(f"wrote {path} and {RESULTS_DIR / 'speed_cpu.png'}")


if __name__ == "__main__":
    main()
