"""Training with TRL's SFTTrainer: what each stage trains, LoRA, resume, elastic budgets and the saved checkpoint."""

import re
from pathlib import Path

import PIL.Image
import pytest
import torch

from delta_llava.training.arguments import DeltaLlavaDataArguments, DeltaLlavaModelArguments
from delta_llava.training.elastic_budget import ElasticBudgetCollator, batch_budget
from delta_llava.training.length_grouped_batches import ShuffledLengthGroupedSampler
from delta_llava.training.model_builder import build_model_and_processor, count_parameters, set_trainable_parts
from delta_llava.training.synthetic_vqa import make_synthetic_vqa
from delta_llava.training.train import train
from isolated_python import run_without_project
from training_setup import IMAGE_SIZE, data_arguments, model_arguments, sft_config, write_tiny_parts


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return write_tiny_parts(tmp_path_factory.mktemp("parts"))


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "stage, freeze_tower, parts_that_train",
    [
        ("pretrain", True, ["multi_modal_projector"]),
        ("finetune", True, ["multi_modal_projector", "language_model", "lm_head"]),
        ("finetune", False, ["multi_modal_projector", "language_model", "lm_head", "vision_tower"]),
    ],
)
def test_each_stage_trains_exactly_its_parts(parts, stage, freeze_tower, parts_that_train):
    model, _ = build_model_and_processor(model_arguments(parts, stage=stage, freeze_vision_tower=freeze_tower))
    set_trainable_parts(model, stage, freeze_tower)
    modules = {
        "multi_modal_projector": model.model.multi_modal_projector,
        "language_model": model.model.language_model,
        "lm_head": model.lm_head,
        "vision_tower": model.model.vision_tower,
    }
    trainable, total = count_parameters(model)
    assert trainable == sum(numel(modules[name]) for name in parts_that_train)
    for name, module in modules.items():
        assert all(p.requires_grad == (name in parts_that_train) for p in module.parameters()), name


def test_tower_and_language_model_weights_come_from_their_folders(parts):
    from transformers import CLIPVisionModel, LlamaForCausalLM

    model, processor = build_model_and_processor(model_arguments(parts))
    tower = CLIPVisionModel.from_pretrained(parts["vision_tower"])
    language_model = LlamaForCausalLM.from_pretrained(parts["language_model"])
    loaded_tower = model.model.vision_tower.state_dict()
    assert all(torch.equal(loaded_tower[name], tensor) for name, tensor in tower.state_dict().items())
    assert torch.equal(model.lm_head.weight, language_model.lm_head.weight)
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")


@pytest.mark.parametrize("source", ["towers", "checkpoint"])
def test_attention_implementation_reaches_both_towers_and_computes_the_same(parts, tmp_path, source):
    torch.manual_seed(0)
    default, processor = build_model_and_processor(model_arguments(parts))
    if source == "towers":
        torch.manual_seed(0)
        eager, _ = build_model_and_processor(model_arguments(parts, attn_implementation="eager"))
    else:
        default.save_pretrained(tmp_path / "checkpoint")
        processor.save_pretrained(tmp_path / "checkpoint")
        arguments = DeltaLlavaModelArguments(model_name_or_path=str(tmp_path / "checkpoint"), attn_implementation="eager")
        eager, _ = build_model_and_processor(arguments)
    assert default.model.language_model.config._attn_implementation == "sdpa"
    assert eager.model.language_model.config._attn_implementation == "eager"
    assert eager.model.vision_tower.config._attn_implementation == "eager"
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "what word is written ?"}, {"type": "image"}]}]
    )
    inputs = processor(images=[PIL.Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "red")], text=prompt, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(eager.eval()(**inputs).logits, default.eval()(**inputs).logits, atol=1e-5, rtol=1e-4)


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_full_finetune_learns_and_saves_a_remote_code_checkpoint(parts, tmp_path):
    trainer = train(model_arguments(parts), data_arguments(parts), sft_config(tmp_path / "run", max_steps=12))
    history = losses(trainer)
    assert len(history) == 12 and sum(history[-3:]) / 3 < sum(history[:3]) / 3
    run_without_project(
        f"""
        import datasets
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained("run", trust_remote_code=True)
        processor = AutoProcessor.from_pretrained("run", trust_remote_code=True)
        row = datasets.load_from_disk({parts["dataset_path"]!r})[0]
        text = processor.apply_chat_template(row["messages"][:1], add_generation_prompt=True)
        inputs = processor(images=row["images"], text=[text], return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=3)
        assert out.shape[1] > inputs["input_ids"].shape[1]
        """,
        cwd=str(tmp_path),
    )
    from transformers import AutoModelForImageTextToText

    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "run", trust_remote_code=True)
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


