"""Serving speed with vLLM on this CPU: the same concurrent image requests at 576 visual tokens (the MLP) and at
144, 36, 16 and 1 (Delta, official layout), as ratios to the MLP at 576 measured in the same run, beside
transformers' batched `generate` on the same requests.

    python benchmarks/serve_vllm.py                                   # defaults, about 5 minutes alone on 2 cores
    python benchmarks/serve_vllm.py --requests 2 --new-tokens 4 --repeats 1 --budgets 144 1 --no-json   # smoke

The model is speed_cpu.py's: its CLIP-like tower shrunk to width 512 and 8 layers (336 px, 14-pixel patches: the
24x24 grid and every paper budget) and its 12-layer Llama of width 1024 (heads of 64 channels, which vLLM's CPU
attention serves), random weights, a 32,064-word vocabulary. Two checkpoints are written (the MLP and the Delta
projector); vLLM serves both at once from `.venv-vllm` (`tests/build_vllm_environment.sh`), the Delta server taking
each request's budget from its `mm_processor_kwargs`. Prefix caching and vLLM's multimodal processor cache are off,
and every request of every round brings a new image, so no request reuses another's work.

Each round sends the same number of chat requests at once (threads, streaming) to one configuration and waits for
all of them; every configuration is visited once per round, in rotating order, after one untimed warm-up round.
Per configuration and round:
- time to first token: mean over the requests of (first streamed token - request sent), in vLLM; in `generate`,
  which prefills the whole batch before its first token, the time to the batch's first token;
- output tokens/s: all the round's output tokens over its wall time (every answer is exactly `--new-tokens` long:
  min_tokens / ignore_eos in vLLM, min_new_tokens in generate);
- requests/s: requests over the round's wall time.
A ratio vs the MLP at 576 is taken within a round and reported as median (min-max) over the rounds.
Writes benchmarks/results/serve_vllm.json and serve_vllm.png.
"""

import argparse
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import PIL.Image
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessorList

from measure import RESULTS_DIR, print_table, write_results
from servable_checkpoint import write_random_checkpoint
from speed_cpu import TEXT_CONFIG, VISION_CONFIG, TokenClock, fmt, fmt_ratio, paired_ratio
from vllm_server import VllmServer, image_data_url

QUESTION = "describe this image"
# The engine's per-request timers (Prometheus histograms of vLLM's /metrics), read before and after each round.
ENGINE_TIMERS = {
    "ttft": "time_to_first_token_seconds",
    "queue": "request_queue_time_seconds",
    "prefill": "request_prefill_time_seconds",
    "decode": "request_decode_time_seconds",
}
METRICS = {"ttft_s": False, "output_tokens_per_s": True, "requests_per_s": True}  # name -> higher is faster
GENERATE_SPEEDUPS = {144: 2.23, 1: 3.72}  # speed_cpu.json: generate's time-to-first-token speedups, one request


def write_checkpoints(root: Path) -> dict[str, Path]:
    """The benchmark's MLP and Delta (official) checkpoints, random weights, a 32,064-word vocabulary."""
    text_config = {key: value for key, value in TEXT_CONFIG.items() if not key.endswith("token_id")}
    common = {"vision_config": VISION_CONFIG, "text_config": text_config, "vocabulary_size": TEXT_CONFIG["vocab_size"]}
    return {
        "mlp2x_gelu": write_random_checkpoint(root / "mlp", projector_type="mlp2x_gelu", num_visual_tokens=576, **common),
        "delta official": write_random_checkpoint(root / "delta", num_visual_tokens=144, **common),
    }


def random_images(count: int, seed: int) -> list[PIL.Image.Image]:
    generator = np.random.default_rng(seed)
    return [PIL.Image.fromarray(generator.integers(0, 256, (336, 336, 3), dtype=np.uint8)) for _ in range(count)]


class ImageStream:
    """New images for every round of every configuration: nothing is served twice, so no cache can help."""

    def __init__(self, count: int):
        self.count, self.calls = count, 0

    def next(self) -> list[PIL.Image.Image]:
        self.calls += 1
        return random_images(self.count, seed=self.calls)


