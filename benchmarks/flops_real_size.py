"""FLOPs of one image + prompt + answer at the paper's real size (paper section 5 and figure 3), without allocating weights.

    python benchmarks/flops_real_size.py

CLIP ViT-L/14-336 + Vicuna-7B are built on the meta device; torch's FlopCounterMode counts (2 FLOPs per multiply-add)
the vision tower, the projector, the LLM prefill over 64 text + V visual tokens (lm_head on the last position only,
as `generate` does) and 30 decode steps, each one token against a KV cache of the growing length (lm_head included).
Decode steps are counted at the first, second and last cache length; a step's cost is affine in the cache length
(checked on those three), so the 30 steps are summed exactly. Budgets 576 ... 1 for every projector variant (both
delta layouts and the baselines; mlp2x_gelu only at 576). Prints our counts beside the paper's, then tests which counting convention reproduces the
paper's prefill numbers. Writes benchmarks/results/flops_real_size.json and flops_real_size.png.
"""

import argparse
from collections.abc import Callable

import torch
from transformers import DynamicCache

from delta_llava import DeltaLlavaConfig, DeltaLlavaForConditionalGeneration
from measure import (
    AUTHORS_PROJECTOR_GFLOPS, PAPER_BUDGETS, PROJECTOR_VARIANTS, RESULTS_DIR, flop_counter, paper_config, print_table,
    write_results,
)

TEXT_TOKENS = 64
NEW_TOKENS = 30
COMPONENTS = ("vision", "projector", "prefill", "decode")

# What the paper reports (TFLOPs, section 5 and section 6.5 / figure 3). LLaVA 576 is the MLP baseline.
PAPER_TFLOPS = {
    "vision": {budget: 0.382 for budget in PAPER_BUDGETS},
    "projector": {576: 0.024},  # "<= 0.002 except 0.024 at K=576"
    "prefill": {576: 6.72, 144: 2.16, 16: 0.85, 1: 0.70},
    "decode": {576: 0.31, 16: 0.28, 4: 0.28},  # natural stops, ~30 new tokens on average
    "total": {576: 7.43, 144: 2.84},
}


def flops_by_root_module(function: Callable, *args, **kwargs) -> tuple[int, dict[str, int]]:
    """Total FLOPs and the FLOPs under each module `function` calls directly (keyed by class name)."""
    with flop_counter() as counter:
        function(*args, **kwargs)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items() if "." not in name}
    return counter.get_total_flops(), per_module


def image_flops(model: DeltaLlavaForConditionalGeneration, budget: int) -> dict[str, int]:
    """Vision tower and projector FLOPs of one image through the model's own `get_image_features`."""
    vision_config = model.config.vision_config
    pixel_values = torch.empty(1, 3, vision_config.image_size, vision_config.image_size, device="meta")
    total, per_module = flops_by_root_module(model.model.get_image_features, pixel_values, budget)
    vision = per_module[type(model.model.vision_tower).__name__]
    return {"vision": vision, "projector": total - vision}


def llm_flops(model: DeltaLlavaForConditionalGeneration, sequence_length: int, new_tokens: int) -> dict[str, int]:
    """Prefill over `sequence_length` embeddings, then `new_tokens` one-token steps on the growing KV cache."""
    language_model, lm_head = model.model.language_model, model.lm_head
    width = model.config.text_config.hidden_size

    def forward(embeddings: torch.Tensor, cache: DynamicCache, logits_positions: int) -> None:
        hidden = language_model(inputs_embeds=embeddings, past_key_values=cache, use_cache=True).last_hidden_state
        lm_head(hidden[:, -logits_positions:])

    def step_flops(cache: DynamicCache) -> tuple[int, int]:
        total, per_module = flops_by_root_module(forward, torch.empty(1, 1, width, device="meta"), cache, 1)
        return total, per_module[type(lm_head).__name__]

    cache = DynamicCache(config=model.config.text_config)
    prompt = torch.empty(1, sequence_length, width, device="meta")
    prefill, per_module = flops_by_root_module(forward, prompt, cache, 1)
    lm_head_flops = per_module[type(lm_head).__name__]
    if new_tokens < 3:  # too few steps to bother with the affine shortcut
        steps = [step_flops(cache) for _ in range(new_tokens)]
        decode, decode_lm_head = sum(s[0] for s in steps), sum(s[1] for s in steps)
    else:
        (first, head), (second, _) = step_flops(cache), step_flops(cache)
        # a fresh cache filled (uncounted) to the length the last decode step sees
        cache = DynamicCache(config=model.config.text_config)
        language_model(
            inputs_embeds=torch.empty(1, sequence_length + new_tokens - 1, width, device="meta"),
            past_key_values=cache,
            use_cache=True,
        )
        last, _ = step_flops(cache)
        per_position = second - first
        if last != first + (new_tokens - 1) * per_position:
            raise RuntimeError(f"decode step FLOPs are not affine in the cache length: {first}, {second}, {last}")
        decode = new_tokens * first + per_position * new_tokens * (new_tokens - 1) // 2
        decode_lm_head = new_tokens * head
    return {
        "prefill": prefill,
        "decode": decode,
        "prefill_lm_head": lm_head_flops,
        "decode_lm_head": decode_lm_head,
    }