@pytest.mark.parametrize("merge", [False, True])
def test_lora_takes_real_steps_and_lowers_the_loss(parts, tmp_path, merge):
    args = model_arguments(parts, use_lora=True, lora_r=8, lora_alpha=16, merge_lora=merge)
    trainer = train(args, data_arguments(parts), sft_config(tmp_path / "lora", max_steps=12, learning_rate=1e-2))
    history = losses(trainer)
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3
    saved = {p.name for p in (tmp_path / "lora").iterdir()}
    if merge:  # the saved full model carries the trained deltas inside the language model's weights
        from transformers import AutoModelForImageTextToText, LlamaForCausalLM

        assert "model.safetensors" in saved and "modeling_delta_llava.py" in saved
        merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "lora", trust_remote_code=True)
        base = LlamaForCausalLM.from_pretrained(parts["language_model"])
        name = "layers.0.self_attn.q_proj.weight"
        assert not torch.equal(merged.model.language_model.state_dict()[name], base.model.state_dict()[name])
    else:  # B starts at zero: non-zero B means real optimizer steps
        lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
        assert "adapter_model.safetensors" in saved
        from delta_llava.training.model_builder import load_lora_output

        reloaded, processor = load_lora_output(tmp_path / "lora")  # the base recorded beside the adapter
        batch = processor(images=[PIL.Image.new("RGB", (40, 40), "red")], text="<image> what", return_tensors="pt")
        trainer.model.eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded.eval()(**batch).logits, trainer.model(**batch).logits)


@pytest.mark.parametrize("length_grouped", [False, True])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(parts, tmp_path, length_grouped):
    args = model_arguments(parts, elastic_budgets=[64, 16, 4, 1])
    data = data_arguments(parts, length_grouped_batches=length_grouped)  # 16 rows, batch 4: crosses into epoch 1
    uninterrupted = train(args, data, sft_config(tmp_path / "a", max_steps=6, save_strategy="no"))
    first = train(args, data, sft_config(tmp_path / "b", max_steps=6, save_strategy="steps", save_steps=3))
    resumed = train(
        args, data, sft_config(tmp_path / "b", max_steps=6, resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    )
    assert resumed.state.global_step == 6
    sampler = uninterrupted._get_train_sampler()
    assert isinstance(sampler, ShuffledLengthGroupedSampler) == length_grouped
    if length_grouped:
        uninterrupted.batch_lengths = uninterrupted.batch_lengths[:-1]
        with pytest.raises(ValueError, match="one length per row"):
            uninterrupted._get_train_sampler()
    expected = uninterrupted.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], msg=name)
    assert first.state.global_step == 6


def test_a_save_killed_midway_is_never_resumed_and_resuming_the_last_whole_one_equals_an_uninterrupted_run(
    parts, tmp_path
):
    import os
    import signal
    import subprocess
    import sys

    from delta_llava.training.checkpoints import resolve_resume_checkpoint

    run = tmp_path / "killed"
    script = Path(__file__).parent / "killed_save_script.py"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(script), str(Path(parts["vision_tower"]).parent), str(run)],
                            env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert (run / "checkpoint-4" / "optimizer.pt").is_file()  # killed while writing it, not before
    assert resolve_resume_checkpoint("true", str(run)) == str(run / "checkpoint-2")
    with pytest.raises(ValueError, match="checkpoint-4 is incomplete .* the last complete one is .*checkpoint-2"):
        resolve_resume_checkpoint(str(run / "checkpoint-4"), str(run))

    resumed = train(model_arguments(parts), data_arguments(parts),
                    sft_config(run, max_steps=6, save_strategy="no", resume_from_checkpoint="true"))  # fmt: skip
    uninterrupted = train(model_arguments(parts), data_arguments(parts), sft_config(tmp_path / "whole", max_steps=6))
    assert losses(resumed)[-4:] == pytest.approx(losses(uninterrupted)[-4:], abs=1e-6)
    expected = uninterrupted.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)

    (run / "checkpoint-2" / "optimizer.pt").unlink()
    with pytest.raises(ValueError, match="checkpoint-2 has no optimizer state: resuming would restart them silently"):
        resolve_resume_checkpoint(str(run / "checkpoint-2"), str(run))
    assert resolve_resume_checkpoint(str(run / "checkpoint-2"), str(run), allow_missing_state=True)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        resolve_resume_checkpoint("true", str(tmp_path / "whole"))