def engine_seconds(server: VllmServer) -> dict[str, float]:
    """Totals of the engine's own timers (its Prometheus /metrics): seconds summed over every request so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    totals = dict.fromkeys(ENGINE_TIMERS, 0.0)
    for line in lines:
        name = line.split("{")[0]
        for timer, metric in ENGINE_TIMERS.items():
            if name == f"vllm:{metric}_sum":
                totals[timer] += float(line.rsplit(" ", 1)[1])
    return totals


def vllm_round(server: VllmServer, client: openai.OpenAI, budget: int, images: list, new_tokens: int) -> dict:
    """All requests at once, streamed; per-request first-token times, the round's wall time, and the engine's own
    per-request means (what the engine counts from a request's arrival in its queue, after the API server decoded
    the image and ran the processor)."""
    model = str(server.checkpoint)
    before = engine_seconds(server)

    def one(image: PIL.Image.Image) -> tuple[float, int]:
        content = [{"type": "image_url", "image_url": {"url": image_data_url(image)}}, {"type": "text", "text": QUESTION}]
        sent = time.perf_counter()
        first, tokens = None, 0
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], temperature=0.0, max_tokens=new_tokens,
            stream=True, extra_body={
                "min_tokens": new_tokens, "ignore_eos": True, "return_token_ids": True,
                "mm_processor_kwargs": {"num_visual_tokens": budget},
            },
        )  # fmt: skip
        for chunk in stream:
            ids = getattr(chunk.choices[0], "token_ids", None) if chunk.choices else None
            if ids:
                first = time.perf_counter() if first is None else first
                tokens += len(ids)
        return first - sent, tokens

    start = time.perf_counter()
    with ThreadPoolExecutor(len(images)) as pool:
        answers = list(pool.map(one, images))
    wall = time.perf_counter() - start
    tokens = sum(count for _, count in answers)
    if tokens != new_tokens * len(images):
        raise RuntimeError(f"vLLM streamed {tokens} tokens for {len(images)} requests of {new_tokens}")
    after = engine_seconds(server)
    return {
        "ttft_s": statistics.mean(ttft for ttft, _ in answers),
        "output_tokens_per_s": tokens / wall,
        "requests_per_s": len(images) / wall,
        "wall_s": wall,
        **{f"engine_{timer}_s": (after[timer] - before[timer]) / len(images) for timer in ENGINE_TIMERS},
    }


class VisionClock:
    """Wall time from the vision tower's start to the projector's end, summed over a `generate` call (hooks)."""

    def __init__(self, model):
        self.seconds, self.started = 0.0, None
        inner = model.model
        self.handles = [
            inner.vision_tower.register_forward_pre_hook(self.start),
            inner.multi_modal_projector.register_forward_hook(self.stop),
        ]

    def start(self, *unused) -> None:
        self.started = time.perf_counter()

    def stop(self, *unused) -> None:
        self.seconds += time.perf_counter() - self.started

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def generate_round(model, processor, budget: int, images: list, new_tokens: int) -> dict:
    """The same requests as one left-padded batch through transformers' `generate`; also the time its vision tower
    and projector took (the part of the time to first token that vLLM runs with the same transformers code)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    clock, vision = TokenClock(), VisionClock(model)
    start = time.perf_counter()
    inputs = processor(images=[[image] for image in images], text=[text] * len(images), num_visual_tokens=budget)
    try:
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                logits_processor=LogitsProcessorList([clock]),
            )  # fmt: skip
    finally:
        vision.remove()
    wall = time.perf_counter() - start
    if output.shape[1] - inputs["input_ids"].shape[1] != new_tokens:
        raise RuntimeError(f"generate made {output.shape[1] - inputs['input_ids'].shape[1]} tokens, not {new_tokens}")
    return {
        "ttft_s": clock.stamps[0] - start,
        "output_tokens_per_s": new_tokens * len(images) / wall,
        "requests_per_s": len(images) / wall,
        "wall_s": wall,
        "vision_s": vision.seconds,
    }


def measure(checkpoints: dict[str, Path], budgets: list[int], requests: int, new_tokens: int, repeats: int) -> list[dict]:
    configs = [("mlp2x_gelu", 576)] + [("delta official", budget) for budget in budgets]
    images = ImageStream(requests)
    server_args = [
        "--trust-request-mm-kwargs", "--no-enable-prefix-caching", "--mm-processor-cache-gb", "0",
        "--max-model-len", "2048", "--max-num-seqs", str(max(requests, 1)),
    ]  # fmt: skip
    servers = {name: VllmServer(folder, server_args) for name, folder in checkpoints.items()}
    models = {
        name: (AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval(),
               AutoProcessor.from_pretrained(folder, trust_remote_code=True))
        for name, folder in checkpoints.items()
    }  # fmt: skip
    for server in servers.values():
        server.__enter__()
    try:
        clients = {
            name: openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=1800)
            for name, server in servers.items()
        }
        tasks = {}
        for name, budget in configs:
            tasks[("vllm", name, budget)] = lambda n=name, b=budget: vllm_round(
                servers[n], clients[n], b, images.next(), new_tokens
            )
            tasks[("generate", name, budget)] = lambda n=name, b=budget: generate_round(
                *models[n], b, images.next(), new_tokens
            )
        runs = {key: [] for key in tasks}
        keys = list(tasks)
        for round_index in range(repeats + 1):  # round 0 warms up and is not kept
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                result = tasks[key]()
                print(f"round {round_index}: {key[0]:8s} {key[1]:14s} {key[2]:3d} tokens  {result['wall_s']:.2f} s", flush=True)
                if round_index:
                    runs[key].append(result)
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)

    rows = []
    for engine, name, budget in keys:
        key = (engine, name, budget)
        base = runs[(engine, "mlp2x_gelu", 576)]
        row = {"engine": engine, "projector": name, "num_visual_tokens": budget, "runs": runs[key]}
        for metric in runs[key][0]:
            row[metric] = statistics.median(run[metric] for run in runs[key])
        for metric, higher_is_faster in METRICS.items():
            row[f"{metric}_vs_mlp_576"] = paired_ratio(runs[key], base, metric, higher_is_faster)
        rows.append(row)
    for row in rows:  # vLLM over generate on the same configuration and round
        if row["engine"] == "vllm":
            other = next(r for r in rows if r["engine"] == "generate" and r["num_visual_tokens"] == row["num_visual_tokens"]
                         and r["projector"] == row["projector"])
            row["vs_generate"] = {
                metric: paired_ratio(row["runs"], other["runs"], metric, faster) for metric, faster in METRICS.items()
            }
    return rows


