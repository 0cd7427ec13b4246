"""Every command-line entry point answers --help: exit 0, a first line of description saying what it does, its main
options, and their defaults."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# command -> (words the description starts with, options the help must name)
ENTRY_POINTS = {
    "delta-llava-train": ("Train Delta-LLaVA with TRL's SFTTrainer", ["--num_visual_tokens", "--elastic_budgets", "--stage", "--use_lora"]),
    "delta-llava-quickstart": ("The quick start: train a small Delta-LLaVA", ["--output_dir", "--seed", "--elastic_budgets"]),
    "delta-llava-export": ("Export trained Delta-LLaVA checkpoints", ["--checkpoint", "--budgets", "--push"]),
    "delta-llava-convert-official": ("Convert a checkpoint trained with the authors' code", ["--checkpoint", "--output_dir"]),
    "delta-llava-resave": ("Re-save a Delta-LLaVA checkpoint", ["source", "destination"]),
}
MODULES = {
    "delta_llava.processing.precompute_object_masks": ("Precompute object masks for a whole", ["--dataset_path", "--mask_size"]),
    "delta_llava.processing.precompute_object_embeddings": (
        "Precompute the MaskInversion embeddings", ["--dataset_path", "--clip_model", "--iterations"]),
}
SCRIPTS = {
    "projector_cost.py": ("Parameters and FLOPs of every projector", []),
    "flops_real_size.py": ("FLOPs of one image + prompt + answer", ["--text-tokens"]),
    "speed_cpu.py": ("Speed of Delta-LLaVA on this CPU", ["--repeats", "--budgets", "--threads"]),
    "serve_vllm.py": ("Serving speed with vLLM on this CPU", ["--requests", "--budgets", "--repeats"]),
    "accuracy_vs_budget.py": ("Accuracy vs visual token budget", ["--rows", "--budgets", "--seeds"]),
    "merge_accuracy_runs.py": ("One accuracy-vs-budget table", ["runs", "--exclude"]),
    "quickstart_runs.py": ("Gathers quick-start runs", ["runs", "--output"]),
    "quickstart_bar_check.py": ("Runs the quick start over seeds and CPU kernel settings", ["--seeds", "--kernels", "--reuse"]),
    "mask_inversion_cost.py": ("Seconds per image of Mask-LLaVA's object features", ["--masks", "--iterations"]),
    "length_split_speed.py": ("Speed of length-split steps on the quick start's training", ["--passes", "--batches"]),
}


def description_of(help_text: str) -> str:
    """The first paragraph after argparse's usage block, on one line."""
    paragraphs = [paragraph for paragraph in help_text.split("\n\n") if paragraph.strip()]
    return " ".join(paragraphs[1].split())


def check_help(command: list[str], starts: str, options: list[str]) -> None:
    run = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert description_of(run.stdout).startswith(starts), run.stdout[:600]
    for option in options:
        assert re.search(rf"(^|\s){re.escape(option)}\b", run.stdout), f"{command}: --help does not name {option}"
    options_with_values = re.findall(r"^\s+(--[\w-]+) [A-Z_]+", run.stdout, flags=re.M)
    if options_with_values:  # every option that takes a value says its default
        assert run.stdout.count("(default:") >= len(set(options_with_values)) * 0.9, run.stdout


@pytest.mark.parametrize("command", list(ENTRY_POINTS))
def test_console_scripts_answer_help(command):
    check_help([str(BIN / command)], *ENTRY_POINTS[command])


@pytest.mark.parametrize("module", list(MODULES))
def test_modules_run_with_dash_m_answer_help(module):
    check_help([sys.executable, "-m", module], *MODULES[module])


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_benchmark_scripts_answer_help(script):
    check_help([sys.executable, str(REPO / "benchmarks" / script)], *SCRIPTS[script])