def test_elastic_budgets_are_a_function_of_the_batch():
    batches = [[{"messages": [{"role": "user", "content": f"q{i}"}]}] for i in range(400)]
    drawn = [batch_budget(batch, [64, 16, 4, 1], seed=0) for batch in batches]
    assert drawn == [batch_budget(batch, [64, 16, 4, 1], seed=0) for batch in batches]
    assert {budget: drawn.count(budget) for budget in (64, 16, 4, 1)} == pytest.approx(
        {64: 100, 16: 100, 4: 100, 1: 100}, abs=35
    )
    assert drawn != [batch_budget(batch, [64, 16, 4, 1], seed=1) for batch in batches]


class RecordingProcessor:
    """Stands in for the processor: the budget the collator sets is what the wrapped collator sees."""

    num_visual_tokens = 9


def test_weighted_elastic_budgets_draw_each_budget_as_often_as_its_weight():
    processor = RecordingProcessor()
    collator = ElasticBudgetCollator(lambda examples: {"budget": processor.num_visual_tokens}, processor,
                                     [36, 9, 1], seed=0, weights=[1, 3, 1])  # fmt: skip
    batches = [[{"messages": [{"role": "user", "content": f"q{i}"}]}] for i in range(1000)]
    drawn = [collator(batch)["num_visual_tokens"] for batch in batches]
    assert all(collator(batch)["budget"] == budget for batch, budget in zip(batches[:20], drawn))
    assert {budget: drawn.count(budget) for budget in (36, 9, 1)} == pytest.approx({36: 200, 9: 600, 1: 200}, abs=50)
    # the same draws as listing 9 three times: a weighted run reproduces a run made with the repeated list
    assert drawn == [batch_budget(batch, [36, 9, 9, 9, 1], seed=0) for batch in batches]


@pytest.mark.parametrize(
    ("weights", "mode", "message"),
    [
        ([1, 3], "one_per_batch", r"one whole number >= 1 per budget of elastic_budgets \[36, 9, 1\]"),
        ([1, 0, 1], "one_per_batch", r"one whole number >= 1 per budget"),
        ([1, 3, 1], "every_budget", r"need elastic_mode 'one_per_batch'"),
    ],
)
def test_bad_budget_weights_name_the_fix(parts, weights, mode, message):
    with pytest.raises(ValueError, match=message):
        model_arguments(parts, elastic_budgets=[36, 9, 1], elastic_budget_weights=weights, elastic_mode=mode)
    with pytest.raises(ValueError, match="without elastic_budgets"):
        model_arguments(parts, elastic_budget_weights=[1])


def test_invalid_elastic_budget_fails_before_training(parts, tmp_path):
    with pytest.raises(ValueError, match=r"elastic_budgets=36 is not possible.*Allowed values: \[64, 16, 4, 1\]"):
        train(model_arguments(parts, elastic_budgets=[16, 36]), data_arguments(parts), sft_config(tmp_path / "x"))


def test_argument_errors_name_the_fix(parts):
    with pytest.raises(ValueError, match="Give exactly one model source"):
        model_arguments(parts, model_name_or_path="some/checkpoint")
    with pytest.raises(ValueError, match="--stage 'align' is unknown"):
        model_arguments(parts, stage="align")
    with pytest.raises(ValueError, match="--use_lora/--use_qlora apply to --stage finetune"):
        model_arguments(parts, stage="pretrain", use_lora=True)


def test_memory_layers_flag_sets_the_levels_the_projector_reads(parts):
    default, _ = build_model_and_processor(model_arguments(parts))
    assert default.config.memory_layers == [1]  # a 2-layer tower's scaled default: one level, below the query layer
    near_query, _ = build_model_and_processor(model_arguments(parts, memory_layers=[1, 2]))
    assert near_query.config.memory_layers == [1, 2]
    assert near_query.model.hidden_states_read() == [1, 2]  # -1 (the patch features) is layer 2 of 0..2
    with pytest.raises(ValueError, match=r"memory_layers=\[5\] must be hidden-state indices"):
        build_model_and_processor(model_arguments(parts, memory_layers=[5]))


