"""The benchmark scripts' core functions on tiny configs: result structure and FLOP counts that behave."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from conftest import tiny_config, tiny_projector_sizes, tiny_text_config, tiny_vision_config
from delta_llava import DeltaLlavaForConditionalGeneration

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import flops_real_size  # noqa: E402
import length_split_speed  # noqa: E402
import speed_cpu  # noqa: E402
from measure import count_flops  # noqa: E402


def tiny_for(variant: str, budget: int):
    projector_type, overrides = flops_real_size.PROJECTOR_VARIANTS[variant]
    budget = 576 if projector_type == "mlp2x_gelu" else budget
    return tiny_config(projector_type=projector_type, num_visual_tokens=budget, **overrides)


@pytest.fixture(scope="module")
def flop_rows():
    return flops_real_size.measure_flops(
        tiny_for, budgets=[16, 4], variants=["delta official", "delta shared_base", "mlp2x_gelu", "avgpool"],
        text_tokens=8, new_tokens=4,
    )


def test_flop_rows_have_every_component(flop_rows):
    assert [(r["variant"], r["num_visual_tokens"]) for r in flop_rows] == [
        ("delta official", 16), ("delta official", 4), ("delta shared_base", 16), ("delta shared_base", 4),
        ("mlp2x_gelu", 576), ("avgpool", 16), ("avgpool", 4),
    ]
    for row in flop_rows:
        flops = row["flops"]
        assert all(flops[name] > 0 for name in flops_real_size.COMPONENTS)
        assert flops["total"] == sum(flops[name] for name in flops_real_size.COMPONENTS)
        assert row["sequence_length"] == 8 + row["num_visual_tokens"]


def test_prefill_falls_with_the_budget_and_vision_stays(flop_rows):
    by_budget = sorted(flop_rows, key=lambda r: -r["num_visual_tokens"])
    prefill = [r["flops"]["prefill"] for r in by_budget if r["variant"] in ("delta official", "mlp2x_gelu")]
    assert all(a > b for a, b in zip(prefill, prefill[1:]))  # 576 > 16 > 4
    assert len({r["flops"]["vision"] for r in flop_rows}) == 1
    assert flop_rows[0]["flops"]["decode"] > flop_rows[1]["flops"]["decode"]  # longer cache, more attention


def test_mlp_projector_flops_are_two_matmuls_per_patch(flop_rows):
    # Linear C->D then Linear D->D on each of the N = 576 patches; FlopCounterMode counts 2 FLOPs per multiply-add
    # and nothing for the bias add or GELU, so the count is exactly 2 N (C D + D D).
    config = tiny_for("mlp2x_gelu", 576)
    n, c, d = 576, config.vision_config.hidden_size, config.text_config.hidden_size
    mlp = next(r for r in flop_rows if r["projector_type"] == "mlp2x_gelu")
    assert mlp["flops"]["projector"] == 2 * n * (c * d + d * d)
    # avg-pool to g*g then the same MLP
    pooled = next(r for r in flop_rows if r["projector_type"] == "avgpool" and r["num_visual_tokens"] == 16)
    assert pooled["flops"]["projector"] == 2 * 16 * (c * d + d * d)


def test_decode_shortcut_equals_every_step_counted_and_the_formula():
    config = tiny_for("delta official", 16)
    with torch.device("meta"):
        model = DeltaLlavaForConditionalGeneration(config)
    length, steps = 24, 5
    counted = flops_real_size.llm_flops(model, length, steps)
    width = config.text_config.hidden_size
    cache = DynamicCache(config=config.text_config)

    def forward(embeddings):
        hidden = model.model.language_model(inputs_embeds=embeddings, past_key_values=cache, use_cache=True)
        model.lm_head(hidden.last_hidden_state[:, -1:])

    with torch.device("meta"):
        prefill = count_flops(forward, torch.empty(1, length, width))
        decode = sum(count_flops(forward, torch.empty(1, 1, width)) for _ in range(steps))
    assert (counted["prefill"], counted["decode"]) == (prefill, decode)
    analytic = flops_real_size.analytic_llm_flops(config.text_config, length, steps, "flop_counter")
    assert analytic == (prefill, decode)


def test_convention_check_reports_each_convention():
    text_config = tiny_config().text_config
    check = flops_real_size.convention_check(text_config, 3, {})
    assert {"flop_counter", "two_matrix_ffn", "macs"} <= set(check)
    assert all(0 < check[c]["text_tokens"] <= 256 for c in ("flop_counter", "two_matrix_ffn", "macs"))


def test_flops_plot_is_written(flop_rows, tmp_path):
    flops_real_size.plot(flop_rows, tmp_path / "flops.png")
    assert (tmp_path / "flops.png").stat().st_size > 0


def test_in_place_matrix_products_are_counted_like_the_others():
    """torch's FlopCounterMode alone counts addmm and baddbmm but not addmm_ / baddbmm_ (the shared_base projector's
    values are updated in place)."""
    with torch.device("meta"):
        matrix, left, right = torch.empty(5, 7), torch.empty(5, 3), torch.empty(3, 7)
        batch, batch_left, batch_right = torch.empty(2, 5, 7), torch.empty(2, 5, 3), torch.empty(2, 3, 7)
        assert count_flops(lambda: matrix.addmm_(left, right)) == count_flops(torch.addmm, matrix, left, right) == 210
        assert count_flops(lambda: batch.baddbmm_(batch_left, batch_right)) == 420
        assert count_flops(torch.baddbmm, batch, batch_left, batch_right) == 420


def test_kept_freed_memory_is_reused_without_page_faults():
    """With glibc's defaults a 64 MB tensor freed and made again is a fresh mapping that page-faults on its first
    write every time; after `keep_freed_memory` it reuses the heap. (The fewest faults of five makes are compared:
    a VM's memory reclaimer may take back idle heap pages in between.) Run in a child so the test process keeps its
    allocator."""
    child = textwrap.dedent(f"""
        import resource, sys, torch
        sys.path.insert(0, {str(BENCHMARKS)!r})
        import speed_cpu
        kept = sys.argv[1] == "kept" and speed_cpu.keep_freed_memory()
        def faults_of_one_tensor():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.ones(16 * 2**20)  # 64 MB, written, then freed
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        faults_of_one_tensor()
        print(kept, min(faults_of_one_tensor() for _ in range(5)))
    """)
    results = {}
    for mode in ("default", "kept"):
        output = subprocess.run([sys.executable, "-c", child, mode], capture_output=True, text=True, check=True).stdout
        kept, faults = output.split()
        results[mode] = (kept == "True", int(faults))
    assert results["default"][0] is False and results["kept"][0] is True
    assert results["kept"][1] * 10 < results["default"][1]  # default: 16,384 pages of 4 KiB (fewer with huge pages)


def test_round_robin_rotates_and_repeats():
    order = []
    tasks = {name: (lambda name=name: order.append(name) or {"x": 1}) for name in "abc"}
    results = speed_cpu.round_robin(tasks, repeats=3, warmup=False)
    assert order == list("abcbcacab")
    assert all(len(results[name]["runs"]) == 3 for name in "abc")


@pytest.fixture
def one_thread():
    """As the speed script does: on a shared 2-core machine one thread is many times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_speed_config(variant: str, **overrides):
    projector_type, layout = speed_cpu.PROJECTOR_VARIANTS[variant]
    sizes = tiny_projector_sizes(projector_type, layout.get("delta_layout", "official"))
    return speed_cpu.speed_config(variant, tiny_text_config(), tiny_vision_config(), **sizes, **overrides)


def test_speed_sections_on_a_tiny_model(tmp_path, one_thread):
    models = {variant: speed_cpu.build_model(small_speed_config(variant)).eval() for variant in speed_cpu.MODEL_VARIANTS}
    inference = speed_cpu.measure_inference(models, [16, 4], text_tokens=6, new_tokens=3, repeats=1)
    assert [(r["variant"], r["num_visual_tokens"]) for r in inference] == [
        ("mlp2x_gelu", 576), ("delta official", 16), ("delta official", 4),
        ("delta shared_base", 16), ("delta shared_base", 4),
    ]
    one = {"median": 1.0, "min": 1.0, "max": 1.0}
    assert inference[0]["ttft_speedup"] == one and inference[0]["decode_speedup"] == one
    for row in inference:
        assert row["ttft_s"] > 0 and row["decode_tokens_per_s"] > 0 and len(row["runs"]) == 1
        assert row["peak_extra_mib"] is None or row["peak_extra_mib"] >= 0

    projectors = speed_cpu.measure_projectors(small_speed_config, [16], repeats=1, models=models, batch_sizes=(1, 2))
    variants = ["mlp2x_gelu", "delta official", "delta shared_base", "tokenpacker", "avgpool"]
    assert [(r["variant"], r["images_per_call"]) for r in projectors] == [(v, b) for b in (1, 2) for v in variants]
    for baseline in (projectors[0], projectors[5]):  # each batch size has its own MLP baseline
        assert baseline["time_vs_mlp_576"] == one
        assert baseline["flops_vs_mlp_576"] == 1.0 and baseline["time_over_flops_ratio"] == 1.0
    assert all(r["forward_s"] > 0 for r in projectors)
    config = small_speed_config("delta official")
    assert projectors[1]["flops"] == projectors[6]["flops"] == speed_cpu.projector_cost(config, 16)[0] > 0

    training = speed_cpu.measure_training(models, [4], [1, 2], text_tokens=6, batch_size=2, repeats=1)
    assert [(r["stage"], r["num_visual_tokens"]) for r in training] == [(1, 576), (1, 4), (1, 4), (2, 576), (2, 4), (2, 4)]
    assert all(r["samples_per_s"] > 0 and r["speedup"]["min"] > 0 for r in training)
    assert training[0]["speedup"] == one
    assert training[1]["paper_speedup"] == pytest.approx(5041 / 992)  # table 4 pretraining: 1:24:01 / 0:16:32

    speed_cpu.print_report(inference, projectors, training)
    speed_cpu.plot(inference, projectors, training, tmp_path / "speed.png")
    assert (tmp_path / "speed.png").stat().st_size > 0


def test_each_stage_trains_its_parts():
    model = speed_cpu.build_model(small_speed_config("delta official"))
    projector = {id(p) for p in model.model.multi_modal_projector.parameters()}
    stage1 = speed_cpu.set_stage(model, 1)
    assert {id(p) for p in stage1} == projector
    stage2 = {id(p) for p in speed_cpu.set_stage(model, 2)}
    assert projector < stage2
    assert not any(id(p) in stage2 for p in model.model.vision_tower.parameters())


def test_length_split_speed_times_the_quick_starts_batches_each_way(capsys):
    length_split_speed.main(["--batches", "2", "--repeats", "2", "--passes", "2", "--train_samples", "64", "--no-json"])
    printed = capsys.readouterr().out
    ratios = [line.split() for line in printed.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [row[0] for row in ratios] == ["1", "2"]
    assert ratios[0][2:] == ["1.000", "(1.000-1.000)", "1.000"]  # one pass against itself
    assert float(ratios[1][2]) > 0 and float(ratios[1][-1]) <= 1.0  # a split never computes more positions


def test_length_split_summary_takes_each_ratio_within_its_repeat():
    def batch(lengths):
        mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        return {"input_ids": torch.zeros_like(mask), "attention_mask": mask}

    batches = [batch([30, 15, 15, 15]), batch([20, 20])]
    totals = {1: [2.0, 4.0], 2: [1.0, 3.0]}  # repeat 2 ran on a slower moment: the ratios are 0.5 and 0.75
    per_batch = {1: [[1.5, 3.0], [0.5, 1.0]], 2: [[0.6, 2.0], [0.4, 1.0]]}
    summary = length_split_speed.summarise(batches, [1, 2], totals, per_batch)
    assert summary["overall"]["2"]["ratio_to_one_pass"] == {"median": 0.625, "min": 0.5, "max": 0.75}
    assert summary["overall"]["1"]["positions"] == 4 * 30 + 2 * 20
    assert summary["overall"]["2"]["positions"] == 30 + 3 * 15 + 2 * 20
    assert summary["by_padded_width"]["30"] == {
        "batches": 1, "ms_1_passes": 2250.0, "ms_2_passes": 1300.0, "positions_1_passes": 120, "positions_2_passes": 75,
    }  # fmt: skip
