"""Parameters and FLOPs of every projector at every budget, at the paper's real sizes, without allocating weights.

    python benchmarks/projector_cost.py

Builds each projector variant (both delta layouts and the baselines) for CLIP ViT-L/14-336 (C = 1024, 24x24 patches,
4 memory levels) + Vicuna-7B (D = 4096) on the meta device and counts FLOPs of one image with torch's
FlopCounterMode. Prints the authors' own module's figures beside the official layout's. Writes
benchmarks/results/projector_cost.json.
"""

import argparse

from measure import (
    AUTHORS_PROJECTOR_GFLOPS,
    AUTHORS_PROJECTOR_PARAMETERS_M,
    PAPER_BUDGETS,
    PROJECTOR_VARIANTS,
    paper_config,
    print_table,
    projector_cost,
    write_results,
)


def cost_row(variant: str, budget: int) -> dict:
    flops, parameters = projector_cost(paper_config(variant, budget), budget)
    row = {"variant": variant, "num_visual_tokens": budget, "parameters": parameters, "gflops": flops / 1e9}
    if variant == "delta official" and budget in AUTHORS_PROJECTOR_GFLOPS:
        row["authors_gflops"] = AUTHORS_PROJECTOR_GFLOPS[budget]
    return row


def main() -> None:
    description = " ".join(__doc__.split("\n\n")[0].split())
    argparse.ArgumentParser(description=description).parse_args()  # no options; --help says what it does
    rows = []
    for variant, (projector_type, _) in PROJECTOR_VARIANTS.items():
        budgets = [576] if projector_type == "mlp2x_gelu" else PAPER_BUDGETS
        rows += [cost_row(variant, budget) for budget in budgets]
    print_table(
        ["projector", "tokens", "params (M)", "GFLOPs/image", "authors' module"],
        [
            [r["variant"], r["num_visual_tokens"], f"{r['parameters'] / 1e6:.2f}", f"{r['gflops']:.2f}",
             f"{r['authors_gflops']:.2f}" if "authors_gflops" in r else "-"]
            for r in rows
        ],
    )  # fmt: skip
    official = [r for r in rows if "authors_gflops" in r]
    matches = all(round(r["gflops"], 2) == r["authors_gflops"] for r in official)
    print(
        f"official layout vs the authors' module: FLOPs {'equal' if matches else 'DIFFER'} at every budget they were "
        f"measured ({', '.join(str(r['num_visual_tokens']) for r in official)}); parameters "
        f"{official[0]['parameters'] / 1e6:.2f} M vs {AUTHORS_PROJECTOR_PARAMETERS_M} M. The paper's text gives the "
        "projector <= 0.002 TFLOPs below 576 tokens; the authors' own module costs 12-50 GFLOPs."
    )
    payload = {"rows": rows, "official_equals_authors": matches}
    path = write_results("projector_cost", payload, "python benchmarks/projector_cost.py")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
