"""FSDP2 training, end to end on CPU: two gloo processes under the shipped `fsdp.yaml` against one process.

accelerate refuses FSDP on CPU, so the script turns it on with the test-only switch in `fsdp_on_cpu.py`; from there the
trainer runs its GPU code path (accelerate's wrap policy from `_no_split_modules`, FSDP2's collectives, TRL's fused
LM-head loss, sharded checkpoints, the whole-model save). Not covered: NCCL, bf16 mixed precision, CPU offload.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from accelerate_launch import TESTS_DIR, launch
from isolated_python import run_without_project
from training_setup import write_tiny_parts

FSDP_FLAGS = ("--num_processes", "2", "--mixed_precision", "no")  # the shipped config, on two CPU processes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process at batch 4, FSDP at 2 x 2 (checkpoints at steps 2 and 4), FSDP resumed from step 2."""
    root = tmp_path_factory.mktemp("fsdp")
    parts = str(Path(write_tiny_parts(root / "parts")["vision_tower"]).parent)
    single = [sys.executable, str(TESTS_DIR / "fsdp_train_script.py"), parts, str(root / "single"), "4"]
    subprocess.run(single, check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(TESTS_DIR)))
    launch("fsdp.yaml", "fsdp_train_script.py", parts, str(root / "fsdp"), "2", extra_flags=FSDP_FLAGS)
    checkpoint = root / "fsdp" / "run" / "checkpoint-2"
    launch("fsdp.yaml", "fsdp_train_script.py", parts, str(root / "resumed"), "2", str(checkpoint), extra_flags=FSDP_FLAGS)
    results = {name: torch.load(root / name / "result.pt") for name in ("single", "fsdp", "resumed")}
    return root, results


def test_fsdp_gradients_and_weights_equal_one_process_on_the_same_global_batch(runs):
    _, results = runs
    single, fsdp = results["single"], results["fsdp"]
    assert fsdp["fsdp"] and fsdp["num_processes"] == 2 and not single["fsdp"]
    assert fsdp["losses"] == pytest.approx(single["losses"], abs=1e-5)
    assert set(fsdp["gradients"]) == set(single["gradients"]) and "lm_head.weight" in fsdp["gradients"]
    for name, gradient in single["gradients"].items():  # lm_head included: its unit is gathered for TRL's fused loss
        torch.testing.assert_close(fsdp["gradients"][name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    for name, weight in single["weights"].items():
        torch.testing.assert_close(fsdp["weights"][name], weight, rtol=1e-4, atol=1e-5, msg=name)


def test_fsdp_run_ends_with_a_whole_checkpoint_that_loads_by_remote_code(runs):
    root, results = runs
    output = root / "fsdp" / "run"
    config = json.loads((output / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_delta_llava.DeltaLlavaForConditionalGeneration"
    assert (output / "model.safetensors").is_file() and (output / "modeling_delta_llava.py").is_file()
    assert (output / "processor_config.json").is_file() and not list(output.glob("_fsdp*.py"))
    trained = {name: tensor for name, tensor in results["fsdp"]["weights"].items()}
    torch.save(trained, root / "trained.pt")
    run_without_project(
        f"""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(output)!r}, trust_remote_code=True)
        AutoProcessor.from_pretrained({str(output)!r}, trust_remote_code=True)
        trained = torch.load({str(root / "trained.pt")!r})
        loaded = dict(model.named_parameters())
        assert set(loaded) == set(trained), set(loaded) ^ set(trained)
        for name, tensor in trained.items():
            assert torch.equal(loaded[name], tensor), name
        """,
        cwd=str(root),
    )


def test_fsdp_resumed_from_a_sharded_checkpoint_equals_the_uninterrupted_run(runs):
    root, results = runs
    assert sorted(p.name for p in (root / "fsdp" / "run" / "checkpoint-2").iterdir() if p.is_dir()) == [
        "optimizer_0", "pytorch_model_fsdp_0"
    ]  # fmt: skip
    resumed, uninterrupted = results["resumed"], results["fsdp"]
    assert resumed["losses"][-2:] == uninterrupted["losses"][-2:]
    for name, weight in uninterrupted["weights"].items():
        torch.testing.assert_close(resumed["weights"][name], weight, rtol=0, atol=0, msg=name)


def test_no_split_modules_names_the_layers_and_the_projector_present():
    from conftest import tiny_config
    from delta_llava import DeltaLlavaForConditionalGeneration

    for layout in ("official", "shared_base"):
        model = DeltaLlavaForConditionalGeneration(tiny_config(delta_layout=layout))
        projector = type(model.model.multi_modal_projector).__name__
        assert model._no_split_modules == {"CLIPEncoderLayer", "LlamaDecoderLayer", projector}
        present = {type(module).__name__ for module in model.modules()}
        assert model._no_split_modules <= present
