"""Runs in the vLLM environment (transformers 5.19): greedy answers of vLLM's offline `LLM` for a job file.

    python tests/vllm_offline_run.py JOB.json RESULT.json

JOB holds `checkpoints` (folders) and `requests` (`image`: a PNG path, `question`, `budget`) and `max_tokens`.
For each checkpoint, every request is answered twice: all requests in one `LLM.generate` batch (each with its own
`mm_processor_kwargs`, so different budgets share a batch), and through `LLM.chat` (the OpenAI server's path).
RESULT maps each checkpoint to {"generate": [...], "chat": [...]}, each entry the prompt's and the answer's token ids.
"""

import gc
import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import PIL.Image  # noqa: E402
from transformers import AutoProcessor  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402


def messages(question: str, image=None) -> list[dict]:
    image_part = {"type": "image"} if image is None else {"type": "image_pil", "image_pil": image}
    return [{"role": "user", "content": [image_part, {"type": "text", "text": question}]}]


def answer_all(checkpoint: str, requests: list[dict], max_tokens: int) -> dict:
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    llm = LLM(
        model=checkpoint, trust_remote_code=True, model_impl="transformers", enforce_eager=True, dtype="float32",
        max_model_len=2048, limit_mm_per_prompt={"image": 1},
    )  # fmt: skip
    greedy = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    images = [PIL.Image.open(request["image"]).convert("RGB") for request in requests]
    prompts = []
    for request, image in zip(requests, images):
        text = processor.apply_chat_template(messages(request["question"]), add_generation_prompt=True, tokenize=False)
        prompts.append({
            "prompt": text.removeprefix(processor.tokenizer.bos_token),  # vLLM's tokenizer writes the BOS itself
            "multi_modal_data": {"image": image},
            "mm_processor_kwargs": {"num_visual_tokens": request["budget"]},
        })  # fmt: skip
    batched = llm.generate(prompts, greedy, use_tqdm=False)
    chats = [
        llm.chat(messages(request["question"], image), greedy, use_tqdm=False,
                 mm_processor_kwargs={"num_visual_tokens": request["budget"]})[0]
        for request, image in zip(requests, images)
    ]  # fmt: skip
    del llm
    gc.collect()

    def ids(outputs) -> list[dict]:
        return [{"prompt": list(o.prompt_token_ids), "answer": list(o.outputs[0].token_ids)} for o in outputs]

    return {"generate": ids(batched), "chat": ids(chats)}


def main() -> None:
    job_path, result_path = sys.argv[1:3]
    job = json.loads(open(job_path).read())
    results = {folder: answer_all(folder, job["requests"], job["max_tokens"]) for folder in job["checkpoints"]}
    with open(result_path, "w") as result:
        json.dump(results, result)


if __name__ == "__main__":
    main()
