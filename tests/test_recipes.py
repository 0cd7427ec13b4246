"""Tests for the shipped training recipes and accelerate configs.

Recipes: each parses as YAML, uses only argument names the training script knows (its model/data arguments or
TRL's `SFTConfig`), holds LLaVA-1.5's hyperparameters for its stage, and valid model ids and token budgets.
Accelerate configs: each loads with accelerate's own loader and holds the expected distribution settings.
"""

import dataclasses
import os
import re
import socket
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, patch_environment
from accelerate.utils.launch import prepare_multi_gpu_env

from delta_llava.training.arguments import DeltaLlavaDataArguments, DeltaLlavaModelArguments


TRAINING_DIR = Path(str(files("delta_llava.training")))
RECIPES = sorted((TRAINING_DIR / "recipes").glob("*.yaml"))
ACCELERATE_CONFIGS = TRAINING_DIR / "accelerate_configs"

BUDGETS = [576, 144, 64, 36, 16, 4, 1]
VISION_TOWER = "openai/clip-vit-large-patch14-336"
LANGUAGE_MODELS = {
    "vicuna7b": "lmsys/vicuna-7b-v1.5",
    "vicuna13b": "lmsys/vicuna-13b-v1.5",
    "qwen7b": "Qwen/Qwen1.5-7B",  # the transformers-native form of the paper's Qwen-7B (see the recipe header)
}

# The training script's own arguments (model, stage, data); everything else must be an `SFTConfig` field.
SCRIPT_ARGUMENTS = {f.name for f in dataclasses.fields(DeltaLlavaModelArguments)} | {
    f.name for f in dataclasses.fields(DeltaLlavaDataArguments)
}


def load_recipe(path: Path) -> dict:
    recipe = yaml.safe_load(path.read_text())
    assert isinstance(recipe, dict), f"{path.name} is not a mapping"
    return recipe


def num_gpus(path: Path) -> int:
    """GPU count the recipe's header computes its global batch with."""
    return 1 if "24gb" in path.name else 8


@pytest.fixture(scope="module")
def sft_config_class():
    return pytest.importorskip("trl").SFTConfig


def test_recipe_set():
    names = {path.stem for path in RECIPES}
    assert {f"{model}_{stage}" for model in LANGUAGE_MODELS for stage in ("pretrain", "finetune")} <= names
    assert {"vicuna7b_finetune_lora", "vicuna7b_finetune_qlora_24gb", "vicuna7b_elastic_pretrain"} <= names
    assert len(names) <= 12, "keep budgets and small variations as command-line overrides"


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_recipe_keys_are_known_arguments(path, sft_config_class):
    recipe = load_recipe(path)
    training_fields = {field.name for field in dataclasses.fields(sft_config_class)}
    unknown = set(recipe) - SCRIPT_ARGUMENTS - training_fields
    assert not unknown, f"{path.name}: {sorted(unknown)} are neither script arguments nor SFTConfig fields"


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_recipe_training_arguments_build_an_sft_config(path, sft_config_class, tmp_path):
    from transformers import HfArgumentParser

    training = {key: value for key, value in load_recipe(path).items() if key not in SCRIPT_ARGUMENTS}
    # This machine has no GPU: `use_cpu` lets the bf16 recipes validate here.
    (config,) = HfArgumentParser(sft_config_class).parse_dict({**training, "use_cpu": True})
    assert config.bf16 and config.activation_checkpointing
    assert config.lr_scheduler_type == "cosine" and config.warmup_steps == 0.03 and config.weight_decay == 0.0
    assert config.num_train_epochs == 1 and config.max_length == 2048


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_recipe_follows_llava_1_5(path):
    recipe = load_recipe(path)
    global_batch = recipe["per_device_train_batch_size"] * recipe["gradient_accumulation_steps"] * num_gpus(path)
    header = path.read_text().split("\n\n")[0]
    assert f"= {global_batch}" in header, f"{path.name}: the header must state the global batch {global_batch}"
    assert recipe["num_visual_tokens"] in BUDGETS
    assert recipe["freeze_vision_tower"] is True

    if recipe["stage"] == "pretrain":
        assert recipe["vision_tower"] == VISION_TOWER
        assert recipe["language_model"] == LANGUAGE_MODELS[path.stem.split("_")[0]]
        assert recipe["projector_type"] == "delta"
        assert recipe["dataset_path"].endswith("blip_laion_cc_sbu_558k.json")
        assert (global_batch, recipe["learning_rate"]) == (256, 1e-3)
        return

    assert recipe["stage"] == "finetune"
    assert recipe["dataset_path"].endswith("llava_v1_5_mix665k.json")
    assert global_batch == 128 and recipe["projector_learning_rate"] == 2e-5
    if recipe.get("use_lora") or recipe.get("use_qlora"):
        assert (recipe["lora_r"], recipe["lora_alpha"], recipe["learning_rate"]) == (128, 256, 2e-4)
    else:
        assert recipe["learning_rate"] == 2e-5


