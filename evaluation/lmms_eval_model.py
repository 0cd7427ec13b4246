"""Delta-LLaVA as an lmms-eval chat model: `lmms-eval --model delta_llava --model_args pretrained=<folder or Hub id>`.

lmms-eval (>= 0.7) hands a chat model `generate_until` requests whose arguments are
`(context, doc_to_messages, generation_kwargs, doc_id, task, split)`; the model rebuilds each conversation from the
task's document with `doc_to_messages`, renders it with the checkpoint's own chat template and generates. Requests
are answered in batches of `batch_size`, grouped by generation settings; left padding keeps the batched answers those
of one request at a time.

`--model_args` (comma-separated `key=value`):
    pretrained: checkpoint folder or Hub id (loaded with `trust_remote_code=True`).
    num_visual_tokens: projector tokens per image, a perfect square (default: the processor's).
    max_object_tokens: object tokens per image for a checkpoint with object tokens (default: the processor's).
    object_detector, segmenter: Deformable DETR and SAM (Hub ids or folders); the processor then computes each image's
        object masks on the fly with an `ObjectMaskExtractor`, so a Mask-LLaVA checkpoint needs no precomputed masks.
    dtype: "float32" (default), "bfloat16", "float16" or "auto" (the checkpoint's).
    device: "cpu", "cuda", "cuda:1", ... (default: CUDA when there is one); under `accelerate launch` each process
        uses its own device.
    batch_size: requests per forward pass (default 1).
"""

import json
from collections import defaultdict

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.protocol import ChatMessages
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoModelForImageTextToText, AutoProcessor

from ..processing.mask_inversion import MaskInversion
from ..processing.object_masks import ObjectMaskExtractor

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# lmms-eval's own chat models answer with up to 1024 new tokens when a task sets no limit.
DEFAULT_MAX_NEW_TOKENS = 1024


