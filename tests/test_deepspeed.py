"""DeepSpeed ZeRO-3, end to end on CPU: two processes under the shipped `deepspeed_zero3.yaml` against one process.

Needs `pip install deepspeed` (not a CI dependency: skipped without it). DeepSpeed runs on CPU with
`DS_ACCELERATOR=cpu`; accelerate then finds no backend for the launch, so the script gives it gloo with the test-only
switch in `deepspeed_on_cpu.py` (what that covers of a GPU run is written there). Both runs continue the same saved
checkpoint for 4 AdamW steps on the same global batch of 4.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from accelerate_launch import TESTS_DIR, launch
from isolated_python import run_without_project
from training_setup import write_tiny_parts

pytest.importorskip("deepspeed")

ZERO3_FLAGS = ("--num_processes", "2", "--mixed_precision", "no")  # the shipped config, on two CPU processes
DEEPSPEED_ON_CPU = {"DS_ACCELERATOR": "cpu", "ACCELERATE_USE_CPU": None}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepspeed")
    parts = write_tiny_parts(root / "parts")
    env = dict(os.environ, PYTHONPATH=str(TESTS_DIR))
    parts_dir = str(Path(parts["vision_tower"]).parent)
    start_run = [sys.executable, str(TESTS_DIR / "fsdp_train_script.py"), parts_dir, str(root / "start"), "4"]
    subprocess.run(start_run, check=True, capture_output=True, env=env)
    start = str(root / "start" / "run")
    single = [sys.executable, str(TESTS_DIR / "deepspeed_train_script.py"), start, parts["dataset_path"], str(root / "single"), "4"]
    subprocess.run(single, check=True, capture_output=True, env=env)
    launch("deepspeed_zero3.yaml", "deepspeed_train_script.py", start, parts["dataset_path"], str(root / "zero3"), "2",
           extra_flags=ZERO3_FLAGS, env=DEEPSPEED_ON_CPU)  # fmt: skip
    return root, {name: torch.load(root / name / "result.pt") for name in ("single", "zero3")}


def test_zero3_losses_and_weights_equal_one_process_on_the_same_global_batch(runs):
    root, results = runs
    assert results["zero3"]["deepspeed"] and results["zero3"]["num_processes"] == 2
    assert results["zero3"]["losses"] == pytest.approx(results["single"]["losses"], abs=1e-5)
    single = load_file(root / "single" / "run" / "model.safetensors")
    zero3 = load_file(root / "zero3" / "run" / "model.safetensors")
    assert set(zero3) == set(single)  # ZeRO-3's save used to write model.language_model.model.* keys
    for name, weight in single.items():
        torch.testing.assert_close(zero3[name], weight, rtol=1e-4, atol=1e-5, msg=name)


def test_zero3_output_loads_by_remote_code_in_a_clean_process(runs):
    root, _ = runs
    output = root / "zero3" / "run"
    config = json.loads((output / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_delta_llava.DeltaLlavaForConditionalGeneration"
    run_without_project(
        f"""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(output)!r}, trust_remote_code=True)
        AutoProcessor.from_pretrained({str(output)!r}, trust_remote_code=True)
        saved = load_file({str(output / "model.safetensors")!r})
        loaded = model.state_dict()
        for name, tensor in saved.items():
            assert torch.equal(loaded[name], tensor), name
        """,
        cwd=str(root),
    )
