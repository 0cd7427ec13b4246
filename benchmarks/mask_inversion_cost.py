"""Seconds per image of Mask-LLaVA's object features on this CPU: MaskInversion (CLIP-L/14-336, random weights) with 1,
8 and 16 masks, split into the tower forward and the iterations, beside mask pooling's cost.

    python benchmarks/mask_inversion_cost.py                        # defaults, about 3 minutes alone on 2 cores
    python benchmarks/mask_inversion_cost.py --masks 1 --iterations 2 --repeats 1 --no-json   # smoke

MaskInversion runs the tower once on the image up to layer `layer_index` (-1: the last), then that layer on one copy
per mask, keeping its graph; each iteration computes LeGrad's maps (a gradient through that layer's attention, kept
differentiable) and differentiates the Dice loss through them (second order). "Forward" is the tower run; "iterations"
the rest. Mask pooling is
what the object tokens use by default: the tower once on the image, then a mask-weighted average of patch features
(its pooling alone is a few microseconds; the tower forward is the cost). Float32, the default 10 iterations, the
repeats' median. Writes benchmarks/results/mask_inversion_cost.json.
"""

import argparse
import statistics
import sys
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from delta_llava.object_tokens import pool_mask_features
from delta_llava.processing import MaskInversion
from measure import print_table, write_results

CLIP_L_336 = CLIPVisionConfig(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
    patch_size=14, projection_dim=768, hidden_act="quick_gelu",
)  # fmt: skip


class TimedInversion(MaskInversion):
    """MaskInversion that records how long its tower forward on the copies took."""

    def forward_copies(self, pixel_values, count):
        start = time.perf_counter()
        tower = super().forward_copies(pixel_values, count)
        self.forward_seconds = time.perf_counter() - start
        return tower


def random_masks(count: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random rectangles (count, side, side), none empty."""
    masks = torch.zeros(count, side, side)
    for mask in masks:
        top, left = torch.randint(0, side // 2, (2,), generator=generator).tolist()
        height, width = torch.randint(side // 8, side // 2, (2,), generator=generator).tolist()
        mask[top : top + height, left : left + width] = 1
    return masks


def measure(model, mask_counts: list[int], iterations: int, repeats: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 336, 336, generator=generator)
    rows = []
    for count in mask_counts:
        masks = random_masks(count, 336, generator)
        inverter = TimedInversion(model, iterations=iterations)
        totals, forwards = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            inverter(image, masks)
            totals.append(time.perf_counter() - start)
            forwards.append(inverter.forward_seconds)
        pooling = []
        for _ in range(repeats):
            start = time.perf_counter()
            with torch.no_grad():
                patches = model.vision_model(pixel_values=image, output_hidden_states=True).hidden_states[-2][:, 1:]
                pool_mask_features(patches, masks[None])
            pooling.append(time.perf_counter() - start)
        total, forward = statistics.median(totals), statistics.median(forwards)
        rows.append({
            "masks": count, "iterations": iterations, "maskinversion_s": total, "tower_forward_s": forward,
            "iterations_s": total - forward, "per_iteration_s": (total - forward) / iterations,
            "mask_pooling_s": statistics.median(pooling), "runs_s": totals,
        })  # fmt: skip
        print(f"{count:2d} masks: {total:.2f} s (forward {forward:.2f} s), mask pooling {rows[-1]['mask_pooling_s']:.3f} s", flush=True)
    return rows


def main() -> None:
    description = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--masks", type=int, nargs="+", default=[1, 8, 16], help="masks per image")
    parser.add_argument("--iterations", type=int, default=10, help="MaskInversion iterations")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mask count (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--no-json", action="store_true", help="print only; write no results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIP_L_336).eval()
    rows = measure(model, args.masks, args.iterations, args.repeats)
    print_table(
        ["masks", "MaskInversion s", "tower forward s", "iterations s", "s per iteration", "mask pooling s", "ratio"],
        [[r["masks"], f"{r['maskinversion_s']:.2f}", f"{r['tower_forward_s']:.2f}", f"{r['iterations_s']:.2f}",
          f"{r['per_iteration_s']:.2f}", f"{r['mask_pooling_s']:.3f}", f"{r['maskinversion_s'] / r['mask_pooling_s']:.0f}x"]
         for r in rows],
    )  # fmt: skip
    if not args.no_json:
        settings = {"masks": args.masks, "iterations": args.iterations, "repeats": args.repeats, "threads": args.threads}
        path = write_results("mask_inversion_cost", {"settings": settings, "rows": rows}, "python " + " ".join(sys.argv))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