class DeltaLlavaLmms(lmms):
    """An lmms-eval chat model around `DeltaLlavaForConditionalGeneration` and `DeltaLlavaProcessor`."""

    is_simple = False

    def __init__(
        self,
        pretrained: str,
        num_visual_tokens: int | None = None,
        max_object_tokens: int | None = None,
        object_detector: str | None = None,
        segmenter: str | None = None,
        dtype: str = "float32",
        device: str | None = None,
        batch_size: int | str = 1,
        **unexpected,
    ) -> None:
        super().__init__()
        unexpected = {key: value for key, value in unexpected.items() if value is not None}
        unexpected.pop("max_batch_size", None)  # lmms-eval passes it to every model; batches here are fixed-size
        if unexpected:
            raise TypeError(
                f"Unknown --model_args for delta_llava: {sorted(unexpected)}. Known: pretrained, num_visual_tokens, "
                "max_object_tokens, object_detector, segmenter, dtype, device, batch_size."
            )
        if str(batch_size).isdigit() and int(batch_size) >= 1:
            self.batch_size = int(batch_size)
        else:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer (requests per forward pass).")
        if dtype != "auto" and dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {['auto', *DTYPES]}.")
        if (object_detector is None) != (segmenter is None):
            raise ValueError(
                "Object masks need both models: pass object_detector=<Deformable DETR id or folder> together with "
                "segmenter=<SAM id or folder>, or neither."
            )

        self.accelerator = Accelerator()
        if self.accelerator.num_processes > 1:
            self.device = self.accelerator.device
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        else:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForImageTextToText.from_pretrained(
            pretrained, trust_remote_code=True, dtype=dtype if dtype == "auto" else DTYPES[dtype]
        ).to(self.device)
        self.model.eval()
        if num_visual_tokens is not None:  # refused here, before lmms-eval fetches and prepares any dataset
            self.model.config.check_num_visual_tokens(num_visual_tokens)
        self.processor = AutoProcessor.from_pretrained(pretrained, trust_remote_code=True)
        self.processor.tokenizer.padding_side = "left"  # generation continues every row right after its prompt
        self.num_visual_tokens = num_visual_tokens
        self.max_object_tokens = max_object_tokens
        self.mask_extractor = self.mask_inverter = None
        if object_detector is not None:
            if not self.processor.use_object_tokens:
                raise ValueError(
                    f"{pretrained} has no object tokens (use_object_tokens=False), so object masks would be ignored. "
                    "Drop object_detector and segmenter from --model_args."
                )
            self.mask_extractor = ObjectMaskExtractor.from_pretrained(object_detector, segmenter, device=self.device)
            if self.model.config.object_features == "mask_inversion":  # the masks' MaskInversion embeddings
                self.mask_inverter = MaskInversion.from_config(self.model.config, device=self.device)
        elif self.processor.use_object_tokens and max_object_tokens != 0:
            raise ValueError(
                f"{pretrained} uses object tokens but no masks would be computed. Pass object_detector=<id or folder> "
                "and segmenter=<id or folder> in --model_args, or max_object_tokens=0 to evaluate without them."
            )

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Answer each request; requests with equal generation kwargs share batches. Answers keep request order."""
        groups = defaultdict(list)
        for index, request in enumerate(requests):
            groups[json.dumps(request.args[2], sort_keys=True, default=str)].append(index)
        answers = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="delta_llava answering")
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                for index, answer in zip(batch, self._answer_batch([requests[index] for index in batch])):
                    answers[index] = answer
                    self.cache_hook.add_partial(
                        "generate_until", (requests[index].args[0], requests[index].args[2]), answer
                    )
                progress.update(len(batch))
        progress.close()
        return answers

    @torch.inference_mode()
    def _answer_batch(self, requests: list[Instance]) -> list[str]:
        """Generate for requests that share their generation kwargs; each answer is cut at the first `until` string."""
        prompts, images = [], []
        for request in requests:
            _, doc_to_messages, _, doc_id, task, split = request.args
            messages, request_images = to_processor_messages(doc_to_messages(self.task_dict[task][split][doc_id]))
            prompts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True))
            images.append(request_images)
        inputs = self.processor(
            images=images if any(images) else None,
            text=prompts,
            num_visual_tokens=self.num_visual_tokens,
            max_object_tokens=self.max_object_tokens,
            object_mask_extractor=self.mask_extractor,  # None: no object masks
            object_mask_inverter=self.mask_inverter,  # None: the model pools its object tokens from the masks
            padding=True,
            return_tensors="pt",
        ).to(self.device, dtype=self.model.dtype)
        generation_kwargs = dict(requests[0].args[2])
        until = stop_strings(generation_kwargs.pop("until", None))
        output = self.model.generate(
            **inputs,
            num_visual_tokens=self.num_visual_tokens,
            max_object_tokens=self.max_object_tokens,
            **sampling_settings(generation_kwargs),
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [cut_at_first(text, until).strip() for text in texts]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "delta_llava is an lmms-eval chat model, and lmms-eval builds chat models' tasks from doc_to_messages, "
            "which only make generate_until requests; loglikelihood / multiple_choice tasks are not run through it."
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "delta_llava answers single-turn generate_until tasks; multi-round tasks are not supported."
        )


def to_processor_messages(lmms_messages: list[dict]) -> tuple[list[dict], list[Image.Image]]:
    """lmms-eval chat messages as the processor's chat format (`{"type": "image"}` parts) plus their images in order.

    Raises ValueError for video or audio parts, which Delta-LLaVA cannot read.
    """
    messages, images = [], []
    for message in ChatMessages(messages=lmms_messages).messages:
        content = []
        for part in message.content:
            if part.type == "text":
                content.append({"type": "text", "text": part.text})
            elif part.type == "image":
                content.append({"type": "image"})
                images.append(part.url if isinstance(part.url, Image.Image) else Image.open(part.url))
            else:
                raise ValueError(
                    f"The task gives a {part.type} input; delta_llava reads images and text only. Pick an image task."
                )
        messages.append({"role": message.role, "content": content})
    return messages, images


def sampling_settings(generation_kwargs: dict) -> dict:
    """`generate` arguments from a task's generation kwargs: greedy unless `temperature` > 0 (or `do_sample`)."""
    temperature = float(generation_kwargs.get("temperature") or 0.0)
    do_sample = temperature > 0 or bool(generation_kwargs.get("do_sample", False))
    settings = {
        "max_new_tokens": int(generation_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
        "num_beams": int(generation_kwargs.get("num_beams") or 1),
        "do_sample": do_sample,
    }
    if do_sample:
        settings["temperature"] = temperature or 1.0
        if generation_kwargs.get("top_p") is not None:
            settings["top_p"] = float(generation_kwargs["top_p"])
    return settings


def stop_strings(until: str | list[str] | None) -> list[str]:
    """A task's `until` as a list of non-empty stop strings."""
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if not isinstance(until, (list, tuple)) or not all(isinstance(stop, str) for stop in until):
        raise TypeError(f"generation_kwargs['until'] must be a string or a list of strings, got {until!r}.")
    return [stop for stop in until if stop]


def cut_at_first(text: str, stops: list[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    positions = [text.find(stop) for stop in stops]
    return text[: min([position for position in positions if position >= 0], default=len(text))]