def print_report(rows: list[dict]) -> None:
    print("\nSpeedups vs the MLP at 576 in the same engine and round: median (min-max) over rounds")
    print_table(
        ["engine", "projector", "V", "TTFT s", "TTFT speedup", "out tok/s", "out tok/s speedup", "req/s",
         "req/s speedup"],
        [[r["engine"], r["projector"], r["num_visual_tokens"], fmt(r["ttft_s"], 3), fmt_ratio(r["ttft_s_vs_mlp_576"]),
          fmt(r["output_tokens_per_s"], 1), fmt_ratio(r["output_tokens_per_s_vs_mlp_576"]), fmt(r["requests_per_s"], 3),
          fmt_ratio(r["requests_per_s_vs_mlp_576"])] for r in rows],
    )
    print("\nWhere vLLM's time to first token goes (medians, s per request): the engine's own clock starts when the "
          "request reaches its queue, after the API server decoded the image and ran the processor")
    print_table(
        ["projector", "V", "TTFT at client", "engine TTFT", "before the engine", "queue", "prefill", "decode"],
        [[r["projector"], r["num_visual_tokens"], fmt(r["ttft_s"], 3), fmt(r["engine_ttft_s"], 3),
          fmt(r["ttft_s"] - r["engine_ttft_s"], 3), fmt(r["engine_queue_s"], 3), fmt(r["engine_prefill_s"], 3),
          fmt(r["engine_decode_s"], 3)] for r in rows if r["engine"] == "vllm"],
    )
    print("\nThe same split in generate (one batch, s): the vision tower + projector, which vLLM runs with the same "
          "transformers code, and the rest of the time to first token (the language model's prefill)")
    print_table(
        ["projector", "V", "TTFT", "vision + projector", "LM prefill", "vision share of TTFT"],
        [[r["projector"], r["num_visual_tokens"], fmt(r["ttft_s"], 3), fmt(r["vision_s"], 3),
          fmt(r["ttft_s"] - r["vision_s"], 3), fmt(r["vision_s"] / r["ttft_s"])] for r in rows if r["engine"] == "generate"],
    )
    print("\nvLLM vs transformers' batched generate, same configuration and round (>1: vLLM faster)")
    print_table(
        ["projector", "V", "TTFT", "out tok/s", "req/s"],
        [[r["projector"], r["num_visual_tokens"], *(fmt_ratio(r["vs_generate"][m]) for m in METRICS)]
         for r in rows if r["engine"] == "vllm"],
    )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"ttft_s": "time to first token", "output_tokens_per_s": "output tokens/s", "requests_per_s": "requests/s"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, metric in zip(axes, METRICS):
        for engine, colour in (("vllm", "#4c72b0"), ("generate", "#dd8452")):
            chosen = [r for r in rows if r["engine"] == engine]
            positions = [str(r["num_visual_tokens"]) for r in chosen]
            ratios = [r[f"{metric}_vs_mlp_576"] for r in chosen]
            medians = [ratio["median"] for ratio in ratios]
            spread = [[m - ratio["min"] for m, ratio in zip(medians, ratios)],
                      [ratio["max"] - m for m, ratio in zip(medians, ratios)]]  # fmt: skip
            ax.errorbar(positions, medians, yerr=spread, fmt="o-", capsize=3, color=colour, label=engine)
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(f"{titles[metric]}: speedup vs MLP@576")
        ax.set_xlabel("visual tokens (576 = MLP, others = Delta official)")
        ax.legend()
    axes[0].set_ylabel("speedup (median, min-max over rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--budgets", type=int, nargs="+", default=[144, 36, 16, 1], help="Delta budgets")
    parser.add_argument("--requests", type=int, default=4, help="concurrent requests per round")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per answer")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of generate")
    parser.add_argument("--no-json", action="store_true", help="print only; write no results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        checkpoints = write_checkpoints(Path(root))
        rows = measure(checkpoints, args.budgets, args.requests, args.new_tokens, args.repeats)
    print_report(rows)
    if not args.no_json:
        settings = {key: getattr(args, key) for key in ("budgets", "requests", "new_tokens", "repeats", "threads")}
        write_results("serve_vllm", {"settings": settings, "rows": rows}, "python " + " ".join(sys.argv))
        plot(rows, RESULTS_DIR / "serve_vllm.png")
        print(f"\nwrote {RESULTS_DIR / 'serve_vllm.json'} and serve_vllm.png")


if __name__ == "__main__":
    main()
