"""Parameters and FLOPs of every projector type at every budget, at the paper's real sizes, without allocating weights.

    python benchmarks/projector_cost.py

Builds each projector for CLIP ViT-L/14-336 (C = 1024, 24x24 patches, 4 memory levels) + Vicuna-7B (D = 4096) on
the meta device and counts FLOPs of one image with torch's FlopCounterMode. Writes benchmarks/results/projector_cost.json.
"""

import torch

from delta_llava.modeling_delta_llava import PROJECTOR_CLASSES
from measure import PAPER_BUDGETS, count_flops, paper_config, write_results


def projector_cost(projector_type: str, budget: int) -> dict:
    config = paper_config(projector_type, budget)
    with torch.device("meta"):
        projector = PROJECTOR_CLASSES[projector_type](config)
        grid, width = config.patch_grid_size, config.vision_config.hidden_size
        patches = torch.empty(1, grid * grid, width)
        memory = torch.empty(1, len(config.memory_layers), grid * grid, width)
        flops = count_flops(projector, patches, memory, config.check_num_visual_tokens(budget))
    return {
        "projector_type": projector_type,
        "num_visual_tokens": budget,
        "parameters": sum(p.numel() for p in projector.parameters()),
        "gflops": flops / 1e9,
    }


def main() -> None:
    rows = []
    for projector_type in PROJECTOR_CLASSES:
        budgets = [576] if projector_type == "mlp2x_gelu" else PAPER_BUDGETS
        rows += [projector_cost(projector_type, budget) for budget in budgets]
    print(f"{'projector':<12} {'tokens':>6} {'params (M)':>11} {'GFLOPs/image':>13}")
    for row in rows:
        print(
            f"{row['projector_type']:<12} {row['num_visual_tokens']:>6} {row['parameters'] / 1e6:>11.2f} "
            f"{row['gflops']:>13.2f}"
        )
    path = write_results("projector_cost", {"rows": rows}, "python benchmarks/projector_cost.py")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