def measure_flops(
    make_config: Callable[[str, int], DeltaLlavaConfig] = paper_config,
    budgets: list[int] = PAPER_BUDGETS,
    variants: list[str] | None = None,
    text_tokens: int = TEXT_TOKENS,
    new_tokens: int = NEW_TOKENS,
) -> list[dict]:
    """One row per (projector variant, budget) with FLOPs per component; mlp2x_gelu runs only at the full grid."""
    variants = list(PROJECTOR_VARIANTS) if variants is None else variants
    llm_by_length: dict[int, dict[str, int]] = {}
    rows = []
    for variant in variants:
        config = make_config(variant, budgets[0])
        projector_type = config.projector_type
        with torch.device("meta"):
            model = DeltaLlavaForConditionalGeneration(config)
        for budget in config.allowed_visual_token_counts() if projector_type == "mlp2x_gelu" else budgets:
            sequence_length = text_tokens + budget  # + the global token when the config adds one
            sequence_length += int(config.use_global_token)
            if sequence_length not in llm_by_length:
                llm_by_length[sequence_length] = llm_flops(model, sequence_length, new_tokens)
            flops = {**image_flops(model, budget), **llm_by_length[sequence_length]}
            flops["total"] = sum(flops[name] for name in COMPONENTS)
            rows.append(
                {
                    "variant": variant,
                    "projector_type": projector_type,
                    "num_visual_tokens": budget,
                    "sequence_length": sequence_length,
                    "new_tokens": new_tokens,
                    "flops": flops,
                }
            )
    return rows


def analytic_llm_flops(text_config, sequence_length: int, new_tokens: int, convention: str) -> tuple[float, float]:
    """(prefill, decode) FLOPs of a Llama-style LLM from its shapes, under one counting convention.

    flop_counter: what FlopCounterMode counts (2 FLOPs per multiply-add, three SwiGLU matrices, full-square attention
    scores, lm_head on one position per forward). two_matrix_ffn: a textbook transformer formula (2 per multiply-add,
    FFN = two d x d_ff matrices, no lm_head). macs: multiply-adds (SwiGLU, no lm_head).
    """
    d, ff, layers = text_config.hidden_size, text_config.intermediate_size, text_config.num_hidden_layers
    heads, kv_heads = text_config.num_attention_heads, text_config.num_key_value_heads
    head_dim = getattr(text_config, "head_dim", None) or d // heads
    projections = 2 * d * heads * head_dim + 2 * d * kv_heads * head_dim
    ffn = (2 if convention == "two_matrix_ffn" else 3) * d * ff
    per_token = layers * (projections + ffn)  # multiply-adds per token
    scores = 2 * layers * heads * head_dim  # multiply-adds per (query, key) pair: QK^T and AV
    lm_head = d * text_config.vocab_size if convention == "flop_counter" else 0
    scale = 1 if convention == "macs" else 2
    s = sequence_length
    prefill = per_token * s + scores * s * s + lm_head
    decode = sum(per_token + scores * (s + i + 1) + lm_head for i in range(new_tokens))
    return scale * prefill, scale * decode


