"""lmms-eval end to end: `--model delta_llava` on the synthetic VQA set as a local task scores what the project's own
`evaluate_vqa` scores, at two budgets, in one process and under `accelerate launch`; its results fill the cards.

Needs the `eval` extra (lmms-eval); the README's test command installs it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import ModelCard
from lmms_eval.api.instance import Instance
from transformers import AutoModelForImageTextToText, AutoProcessor

from accelerate_launch import ACCELERATE_CONFIGS, free_port
from delta_llava.evaluation.lmms_eval_model import (
    DeltaLlavaLmms,
    cut_at_first,
    sampling_settings,
    stop_strings,
    to_processor_messages,
)
from delta_llava.evaluation.synthetic_vqa_task import TASK_NAME, doc_to_messages, write_synthetic_vqa_task
from delta_llava.hub_cards.eval_results import load_evaluation_results
from delta_llava.hub_cards.export import export_checkpoints
from delta_llava.processing.object_masks import ObjectMaskExtractor
from delta_llava.training.evaluate_vqa import evaluate_budget
from delta_llava.training.synthetic_vqa import make_synthetic_vqa
from delta_llava.training.train import train
from test_object_masks import make_extractor
from training_setup import IMAGE_SIZE, data_arguments, model_arguments, sft_config, write_tiny_parts

BUDGETS = (16, 4)
QUESTION_TYPES = ["attribute", "existence"]
SCORED = ["overall", *QUESTION_TYPES]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny checkpoint trained until it answers (40 steps), 12 held-out questions, and their lmms-eval task."""
    root = tmp_path_factory.mktemp("lmms_eval")
    parts = write_tiny_parts(root / "parts", num_samples=32)
    checkpoint = root / "checkpoint"
    train(model_arguments(parts), data_arguments(parts), sft_config(checkpoint, max_steps=40, learning_rate=1e-2))
    questions = make_synthetic_vqa(12, seed=1, image_size=IMAGE_SIZE, question_types=QUESTION_TYPES)
    write_synthetic_vqa_task(questions, root / "tasks")
    return SimpleNamespace(root=root, parts=parts, checkpoint=checkpoint, questions=questions, tasks=root / "tasks")


def run_lmms_eval(setup, output_dir: Path, budget: int, launcher: list[str] | None = None) -> SimpleNamespace:
    """Runs the `lmms-eval` command (or `python -m lmms_eval` under `launcher`); returns its results and answers."""
    command = [str(Path(sys.executable).with_name("lmms-eval"))] if launcher is None else [*launcher, "-m", "lmms_eval"]
    command += [
        "--model", "delta_llava",
        "--model_args", f"pretrained={setup.checkpoint},num_visual_tokens={budget},device=cpu",
        "--include_path", str(setup.tasks), "--tasks", TASK_NAME,
        "--batch_size", "4", "--output_path", str(output_dir), "--log_samples",
    ]  # fmt: skip
    env = dict(os.environ, **OFFLINE, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    results_files = list(output_dir.rglob("*_results.json"))
    assert result.returncode == 0 and len(results_files) == 1, result.stdout[-3000:] + result.stderr[-3000:]
    samples_file = next(output_dir.rglob(f"*_samples_{TASK_NAME}.jsonl"))
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    answers = [s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0] for s in samples]
    return SimpleNamespace(path=results_files[0], results=json.loads(results_files[0].read_text()), answers=answers)


@pytest.fixture(scope="module")
def lmms_eval_runs(setup) -> dict[int, SimpleNamespace]:
    return {budget: run_lmms_eval(setup, setup.root / f"lmms_eval_{budget}", budget) for budget in BUDGETS}


