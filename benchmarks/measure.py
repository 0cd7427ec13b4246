"""Shared measuring tools of the benchmarks: FLOP counts on the meta device, paper-size configs, result files."""

import json
import math
import platform
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from delta_llava import DeltaLlavaConfig
from delta_llava.modeling_delta_llava import build_projector

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PAPER_BUDGETS = [576, 144, 64, 36, 16, 4, 1]
VICUNA_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
    "max_position_embeddings": 4096,
}


# The projectors the benchmarks compare: name -> (projector_type, config overrides). The delta projector runs in
# both layouts: "delta official" is the authors' module, "delta shared_base" this project's reading of the paper.
PROJECTOR_VARIANTS = {
    "delta official": ("delta", {"delta_layout": "official"}),
    "delta shared_base": ("delta", {"delta_layout": "shared_base"}),
    "mlp2x_gelu": ("mlp2x_gelu", {}),
    "tokenpacker": ("tokenpacker", {}),
    "avgpool": ("avgpool", {}),
}

# The authors' own `Delta_LLaVA` module, measured while planning (shared/notes/authors-code.md: their code run on
# CPU, float32, torch FlopCounterMode, one image, eval mode): GFLOPs by budget, and its parameter count.
AUTHORS_PROJECTOR_GFLOPS = {576: 50.03, 144: 21.60, 36: 14.68, 16: 13.40, 4: 12.64, 1: 12.45}
AUTHORS_PROJECTOR_PARAMETERS_M = 42.5


def paper_config(variant: str = "delta official", num_visual_tokens: int = 144, **overrides) -> DeltaLlavaConfig:
    """CLIP ViT-L/14-336 + Vicuna-7B with a projector variant of `PROJECTOR_VARIANTS` at its config defaults."""
    projector_type, variant_overrides = PROJECTOR_VARIANTS[variant]
    if projector_type == "mlp2x_gelu":
        num_visual_tokens = 576
    return DeltaLlavaConfig(
        text_config=VICUNA_7B,
        projector_type=projector_type,
        num_visual_tokens=num_visual_tokens,
        **{**variant_overrides, **overrides},
    )


def in_place_product_flops(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
    """FLOPs of `addmm_` / `baddbmm_`: 2 * (batch) * m * k * n, as torch counts their out-of-place forms."""
    return 2 * math.prod(a_shape) * b_shape[-1]


# torch's FlopCounterMode registers addmm and baddbmm but not their in-place forms, which the projectors use.
IN_PLACE_PRODUCTS = {torch.ops.aten.addmm_: in_place_product_flops, torch.ops.aten.baddbmm_: in_place_product_flops}


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode (multiply-add = 2), silent, counting in-place matrix products like their other forms."""
    return FlopCounterMode(display=False, custom_mapping=IN_PLACE_PRODUCTS)


def count_flops(function, *args, **kwargs) -> int:
    """Total FLOPs that `flop_counter` sees while `function` runs; works on meta tensors."""
    with flop_counter() as counter:
        function(*args, **kwargs)
    return counter.get_total_flops()


def projector_cost(config: DeltaLlavaConfig, budget: int) -> tuple[int, int]:
    """(FLOPs of one image through `config`'s projector at `budget`, its parameter count), on the meta device."""
    grid, width = config.patch_grid_size, config.vision_config.hidden_size
    with torch.device("meta"):
        projector = build_projector(config)
        memory = torch.empty(1, len(config.memory_layers), grid * grid, width)
        flops = count_flops(projector, torch.empty(1, grid * grid, width), memory, config.check_num_visual_tokens(budget))
    return flops, sum(p.numel() for p in projector.parameters())


def write_results(name: str, payload: dict, command: str) -> Path:
    """Writes `benchmarks/results/<name>.json` with the command and machine that produced it."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {
        "command": command,
        "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform()},
        **payload,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list]) -> None:
    """Prints rows under headers in right-aligned columns (the first column left-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print(" ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """The same table as GitHub markdown, for pasting into the README."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