def convention_check(text_config, new_tokens: int, counted: dict[int, int]) -> dict:
    """Which convention, with which prompt length T, reproduces the paper's prefill TFLOPs at 576/144/16/1."""
    paper = PAPER_TFLOPS["prefill"]
    result = {}
    for convention in ("flop_counter", "two_matrix_ffn", "macs"):
        best = None
        for text_tokens in range(1, 257):
            errors = {
                budget: analytic_llm_flops(text_config, text_tokens + budget, new_tokens, convention)[0] / 1e12 / value - 1
                for budget, value in paper.items()
            }
            worst = max(abs(e) for e in errors.values())
            if best is None or worst < best["max_relative_error"]:
                best = {"text_tokens": text_tokens, "max_relative_error": worst, "relative_errors": errors}
        best["decode_tflops_at_576"] = (
            analytic_llm_flops(text_config, best["text_tokens"] + 576, new_tokens, convention)[1] / 1e12
        )
        result[convention] = best
    # the formula behind the first convention must give exactly what FlopCounterMode counted
    result["flop_counter_matches_counted_prefill"] = all(
        analytic_llm_flops(text_config, length, new_tokens, "flop_counter")[0] == flops for length, flops in counted.items()
    )
    return result


def tflops(value: float) -> str:
    return f"{value / 1e12:.3f}"


def paper_value(component: str, budget: int, projector_type: str) -> str:
    """The paper's number for this cell: prefill/decode/vision depend only on V; totals are LLaVA 576 and Delta 144
    (either delta layout: the paper gives one Delta-LLaVA)."""
    if component == "projector":
        return {"mlp2x_gelu": "0.024", "delta": "<=0.002"}.get(projector_type, "-")
    if component == "total" and projector_type != ("mlp2x_gelu" if budget == 576 else "delta"):
        return "-"
    value = PAPER_TFLOPS[component].get(budget)
    return "-" if value is None else f"{value:.3f}"


def print_rows(rows: list[dict]) -> None:
    headers = ["projector", "V", "vision", "paper", "proj", "paper", "authors", "prefill", "paper", "decode", "paper",
               "total", "paper"]  # fmt: skip
    table = []
    for row in rows:
        kind, budget, flops = row["projector_type"], row["num_visual_tokens"], row["flops"]
        cells = [row["variant"], budget]
        for component in (*COMPONENTS, "total"):
            cells += [tflops(flops[component]), paper_value(component, budget, kind)]
            if component == "projector":
                authors = AUTHORS_PROJECTOR_GFLOPS.get(budget) if row["variant"] == "delta official" else None
                cells.append("-" if authors is None else f"{authors / 1e3:.3f}")
        table.append(cells)
    print(f"TFLOPs per sample ({rows[0]['sequence_length'] - rows[0]['num_visual_tokens']} text tokens + V, "
          f"{rows[0]['new_tokens']} new tokens); 'paper' = reported in the paper (LLaVA 576 = mlp2x_gelu); 'authors' = "
          "the authors' own projector module, measured")
    print_table(headers, table)