@pytest.fixture(scope="module")
def reference(setup) -> dict[int, dict]:
    """The project's own evaluation, one question at a time."""
    model = AutoModelForImageTextToText.from_pretrained(setup.checkpoint, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(setup.checkpoint, trust_remote_code=True)
    return {budget: evaluate_budget(model, processor, setup.questions, budget, batch_size=1) for budget in BUDGETS}


def reported_scores(run: SimpleNamespace) -> dict[str, float]:
    return {name: run.results["results"][TASK_NAME][f"{name}_accuracy,none"] for name in SCORED}


def test_lmms_eval_scores_equal_the_projects_evaluation_at_two_budgets(lmms_eval_runs, reference):
    for budget in BUDGETS:
        run, own = lmms_eval_runs[budget], reference[budget]
        assert run.results["config"]["model_backend"].endswith("DeltaLlavaLmms (chat)")
        # batches of 4 (lmms-eval) answer exactly as one question at a time (evaluate_vqa with batch_size=1)
        assert run.answers == own["predictions"], budget
        assert reported_scores(run) == {name: own["scores"][name]["accuracy"] for name in SCORED}, budget
    assert any(answer for answer in reference[BUDGETS[0]]["predictions"]), "the tiny checkpoint should answer"
    # the budget reaches the model: the same questions get other answers at 4 tokens than at 16
    assert lmms_eval_runs[16].answers != lmms_eval_runs[4].answers


def test_two_processes_under_accelerate_launch_answer_as_one(setup, lmms_eval_runs):
    launcher = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ACCELERATE_CONFIGS / "cpu_ddp_2proc.yaml"), "--main_process_port", str(free_port()),
    ]  # fmt: skip
    run = run_lmms_eval(setup, setup.root / "lmms_eval_2proc", 4, launcher)
    assert run.answers == lmms_eval_runs[4].answers
    assert reported_scores(run) == reported_scores(lmms_eval_runs[4])


def test_export_puts_lmms_eval_scores_on_the_card_of_each_budget(setup, lmms_eval_runs, tmp_path):
    paths = [lmms_eval_runs[budget].path for budget in BUDGETS]
    evaluation = load_evaluation_results(paths)
    assert evaluation.budgets == sorted(BUDGETS, reverse=True)
    exports = export_checkpoints([setup.checkpoint], tmp_path / "out", list(BUDGETS), results=paths)
    for export in exports:
        card = ModelCard.load(export.folder / "README.md")
        reported = {r.metric_name: r.metric_value for r in card.data.eval_results}
        expected = reported_scores(lmms_eval_runs[export.budget])
        assert reported == {f"{TASK_NAME} {name}_accuracy": value for name, value in expected.items()}
        assert {r.dataset_split for r in card.data.eval_results} == {"test"}