def test_continuing_keeps_the_checkpoints_budget_and_settings_unless_a_flag_changes_them(parts, tmp_path):
    model, processor = build_model_and_processor(model_arguments(parts, num_visual_tokens=4, use_global_token=True))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    source = {"vision_tower": None, "language_model": None, "model_name_or_path": str(tmp_path)}
    kept, kept_processor = build_model_and_processor(model_arguments(parts, **source, num_visual_tokens=None))
    assert kept.config.num_visual_tokens == kept_processor.num_visual_tokens == 4  # not the default 144
    assert kept.config.use_global_token and kept.config.delta_layout == "official"
    changed, changed_processor = build_model_and_processor(
        model_arguments(parts, **source, num_visual_tokens=16, max_object_tokens=3)
    )
    assert changed.config.num_visual_tokens == changed_processor.num_visual_tokens == 16
    assert changed.config.max_object_tokens == changed_processor.max_object_tokens == 3
    for flag, value in (("delta_layout", "shared_base"), ("use_global_token", False), ("delta_rank", 8), ("memory_layers", [2])):
        with pytest.raises(ValueError, match=re.escape(f"--{flag} {value!r} differs from the checkpoint") + ".* its weights fix"):
            build_model_and_processor(model_arguments(parts, **source, **{flag: value}, num_visual_tokens=None))