def explain(check: dict, rows: list[dict]) -> list[str]:
    """The comparison with the paper in words, from the numbers just measured."""
    mlp = next(r for r in rows if r["projector_type"] == "mlp2x_gelu")
    official = {r["num_visual_tokens"]: r for r in rows if r["variant"] == "delta official"}
    shared = {r["num_visual_tokens"]: r for r in rows if r["variant"] == "delta shared_base"}
    two = check["two_matrix_ffn"]
    counter = check["flop_counter"]
    lines = [
        f"vision: we count {tflops(mlp['flops']['vision'])} TFLOPs, the paper 0.382: the paper counts 2 FLOPs per "
        "multiply-add and all 24 CLIP layers (HF runs them all to return hidden states; LLaVA uses layer -2).",
        f"prefill/decode: ours are {mlp['flops']['prefill'] / 1e12 / PAPER_TFLOPS['prefill'][576]:.2f}x the paper's "
        "at 576. FlopCounterMode counts the three SwiGLU matrices (gate, up, down), QK^T and AV over the full square, "
        "and lm_head on the positions that get logits.",
        f"  a textbook formula with a two-matrix FFN (2 FLOPs per multiply-add, no lm_head) fits the paper's four "
        f"prefill values within {100 * two['max_relative_error']:.1f}% with T = {two['text_tokens']} text tokens, and "
        f"gives decode {two['decode_tflops_at_576']:.3f} TFLOPs at 576 (paper 0.31);",
        f"  FlopCounterMode's own convention cannot fit them for any T (best: {100 * counter['max_relative_error']:.0f}% "
        f"off at T = {counter['text_tokens']}), nor can multiply-adds ({100 * check['macs']['max_relative_error']:.0f}%"
        " off): the paper most likely left out SwiGLU's gate projection (a third of the FFN) and lm_head.",
        "  decode 0.31 -> 0.28 in the paper also reflects natural stops (G varies by budget); we fix G.",
        f"projector: the official layout costs {tflops(official[1]['flops']['projector'])}-"
        f"{tflops(official[576]['flops']['projector'])} TFLOPs, exactly what the authors' own module costs "
        f"(0.012-0.050), and the shared_base layout {tflops(shared[1]['flops']['projector'])}-"
        f"{tflops(shared[576]['flops']['projector'])}; the paper's text says <= 0.002 below 576. Both read the "
        "4-level memory of all 576 patches at every budget (the key/value projections), a cost the paper's Theta(V) "
        f"analysis leaves out; the MLP at 576 matches ({tflops(mlp['flops']['projector'])} vs 0.024).",
    ]
    return lines


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"mlp2x_gelu": "MLP", "delta official": "official", "delta shared_base": "shared"}
    bars = [r for variant in names for r in rows if r["variant"] == variant]
    labels = [f"{names[r['variant']]}\n{r['num_visual_tokens']}" for r in bars]
    colors = {"vision": "#4c72b0", "projector": "#dd8452", "prefill": "#55a868", "decode": "#c44e52"}
    fig, ax = plt.subplots(figsize=(13, 5))
    bottom = [0.0] * len(bars)
    for component in COMPONENTS:
        values = [r["flops"][component] / 1e12 for r in bars]
        ax.bar(labels, values, bottom=bottom, label=component, color=colors[component])
        bottom = [b + v for b, v in zip(bottom, values)]
    for x, total in enumerate(bottom):
        ax.text(x, total + 0.01 * max(bottom), f"{total:.2f}", ha="center", fontsize=8)
    paper_x = [i for i, r in enumerate(bars) if r["num_visual_tokens"] in PAPER_TFLOPS["total"]
               and (r["projector_type"] == "mlp2x_gelu" or r["num_visual_tokens"] != 576)]
    paper_y = [PAPER_TFLOPS["total"][bars[i]["num_visual_tokens"]] for i in paper_x]
    ax.scatter(paper_x, paper_y, marker="D", color="black", zorder=3, label="paper total")
    ax.set_ylabel("TFLOPs per sample")
    ax.set_xlabel("projector (MLP, delta official = the authors' module, delta shared_base) and visual tokens")
    ax.set_title(f"CLIP-L/14-336 + Vicuna-7B, {bars[0]['sequence_length'] - bars[0]['num_visual_tokens']} text tokens, "
                 f"{bars[0]['new_tokens']} new tokens (FlopCounterMode, 2 FLOPs per multiply-add)", fontsize=10)
    ax.set_ylim(0, max(bottom + paper_y) * 1.12)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--text-tokens", type=int, default=TEXT_TOKENS, help="prompt text tokens beside the visual tokens")
    parser.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="generated tokens counted for decoding")
    args = parser.parse_args()
    rows = measure_flops(text_tokens=args.text_tokens, new_tokens=args.new_tokens)
    print_rows(rows)
    text_config = paper_config().text_config
    counted = {r["sequence_length"]: r["flops"]["prefill"] for r in rows}
    check = convention_check(text_config, args.new_tokens, counted)
    notes = explain(check, rows)
    print("\n".join(["", "Where and why we differ from the paper:", *notes]))
    command = "python benchmarks/flops_real_size.py"
    if (args.text_tokens, args.new_tokens) != (TEXT_TOKENS, NEW_TOKENS):
        command += f" --text-tokens {args.text_tokens} --new-tokens {args.new_tokens}"
    payload = {
        "setup": {
            "vision_tower": "CLIP ViT-L/14-336", "language_model": "Vicuna-7B (Llama shapes)",
            "text_tokens": args.text_tokens, "new_tokens": args.new_tokens,
            "counter": "torch.utils.flop_counter.FlopCounterMode on the meta device, 2 FLOPs per multiply-add",
            "prefill": "language model over text + visual tokens, lm_head on the last position",
            "decode": "new_tokens one-token steps on a KV cache of growing length, lm_head on each",
        },
        "rows": rows,
        "paper_tflops": {k: {str(b): v for b, v in d.items()} for k, d in PAPER_TFLOPS.items()},
        "paper_notes": "totals 1.74-1.39 TFLOPs for K <= 36; projector <= 0.002 TFLOPs except 0.024 at K = 576",
        "convention_check": check,
        "notes": notes,
    }
    path = write_results("flops_real_size", payload, command)
    plot(rows, RESULTS_DIR / "flops_real_size.png")
    print(f"wrote {path} and {RESULTS_DIR / 'flops_real_size.png'}")


if __name__ == "__main__":
    main()