@pytest.mark.parametrize("path", [path for path in RECIPES if "finetune" in path.stem], ids=lambda path: path.stem)
def test_finetune_starts_from_its_pretrain_output(path):
    recipe = load_recipe(path)
    pretrain_name = re.sub(r"_finetune.*", "_pretrain.yaml", path.name)
    assert recipe["model_name_or_path"] == load_recipe(path.parent / pretrain_name)["output_dir"]
    assert recipe["output_dir"] != recipe["model_name_or_path"]


def test_output_dirs_are_distinct():
    output_dirs = [load_recipe(path)["output_dir"] for path in RECIPES]
    assert len(set(output_dirs)) == len(output_dirs)


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.stem)
def test_recipe_documents_budgets(path):
    text = path.read_text()
    assert "576, 144, 64, 36, 16, 4, 1" in text
    recipe = load_recipe(path)
    if "elastic" in path.stem:
        assert recipe["elastic_budgets"] == BUDGETS
        assert "--elastic_budgets" in text
    else:
        assert "elastic_budgets" not in recipe
        assert "--num_visual_tokens" in text


def test_qwen_recipes_explain_the_model_choice():
    text = (TRAINING_DIR / "recipes" / "qwen7b_pretrain.yaml").read_text()
    assert "Qwen/Qwen-7B" in text and "Qwen2DecoderLayer" in text


EXPECTED_CONFIGS = {
    "single_gpu.yaml": (DistributedType.NO, 1),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8),
    "fsdp.yaml": (DistributedType.FSDP, 8),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 8),
    "deepspeed_zero3.yaml": (DistributedType.DEEPSPEED, 8),
    "cpu_ddp_2proc.yaml": (DistributedType.MULTI_GPU, 2),
}


def test_config_set():
    assert {path.name for path in ACCELERATE_CONFIGS.glob("*.yaml")} == set(EXPECTED_CONFIGS)


def launch_option_names() -> set[str]:
    return {action.dest for action in launch_command_parser()._actions}


@pytest.mark.parametrize("name", sorted(EXPECTED_CONFIGS))
def test_accelerate_config_loads(name):
    config = load_config_from_file(str(ACCELERATE_CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    assert (config.distributed_type, config.num_processes) == EXPECTED_CONFIGS[name]
    assert config.mixed_precision == ("no" if name.startswith("cpu") else "bf16")
    assert config.use_cpu == name.startswith("cpu")
    # accelerate launch copies these inline keys onto its options; a misspelt key would be ignored silently.
    inline_keys = set(config.deepspeed_config) | set(config.fsdp_config)
    assert inline_keys <= launch_option_names()


def test_deepspeed_configs():
    zero2 = load_config_from_file(str(ACCELERATE_CONFIGS / "deepspeed_zero2.yaml")).deepspeed_config
    zero3 = load_config_from_file(str(ACCELERATE_CONFIGS / "deepspeed_zero3.yaml")).deepspeed_config
    assert zero2["zero_stage"] == 2 and zero3["zero_stage"] == 3
    assert zero3["zero3_save_16bit_model"] is True and zero3["zero3_init_flag"] is True
    # Batch size, accumulation and clipping must come from the training arguments ("auto").
    for settings in (zero2, zero3):
        assert not {"gradient_accumulation_steps", "gradient_clipping"} & set(settings)


def test_fsdp_config_builds_the_plugin_accelerate_launch_would():
    arguments = launch_command_parser().parse_args(["--config_file", str(ACCELERATE_CONFIGS / "fsdp.yaml"), "x.py"])
    arguments, _, _ = _validate_launch_command(arguments)
    environment = {key: value for key, value in prepare_multi_gpu_env(arguments).items() if key.startswith("FSDP_")}
    with patch_environment(**environment):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.transformer_cls_names_to_wrap is None  # wraps by the model's _no_split_modules (test_fsdp.py)
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.activation_checkpointing is False


def test_fsdp_wrap_classes_exist_in_transformers():
    from transformers.models.clip import modeling_clip
    from transformers.models.llama import modeling_llama
    from transformers.models.qwen2 import modeling_qwen2

    assert modeling_clip.CLIPEncoderLayer and modeling_llama.LlamaDecoderLayer and modeling_qwen2.Qwen2DecoderLayer


PROBE = r"""
import os
from accelerate import PartialState
state = PartialState(cpu=os.environ.get("ACCELERATE_USE_CPU") == "true")
report = (state.process_index, state.num_processes, state.distributed_type.value, state.backend)
os.write(1, ("rank=%d world=%d type=%s backend=%s\n" % report).encode())  # one write: lines never interleave
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cpu_config_launches_two_gloo_processes(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    config = ACCELERATE_CONFIGS / "cpu_ddp_2proc.yaml"
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    command = [*launcher, "--config_file", str(config), "--main_process_port", str(free_port()), str(probe)]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = sorted(line for line in result.stdout.splitlines() if line.startswith("rank="))
    assert reports == [f"rank={rank} world=2 type=MULTI_CPU backend=gloo" for rank in (0, 1)]