def test_two_process_ddp_ends_with_the_same_weights_on_both_ranks(parts, tmp_path):
    from transformers import set_seed

    from accelerate_launch import launch

    launch("cpu_ddp_2proc.yaml", "ddp_train_script.py", str(Path(parts["vision_tower"]).parent), str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert all(rank["num_processes"] == 2 and rank["backend"] == "gloo" for rank in ranks)
    set_seed(0)  # what train() does before building, so this is the starting point of both ranks
    initial, _ = build_model_and_processor(model_arguments(parts))
    projector = "model.multi_modal_projector.output_mlp.0.weight"
    assert not torch.equal(ranks[0]["weights"][projector], initial.state_dict()[projector])  # real steps were taken
    for name, tensor in ranks[0]["weights"].items():
        torch.testing.assert_close(tensor, ranks[1]["weights"][name], rtol=0, atol=0, msg=name)


def test_qlora_trains_adapters_on_a_4bit_language_model(parts, tmp_path):
    from bitsandbytes.nn import Linear4bit

    model, processor = build_model_and_processor(model_arguments(parts))
    model.save_pretrained(tmp_path / "stage1")
    processor.save_pretrained(tmp_path / "stage1")
    args = model_arguments(parts, vision_tower=None, language_model=None, model_name_or_path=str(tmp_path / "stage1"),
                           use_qlora=True, lora_r=8, lora_alpha=16)  # fmt: skip
    trainer = train(args, data_arguments(parts), sft_config(tmp_path / "qlora", max_steps=12, learning_rate=1e-2))
    history = losses(trainer)
    assert sum(history[-3:]) / 3 < sum(history[:3]) / 3
    base = trainer.model.get_base_model()
    assert isinstance(base.model.language_model.layers[0].self_attn.q_proj.base_layer, Linear4bit)
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


def test_loss_per_answer_weighs_each_answer_as_one(parts, tmp_path):
    questions = make_synthetic_vqa(16, seed=0, image_size=IMAGE_SIZE, question_types=["attribute", "caption"])
    questions.save_to_disk(str(tmp_path / "data"))  # one-word answers beside long captions
    args = model_arguments(parts, loss_per_answer=True, drop_path_rate=0.0)
    data = DeltaLlavaDataArguments(dataset_path=str(tmp_path / "data"))
    trainer = train(args, data, sft_config(tmp_path / "run", max_steps=2))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model = trainer.model.train()
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    answer_lengths = (labels != -100).sum(dim=1)
    assert answer_lengths.min() < answer_lengths.max()  # else both losses would agree
    answer_losses = [
        torch.nn.functional.cross_entropy(row_logits[row_labels != -100], row_labels[row_labels != -100])
        for row_logits, row_labels in zip(logits, labels)
    ]
    torch.testing.assert_close(loss.detach(), torch.stack(answer_losses).mean())
    per_token = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
    assert not torch.isclose(loss.detach(), per_token, rtol=1e-3)


def test_maskinversion_object_tokens_train_from_a_precomputed_column(parts, tmp_path):
    """The embeddings come from the dataset (as precompute_object_embeddings writes them): nothing is inverted while
    training, and the map from their width to the tower's trains with the projector."""
    import datasets
    import numpy as np

    rows = datasets.load_from_disk(parts["dataset_path"])
    rng = np.random.default_rng(0)
    column = [[rng.standard_normal((1 + index % 3, 8)).astype(np.float32).tolist()] for index in range(len(rows))]
    rows.add_column("object_embeddings", column).save_to_disk(str(tmp_path / "data"))
    arguments = model_arguments(parts, use_object_tokens=True, object_features="mask_inversion", object_embedding_dim=8)
    data = data_arguments({**parts, "dataset_path": str(tmp_path / "data")})
    trainer = train(arguments, data, sft_config(tmp_path / "run", max_steps=4))
    model = trainer.model
    assert model.config.object_features == "mask_inversion" and model.model.object_embedding_map.weight.requires_grad
    assert len(losses(trainer)) == 4 and all(np.isfinite(losses(trainer)))
    batch = trainer.data_collator([dict(row) for row in datasets.load_from_disk(str(tmp_path / "data")).select(range(4))])
    assert batch["object_embeddings"].shape == (4, 3, 8)
    model.zero_grad()
    model(**batch).loss.backward()  # the map of the embeddings learns with the projector
    assert model.model.object_embedding_map.weight.grad.abs().sum() > 0


def test_every_budget_batches_hold_each_example_at_each_budget_and_average_their_losses(parts, tmp_path):
    """elastic_mode="every_budget": the batch is the per-budget batches, padded to one length and stacked; its loss is
    the token-weighted mean of theirs, so every step trains every budget on the same questions."""
    from delta_llava.training.elastic_budget import ElasticBudgetCollator
    from delta_llava.training.object_mask_collator import ObjectMaskCollator

    budgets = [64, 16, 4, 1]
    model, processor = build_model_and_processor(model_arguments(parts, elastic_budgets=budgets))
    examples = [dict(row) for row in datasets_rows(parts, 3)]
    inner = ObjectMaskCollator(processor, max_length=None, assistant_only_loss=True)
    merged = ElasticBudgetCollator(inner, processor, budgets, mode="every_budget")(examples)
    singles = [ElasticBudgetCollator(inner, processor, [budget])(examples) for budget in budgets]
    assert merged["input_ids"].shape[0] == 3 * len(budgets) and "num_visual_tokens" not in merged
    assert merged["visual_token_budget"].tolist() == [budget for budget in budgets for _ in range(3)]
    for index, single in enumerate(singles):
        rows = slice(3 * index, 3 * index + 3)
        length = single["input_ids"].shape[1]
        for key, pad in (("input_ids", processor.tokenizer.pad_token_id), ("attention_mask", 0), ("labels", -100)):
            block = merged[key][rows]
            kept = block[:, :length] if processor.tokenizer.padding_side == "right" else block[:, -length:]
            assert torch.equal(kept, single[key]), key
            rest = block[:, length:] if processor.tokenizer.padding_side == "right" else block[:, :-length]
            assert (rest == pad).all(), key
    model.eval()
    with torch.no_grad():
        loss = model(**merged).loss
        tokens = [(single["labels"][:, 1:] != -100).sum() for single in singles]
        single_losses = [model(**{k: v for k, v in s.items() if k != "num_visual_tokens"},
                               num_visual_tokens=s["num_visual_tokens"]).loss for s in singles]  # fmt: skip
    expected = sum(l * n for l, n in zip(single_losses, tokens)) / sum(tokens)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    trainer = train(
        model_arguments(parts, elastic_budgets=budgets, elastic_mode="every_budget"),
        data_arguments(parts),
        sft_config(tmp_path / "every", max_steps=2),
    )
    assert trainer.state.global_step == 2
    with pytest.raises(ValueError, match="--elastic_mode 'all' is unknown"):
        model_arguments(parts, elastic_budgets=budgets, elastic_mode="all")


def datasets_rows(parts, count: int) -> list[dict]:
    import datasets

    return list(datasets.load_from_disk(parts["dataset_path"]).select(range(count)))