def test_results_without_a_budget_or_with_one_task_twice_are_refused(lmms_eval_runs, tmp_path):
    raw = json.loads(lmms_eval_runs[16].path.read_text())
    raw["config"]["model_args"] = "pretrained=somewhere"
    (tmp_path / "no_budget.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="num_visual_tokens=<N>"):
        load_evaluation_results(tmp_path / "no_budget.json")
    (tmp_path / "same_run.json").write_text(lmms_eval_runs[16].path.read_text())
    with pytest.raises(ValueError, match="again"):
        load_evaluation_results([lmms_eval_runs[16].path, tmp_path / "same_run.json"])


def requests_for(questions, generation_kwargs: list[dict]) -> tuple[list[Instance], dict]:
    """One generate_until request per question (lmms-eval's chat layout) and the task_dict the model reads docs from."""
    requests = [
        Instance(
            request_type="generate_until",
            arguments=("", doc_to_messages, dict(kwargs), doc_id, TASK_NAME, "test"),
            idx=0,
            metadata={"task": TASK_NAME, "doc_id": doc_id, "repeats": 1},
        )
        for doc_id, kwargs in enumerate(generation_kwargs)
    ]
    return requests, {TASK_NAME: {"test": questions}}


def test_batches_and_mixed_generation_kwargs_answer_as_one_request_at_a_time(setup):
    kinds = [
        {"max_new_tokens": 24, "until": []},
        {"max_new_tokens": 1, "until": []},
        {"max_new_tokens": 24, "until": ["s"]},
    ]
    requests, task_dict = requests_for(setup.questions, [kinds[i % 3] for i in range(len(setup.questions))])
    answers = {}
    for batch_size in (1, 5):
        model = DeltaLlavaLmms(
            pretrained=str(setup.checkpoint), num_visual_tokens=4, device="cpu", batch_size=batch_size
        )
        model.task_dict = task_dict
        answers[batch_size] = model.generate_until(requests)
    assert answers[1] == answers[5]
    assert all("s" not in answer for answer in answers[1][2::3])


def test_dtype_and_device_reach_the_model_and_its_inputs(setup):
    model = DeltaLlavaLmms(pretrained=str(setup.checkpoint), num_visual_tokens=4, dtype="bfloat16", device="cpu")
    assert model.model.dtype == torch.bfloat16 and model.model.device == torch.device("cpu")
    requests, model.task_dict = requests_for(setup.questions, [{"max_new_tokens": 3, "until": []}] * 2)
    assert all(isinstance(answer, str) for answer in model.generate_until(requests))
    with pytest.raises(ValueError, match="dtype='fp8' is not one of"):
        DeltaLlavaLmms(pretrained=str(setup.checkpoint), dtype="fp8")


def test_generation_kwargs_become_generate_arguments():
    assert sampling_settings({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1}) == {
        "max_new_tokens": 16,
        "num_beams": 1,
        "do_sample": False,
    }
    assert sampling_settings({"temperature": 0.7, "top_p": 0.9}) == {
        "max_new_tokens": 1024,
        "num_beams": 1,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
    }
    assert stop_strings("\n") == ["\n"] and stop_strings(["ASSISTANT:", ""]) == ["ASSISTANT:"]
    assert cut_at_first("yes. ASSISTANT: no\n", ["\n", "ASSISTANT:"]) == "yes. "
    with pytest.raises(TypeError, match="until"):
        stop_strings([1])


@pytest.fixture(scope="module")
def object_token_setup(setup, tmp_path_factory):
    """A checkpoint with object tokens (one training step) and a tiny Deformable DETR + SAM saved as folders."""
    root = tmp_path_factory.mktemp("object_tokens")
    checkpoint = root / "checkpoint"
    train(
        model_arguments(setup.parts, use_object_tokens=True),
        data_arguments(setup.parts),
        sft_config(checkpoint, max_steps=1),
    )
    extractor = make_extractor()
    for model, processor, name in [
        (extractor.detector, extractor.detector_processor, "detector"),
        (extractor.segmenter, extractor.segmenter_processor, "segmenter"),
    ]:
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    return SimpleNamespace(checkpoint=checkpoint, detector=root / "detector", segmenter=root / "segmenter")


def test_object_masks_are_computed_on_the_fly_for_a_mask_checkpoint(setup, object_token_setup):
    model = DeltaLlavaLmms(
        pretrained=str(object_token_setup.checkpoint),
        num_visual_tokens=4,
        max_object_tokens=3,
        object_detector=str(object_token_setup.detector),
        segmenter=str(object_token_setup.segmenter),
        device="cpu",
        batch_size=3,
    )
    questions = setup.questions.select(range(6))
    requests, model.task_dict = requests_for(questions, [{"max_new_tokens": 4, "until": []}] * len(questions))
    answers = model.generate_until(requests)

    # the same questions with the extractor's masks passed by hand, one at a time
    extractor = ObjectMaskExtractor.from_pretrained(str(object_token_setup.detector), str(object_token_setup.segmenter))
    processor, reference = model.processor, []
    for row in questions:
        masks = [found.masks for found in extractor(row["images"])]
        prompt = processor.apply_chat_template(row["messages"][:1], add_generation_prompt=True)
        inputs = processor(
            images=[row["images"]], text=[prompt], num_visual_tokens=4, object_masks=masks, max_object_tokens=3
        )
        num_image_tokens = int((inputs["input_ids"] == model.model.config.image_token_id).sum())
        assert num_image_tokens == 4 + min(3, len(masks[0])) > 4  # object tokens are in the prompt
        output = model.model.generate(**inputs, num_visual_tokens=4, max_object_tokens=3, max_new_tokens=4)
        reference.append(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    assert answers == reference


def test_a_maskinversion_checkpoint_inverts_the_masks_it_extracts(setup, object_token_setup, tmp_path):
    from mask_inversion_setup import tiny_clip

    from delta_llava.processing import MaskInversion
    from delta_llava.training.model_builder import build_model_and_processor

    clip = tiny_clip()  # its image size is the tiny tower's (32 px), so it reads the processor's pixel values
    clip.save_pretrained(tmp_path / "clip")
    arguments = model_arguments(setup.parts, use_object_tokens=True, object_features="mask_inversion", object_embedding_dim=16)
    model, processor = build_model_and_processor(arguments)
    model.config.mask_inversion = {**model.config.mask_inversion, "source": str(tmp_path / "clip"), "iterations": 2}
    model.save_pretrained(tmp_path / "checkpoint")
    processor.save_pretrained(tmp_path / "checkpoint")

    evaluated = DeltaLlavaLmms(
        pretrained=str(tmp_path / "checkpoint"), num_visual_tokens=4, max_object_tokens=3, device="cpu", batch_size=2,
        object_detector=str(object_token_setup.detector), segmenter=str(object_token_setup.segmenter),
    )  # fmt: skip
    assert isinstance(evaluated.mask_inverter, MaskInversion) and evaluated.mask_inverter.iterations == 2
    questions = setup.questions.select(range(2))
    requests, evaluated.task_dict = requests_for(questions, [{"max_new_tokens": 3, "until": []}] * len(questions))
    answers = evaluated.generate_until(requests)

    extractor = ObjectMaskExtractor.from_pretrained(str(object_token_setup.detector), str(object_token_setup.segmenter))
    inverter = MaskInversion(clip, iterations=2)
    for row, answer in zip(questions, answers):
        masks = [found.masks for found in extractor(row["images"])]
        prompt = evaluated.processor.apply_chat_template(row["messages"][:1], add_generation_prompt=True)
        inputs = evaluated.processor(images=[row["images"]], text=[prompt], num_visual_tokens=4, object_masks=masks,
                                     max_object_tokens=3, object_mask_inverter=inverter)  # fmt: skip
        assert "object_embeddings" in inputs and "object_masks" not in inputs
        output = evaluated.model.generate(**inputs, max_new_tokens=3)
        expected = evaluated.processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert answer == expected.strip()
    unnamed = model.config
    unnamed.mask_inversion = {**unnamed.mask_inversion, "source": None}
    with pytest.raises(ValueError, match=r"mask_inversion\['source'\] naming the CLIP checkpoint"):
        MaskInversion.from_config(unnamed)


def test_bad_model_args_name_the_fix(setup, object_token_setup):
    with pytest.raises(TypeError, match="Unknown --model_args for delta_llava: \\['num_visual_token'\\]"):
        DeltaLlavaLmms(pretrained=str(setup.checkpoint), num_visual_token=4)
    with pytest.raises(ValueError, match="num_visual_tokens=9 is not possible: .* Allowed values: \\[64, 16, 4, 1\\]"):
        DeltaLlavaLmms(pretrained=str(setup.checkpoint), num_visual_tokens=9)
    with pytest.raises(ValueError, match="batch_size='auto' must be a positive integer"):
        DeltaLlavaLmms(pretrained=str(setup.checkpoint), batch_size="auto")
    with pytest.raises(ValueError, match="segmenter=<SAM id or folder>"):
        DeltaLlavaLmms(pretrained=str(setup.checkpoint), object_detector=str(object_token_setup.detector))
    with pytest.raises(ValueError, match="has no object tokens"):
        DeltaLlavaLmms(
            pretrained=str(setup.checkpoint),
            object_detector=str(object_token_setup.detector),
            segmenter=str(object_token_setup.segmenter),
        )
    with pytest.raises(ValueError, match="uses object tokens but no masks"):
        DeltaLlavaLmms(pretrained=str(object_token_setup.checkpoint))
    with pytest.raises(ValueError, match="reads images and text only"):
        to_processor_messages([{"role": "user", "content": [{"type": "video", "url": "clip.mp4"}]}])
