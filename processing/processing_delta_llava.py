"""Processor for Delta-LLaVA: images and text (or chat messages) to the model's inputs.

This file travels with checkpoints as remote code: it imports only the standard library, numpy, PIL, torch,
transformers and its sibling files by relative import.
"""

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin

from .image_inputs import ImageInput, pad_to_square, to_rgb_image
from .object_mask_inputs import count_valid_masks, masks_to_model_input


BUDGET_EXAMPLES = (576, 144, 64, 36, 16, 4, 1)
# Output switches of transformers' ProcessingKwargs that this processor honours (serving engines ask for them).
OUTPUT_FLAGS = ("return_text_replacement_offsets", "return_mm_token_type_ids")

# LLaVA-1.5 conversation format: "<s>SYSTEM USER: <image>\nquestion ASSISTANT: answer</s>USER: ...". Content is a
# string or a list of {"type": "image"} / {"type": "text", "text": ...} parts, joined by a space (an image
# placeholder is followed by a newline instead).
# The assistant's answer and its closing </s> sit inside {% generation %} so TRL can train on assistant tokens only.
DEFAULT_CHAT_TEMPLATE = """\
{{- bos_token -}}
{%- for message in messages -%}
    {%- set ns = namespace(text='') -%}
    {%- if message is not mapping or message['role'] is not defined -%}
        {{- raise_exception('Message ' ~ loop.index0 ~ ' has no role: give each message a role and a content.') -}}
    {%- endif -%}
    {%- set where = 'Message ' ~ loop.index0 ~ ' (' ~ message['role'] ~ ')' -%}
    {%- if message['content'] is not defined or message['content'] is none -%}
        {{- raise_exception(where + ' has no content: give a string or a list of image/text parts.') -}}
    {%- elif message['content'] is string -%}
        {%- set ns.text = message['content'] -%}
    {%- else -%}
        {%- for part in message['content'] -%}
            {%- if part['type'] is not defined or part['type'] not in ('image', 'text') -%}
                {{- raise_exception(where + ' has a part of type ' ~ part['type'] ~ ': only image and text parts '
                    + 'can be rendered; remove it or turn it into text.') -}}
            {%- elif part['type'] == 'text' and (part['text'] is not defined or part['text'] is not string) -%}
                {{- raise_exception(where + ' has a text part without a string text field.') -}}
            {%- endif -%}
            {%- if ns.text and not ns.text.endswith('\\n') -%}
                {%- set ns.text = ns.text + ' ' -%}
            {%- endif -%}
            {%- if part['type'] == 'image' -%}
                {%- set ns.text = ns.text + '<image>\\n' -%}
            {%- else -%}
                {%- set ns.text = ns.text + part['text'] -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if message['role'] == 'system' -%}
        {{- ns.text + ' ' -}}
    {%- elif message['role'] == 'user' -%}
        {{- 'USER: ' + ns.text + ' ' -}}
    {%- elif message['role'] == 'assistant' -%}
        {{- 'ASSISTANT: ' -}}
        {%- generation -%}
            {{- ns.text + eos_token -}}
        {%- endgeneration -%}
    {%- else -%}
        {{- raise_exception('Unsupported role ' + message['role'] + ': use system, user or assistant.') -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- 'ASSISTANT:' -}}
{%- endif -%}
"""

# LLaVA-1.5's `v1` (Vicuna) conversation, which the authors' checkpoints were trained with: the same format with
# Vicuna's system prompt written first when the conversation brings none.
VICUNA_V1_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VICUNA_V1_CHAT_TEMPLATE = DEFAULT_CHAT_TEMPLATE.replace(
    "{{- bos_token -}}\n",
    "{{- bos_token -}}\n{%- if messages[0]['role'] != 'system' -%}\n    {{- '"
    + VICUNA_V1_SYSTEM_PROMPT.replace("'", "\\'")
    + " ' -}}\n{%- endif -%}\n",
    1,
)


def check_num_visual_tokens(num_visual_tokens: int) -> int:
    """Refuse a budget that is not a perfect square g*g >= 1; return it unchanged otherwise."""
    if (
        isinstance(num_visual_tokens, bool)
        or not isinstance(num_visual_tokens, (int, np.integer))
        or num_visual_tokens < 1
        or round(num_visual_tokens**0.5) ** 2 != num_visual_tokens
    ):
        raise ValueError(
            f"num_visual_tokens={num_visual_tokens!r} is not a valid budget: it must be a perfect square g*g >= 1 "
            f"(the projector outputs a g x g grid), e.g. {', '.join(map(str, BUDGET_EXAMPLES))}; g must also "
            "divide the vision tower's patch grid."
        )
    return int(num_visual_tokens)


def check_max_object_tokens(max_object_tokens: int) -> int:
    """Refuse a negative or non-integer number of object tokens; return it unchanged otherwise."""
    if (
        isinstance(max_object_tokens, bool)
        or not isinstance(max_object_tokens, (int, np.integer))
        or max_object_tokens < 0
    ):
        raise ValueError(
            f"max_object_tokens={max_object_tokens!r} must be an integer >= 0 (the number of object tokens kept per "
            "image; 0 turns them off)."
        )
    return int(max_object_tokens)


class DeltaLlavaProcessor(ProcessorMixin):
    """Builds Delta-LLaVA inputs: `input_ids`, `attention_mask`, `pixel_values` and, with object tokens,
    `object_masks`.

    The text holds one image placeholder (`image_token`) per image; the processor expands it to exactly the number
    of tokens the model produces for that image: `[1 global token] + num_visual_tokens + [min(valid masks of the
    image, max_object_tokens) object tokens]`. Pass the same `num_visual_tokens` and `max_object_tokens` to the
    model (e.g. `model.generate(**inputs, num_visual_tokens=64)`); they are not part of the returned inputs.

    Args:
        image_processor: the vision tower's image processor (e.g. `CLIPImageProcessor`).
        tokenizer: a tokenizer whose vocabulary holds `image_token` as one token.
        chat_template: a Jinja chat template; `None` uses the LLaVA-1.5 format "USER: <image>\\n... ASSISTANT:".
        num_visual_tokens: default budget of projector tokens per image, a perfect square (576, 144, ..., 1).
        use_global_token: whether the model adds one global (CLS) token per image.
        use_object_tokens: whether the model adds object tokens pooled from `object_masks`.
        max_object_tokens: default number of object tokens kept per image (0 turns them off).
        image_token: the placeholder written once per image in the text.
        mask_size: side S of the square grid object masks are resized to, `(num_images, K, S, S)`.
        pad_to_square: pad every image (and its object masks) to a square with the image processor's mean colour
            before the image processor runs, as LLaVA-1.5's `image_aspect_ratio="pad"` (the authors' stage 2) does;
            otherwise the image processor's resize and centre crop cut the longer side.
        allowed_visual_token_counts: the budgets the model can project to (`config.allowed_visual_token_counts()`);
            another budget is refused here, before any model runs (a serving engine answers it with an HTTP 400).
            `None` (processors saved before this field) only checks that a budget is a perfect square.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        num_visual_tokens: int = 144,
        use_global_token: bool = False,
        use_object_tokens: bool = False,
        max_object_tokens: int = 8,
        image_token: str = "<image>",
        mask_size: int = 24,
        pad_to_square: bool = False,
        allowed_visual_token_counts: list[int] | None = None,
    ):
        self.allowed_visual_token_counts = (
            None if allowed_visual_token_counts is None else [check_num_visual_tokens(n) for n in allowed_visual_token_counts]
        )
        self.num_visual_tokens = self.check_budget(num_visual_tokens)
        self.max_object_tokens = check_max_object_tokens(max_object_tokens)
        self.use_global_token = bool(use_global_token)
        self.use_object_tokens = bool(use_object_tokens)
        if isinstance(mask_size, bool) or not isinstance(mask_size, int) or mask_size < 1:
            raise ValueError(f"mask_size={mask_size!r} must be a positive integer, e.g. 24 (the vision patch grid).")
        self.mask_size = mask_size
        if not isinstance(pad_to_square, bool):
            raise TypeError(f"pad_to_square={pad_to_square!r} must be True or False.")
        self.pad_to_square = pad_to_square
        self.image_token = image_token
        if chat_template is None:
            chat_template = DEFAULT_CHAT_TEMPLATE.replace("<image>", image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        if image_token not in tokenizer.get_vocab():
            raise ValueError(
                f"The tokenizer has no token {image_token!r}. Add it with "
                f"`tokenizer.add_tokens([{image_token!r}], special_tokens=True)` and resize the model's embeddings "
                "(`model.resize_token_embeddings(len(tokenizer))`), then set the model's `image_token_id`."
            )
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def __call__(
        self,
        images: ImageInput | list[ImageInput] | list[list[ImageInput]] | None = None,
        text: str | list[str] | None = None,
        num_visual_tokens: int | None = None,
        max_object_tokens: int | None = None,
        object_masks: list | torch.Tensor | None = None,
        object_mask_extractor=None,
        object_mask_inverter=None,
        object_embeddings: list | torch.Tensor | None = None,
        padding: bool | str | None = None,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Process one sample or a batch.

        Args:
            images: one image, a flat list (taken in placeholder order across the batch), or one list per sample.
                Each image is a PIL image, a numpy array / torch tensor ((H, W), (H, W, C) or (C, H, W)) or a file
                path; see `image_inputs.to_rgb_image`.
            text: one string or a list of strings, with one `image_token` per image.
            num_visual_tokens: budget per image for this call (default: the processor's `num_visual_tokens`).
            max_object_tokens: object tokens kept per image for this call (default: the processor's).
            object_masks: with `use_object_tokens`, one mask stack `(M_i, H, W)` (array or tensor) per image, as a
                flat list or one list per sample, or one `(num_images, M, H, W)` array; valid masks first (objects
                by score, then the background), see `object_mask_inputs`. Without masks the model adds no object
                tokens.
            object_mask_extractor: instead of `object_masks`, an `ObjectMaskExtractor` (Deformable DETR + SAM) or
                any callable mapping a list of PIL images to objects with a `masks` tensor `(M_i, H, W)`: the masks
                of every image are then computed here, on the images as given (before `pad_to_square`).
            object_mask_inverter: for a model with `object_features="mask_inversion"`, a `MaskInversion` over the
                CLIP tower the model was trained with: the kept masks of each image are inverted here (one
                inversion per image, all its masks at once) and `object_embeddings` is returned instead of
                `object_masks`.
            object_embeddings: instead of masks, their precomputed MaskInversion embeddings: one `(M_i, E)` array
                per image (as `precompute_object_embeddings` stores them), or one `(num_images, M, E)` array.
            padding: tokenizer padding (default `True`: pad to the longest sample, on `tokenizer.padding_side`).
            truncation, max_length: tokenizer truncation; a truncation that would cut image tokens is refused.
            return_tensors: `"pt"` (default), `"np"` or `None` (lists).
            **kwargs: more tokenizer or image processor arguments (e.g. `padding_side`, `add_special_tokens`),
                or `text_kwargs` / `images_kwargs` dicts.

        Returns:
            `BatchFeature` with `input_ids` and `attention_mask` (batch, seq_len) when text is given,
            `pixel_values` (num_images, 3, H, W) and `visual_token_budget` (num_images,) (the `num_visual_tokens` the placeholders
            were written for; the model checks it against its own budget) when images are given, and `object_masks`
            (num_images, K_max, S, S) when object tokens are on and masks are given.
        """
        for modality in ("videos", "audio"):
            given = kwargs.pop(modality, None)
            if given is not None and not (isinstance(given, (list, tuple)) and len(given) == 0):
                raise ValueError(f"DeltaLlavaProcessor reads images and text only; got {modality}.")
        if images is None and text is None:
            raise ValueError("Pass `text` (with one image placeholder per image), `images`, or both.")
        if object_masks is not None and object_mask_extractor is not None:
            raise ValueError(
                "Pass `object_masks` (precomputed) or `object_mask_extractor` (computes them here), not both."
            )
        if object_embeddings is not None and (object_masks is not None or object_mask_extractor is not None):
            raise ValueError(
                "Pass `object_embeddings` (precomputed) or object masks (`object_masks` / `object_mask_extractor`), "
                "not both: the embeddings are the masks' MaskInversion features."
            )
        if object_mask_inverter is not None and object_masks is None and object_mask_extractor is None:
            raise ValueError(
                "`object_mask_inverter` turns masks into embeddings: pass `object_masks` or `object_mask_extractor` too."
            )
        if num_visual_tokens is None:
            num_visual_tokens = self.num_visual_tokens
        if max_object_tokens is None:
            max_object_tokens = self.max_object_tokens
        num_visual_tokens = self.check_budget(num_visual_tokens)
        max_object_tokens = check_max_object_tokens(max_object_tokens)

        texts = self._text_batch(text)
        flat_images, nested = self._flat_images(images, texts)
        data = {}
        tokens_per_image = []
        if flat_images:
            rgb_images = [to_rgb_image(image) for image in flat_images]
            if object_mask_extractor is not None:
                object_masks = [found.masks.cpu() for found in object_mask_extractor(rgb_images)]
            if self.pad_to_square:
                rgb_images = [pad_to_square(image, self.padding_colour) for image in rgb_images]
            mask_counts = [0] * len(rgb_images)
            if object_masks is not None:
                mask_stacks = self._per_image(object_masks, nested, len(rgb_images), "object_masks", "(num_masks, H, W)")
                data["object_masks"] = masks_to_model_input(mask_stacks, self.mask_size, pad_to_square=self.pad_to_square)
                if max_object_tokens > 0:
                    mask_counts = count_valid_masks(data["object_masks"]).clamp(max=max_object_tokens).tolist()
            elif object_embeddings is not None:  # precomputed MaskInversion embeddings, e.g. from a training set
                stacks = self._per_image(object_embeddings, nested, len(rgb_images), "object_embeddings", "(num_objects, E)")
                data["object_embeddings"] = self._embeddings_input(stacks)
                if max_object_tokens > 0:
                    mask_counts = [min(len(stack), max_object_tokens) for stack in stacks]
            global_tokens = 1 if self.use_global_token else 0
            tokens_per_image = [global_tokens + num_visual_tokens + count for count in mask_counts]
        elif object_masks is not None or object_embeddings is not None:
            given = "`object_masks`" if object_masks is not None else "`object_embeddings`"
            raise ValueError(f"{given} were given without images. Pass one stack per image with the images.")

        call_kwargs = {"padding": padding, "truncation": truncation, "max_length": max_length}
        output_kwargs = self._merge_kwargs(
            ProcessingKwargs,  # positional: transformers 5.19 requires it, later releases take it as the default
            tokenizer_init_kwargs=self.tokenizer.init_kwargs,
            **{key: value for key, value in call_kwargs.items() if value is not None},
            **kwargs,
        )
        if flat_images:
            images_kwargs = output_kwargs["images_kwargs"]
            images_kwargs.pop("return_tensors", None)
            data["pixel_values"] = self.image_processor(rgb_images, return_tensors=return_tensors, **images_kwargs)[
                "pixel_values"
            ]
            if object_mask_inverter is not None:  # the model reads the masks' embeddings instead of the masks
                del data["object_masks"]
                data["object_embeddings"] = self._invert_masks(
                    object_mask_inverter, torch.as_tensor(np.asarray(data["pixel_values"])), mask_stacks, mask_counts
                )
        if texts is not None:
            data.update(self._tokenize(texts, tokens_per_image, output_kwargs))
            if flat_images:  # the budget the placeholders were written for, per image, so the model projects to it
                data["visual_token_budget"] = [num_visual_tokens] * len(flat_images)
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=["text_replacement_offsets"])

    def check_budget(self, num_visual_tokens: int) -> int:
        """Refuse a budget the model cannot project to, naming the ones it can; return it otherwise."""
        num_visual_tokens = check_num_visual_tokens(num_visual_tokens)
        allowed = self.allowed_visual_token_counts
        if allowed is not None and num_visual_tokens not in allowed:
            raise ValueError(
                f"num_visual_tokens={num_visual_tokens} is not a budget this model can project to. Allowed values: "
                f"{allowed}."
            )
        return num_visual_tokens

    def apply_chat_template(self, conversation, *args, **kwargs):
        """transformers' `apply_chat_template`, refusing an empty conversation (or batch of them) up front: the base
        class would fail on it with an IndexError before the template's own check runs."""
        batch = conversation if conversation and isinstance(conversation[0], (list, tuple)) else [conversation]
        if not conversation or any(not messages for messages in batch):
            raise ValueError("The conversation is empty: give at least one message.")
        return super().apply_chat_template(conversation, *args, **kwargs)

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs) -> MultiModalData:
        """
        Tokens each image costs in the text, for serving engines (vLLM's transformers backend calls this hook):
        `image_sizes` is one (height, width) per image; `num_visual_tokens` may be passed as in `__call__`. Object
        tokens depend on each image's masks, which this hook never sees: images served without masks get none, and
        masks passed here are refused rather than miscounted.
        """
        if any(kwargs.get(name) is not None for name in ("object_masks", "object_mask_extractor", "object_mask_inverter")):
            raise ValueError(
                "Object tokens are not counted for serving engines: they depend on each image's masks. Serve the "
                "checkpoint without object masks (images then get no object tokens), or use transformers' generate."
            )
        if image_sizes is None:
            return MultiModalData()
        budget = self.check_budget(kwargs.get("num_visual_tokens", self.num_visual_tokens))
        per_image = budget + int(self.use_global_token)
        return MultiModalData(num_image_tokens=[per_image] * len(image_sizes), num_image_patches=[1] * len(image_sizes))

    @property
    def padding_colour(self) -> tuple[int, int, int]:
        """The image processor's mean as an RGB colour, what `pad_to_square` fills with (LLaVA's choice)."""
        mean = getattr(self.image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        return tuple(int(value * 255) for value in mean)

    @property
    def model_input_names(self) -> list[str]:
        names = ["input_ids", "attention_mask", "pixel_values", "visual_token_budget"]
        return names + ["object_masks", "object_embeddings"] if self.use_object_tokens else names

    def _text_batch(self, text: str | list[str] | None) -> list[str] | None:
        """Wrap a single string in a list; validate a batch."""
        if text is None:
            return None
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not all(isinstance(sample, str) for sample in texts):
            raise TypeError(f"`text` must be a string or a list of strings, got {type(text).__name__}.")
        if len(texts) == 0:
            raise ValueError("`text` is an empty list. Pass at least one string.")
        return list(texts)

    def _flat_images(self, images, texts: list[str] | None) -> tuple[list[ImageInput], bool]:
        """Flatten `images` in placeholder order, checking the count against the placeholders of each sample.

        Returns the flat list and whether `images` was nested per sample.
        """
        groups, nested = ([], False) if images is None else _group_images(images)
        flat = [image for group in groups for image in group]
        if texts is None:
            return flat, nested
        placeholders = [sample.count(self.image_token) for sample in texts]
        fix = (
            f"Write one {self.image_token} in the text where each image goes (apply_chat_template does it for "
            '{"type": "image"} content parts), and pass exactly one image per placeholder.'
        )
        if nested:
            if len(groups) != len(texts):
                raise ValueError(
                    f"`images` has {len(groups)} per-sample lists but `text` has {len(texts)} samples. Pass one list "
                    "of images per sample (an empty list for a sample without images), or a flat list of images."
                )
            mismatches = [
                f"sample {index}: {count} {self.image_token} in the text but {len(group)} image(s)"
                for index, (count, group) in enumerate(zip(placeholders, groups))
                if count != len(group)
            ]
            if mismatches:
                raise ValueError(f"Image count does not match the placeholders ({'; '.join(mismatches)}). {fix}")
        elif len(flat) != sum(placeholders):
            raise ValueError(
                f"Got {len(flat)} image(s) but the text has {sum(placeholders)} {self.image_token} placeholder(s) "
                f"(per sample: {placeholders}). {fix}"
            )
        return flat, nested

    def _invert_masks(self, inverter, pixel_values: torch.Tensor, mask_stacks: list, counts: list[int]) -> torch.Tensor:
        """The MaskInversion embeddings of each image's first `counts[i]` masks, zero-padded: (num_images, K, E).
        Each image's masks are resized to its pixel grid, as the image was, and inverted together."""
        side = pixel_values.shape[-1]
        masks = masks_to_model_input(mask_stacks, side, pad_to_square=self.pad_to_square)
        width = inverter.model.config.projection_dim
        embeddings = torch.zeros(len(mask_stacks), max(counts, default=0), width, dtype=inverter.model.dtype)
        for index, count in enumerate(counts):
            if count:
                embeddings[index, :count] = inverter(pixel_values[index : index + 1], masks[index, :count]).cpu()
        return embeddings

    def _per_image(self, value, nested: bool, num_images: int, name: str, item: str) -> list:
        """Validate `object_masks` (item "(num_masks, H, W)") or `object_embeddings` (item "(num_objects, E)") and
        return one entry per image, in image order."""
        if not self.use_object_tokens:
            raise ValueError(
                f"`{name}` were given but this processor has use_object_tokens=False, so the model would ignore "
                f"them. Build the processor (and the model) with use_object_tokens=True, or drop `{name}`."
            )
        rank = item.count(",") + 2  # one array for every image: (num_images, *item)
        if isinstance(value, (torch.Tensor, np.ndarray)):
            if value.ndim != rank:
                raise ValueError(
                    f"`{name}` as one array must have shape (num_images, {item[1:]}; got {tuple(value.shape)}. Or "
                    f"pass a list with one {item} array per image."
                )
            entries = list(value)
        elif isinstance(value, (list, tuple)):
            per_sample = nested and all(isinstance(group, (list, tuple)) for group in value)
            entries = [entry for group in value for entry in group] if per_sample else list(value)
        else:
            raise TypeError(f"`{name}` must be a list with one {item} array per image, got {type(value).__name__}.")
        if len(entries) != num_images:
            raise ValueError(
                f"Got {len(entries)} {name.split('_')[1].rstrip('s')} stack(s) for {num_images} image(s). Pass one {item} "
                "stack per image, in the same order (and nesting) as `images`."
            )
        return entries

    def _embeddings_input(self, stacks: list) -> torch.Tensor:
        """One (K_i, E) array per image -> the model's zero-padded `object_embeddings` (num_images, K_max, E)."""
        arrays = [torch.as_tensor(np.asarray(stack, dtype=np.float32)) for stack in stacks]
        widths = {array.shape[-1] for array in arrays if array.dim() == 2}
        if any(array.dim() != 2 for array in arrays) or len(widths) > 1:
            raise ValueError("`object_embeddings` must hold one (num_objects, E) array per image, with the same E.")
        padded = torch.zeros(len(arrays), max(len(array) for array in arrays), widths.pop() if widths else 0)
        for index, array in enumerate(arrays):
            padded[index, : len(array)] = array
        return padded

    def _tokenize(self, texts: list[str], tokens_per_image: list[int], output_kwargs: dict) -> dict:
        """Expand the placeholders, tokenize, and check that no image token was truncated away."""
        text_kwargs = output_kwargs["text_kwargs"]
        # transformers 5.19 leaves these flags among the text kwargs, later releases at the top level: read both
        flags = {key: bool(text_kwargs.pop(key, None) or output_kwargs.get(key)) for key in OUTPUT_FLAGS}
        text_kwargs.pop("return_tensors", None)
        text_kwargs.setdefault("padding", True)
        text_kwargs.setdefault("return_token_type_ids", False)
        bos_token = self.tokenizer.bos_token
        if "add_special_tokens" not in text_kwargs and bos_token and all(t.startswith(bos_token) for t in texts):
            # The text was rendered by the chat template, which writes the BOS token itself.
            text_kwargs["add_special_tokens"] = False

        replacements = [self.image_token * count for count in tokens_per_image]
        expanded, replacement_offsets = self.get_text_with_replacements(list(texts), replacements)
        encoding = dict(self.tokenizer(expanded, **text_kwargs))
        self._check_image_tokens_kept(texts, expanded, encoding["input_ids"], text_kwargs)

        if flags["return_text_replacement_offsets"]:
            encoding["text_replacement_offsets"] = replacement_offsets
        if flags["return_mm_token_type_ids"]:
            encoding["mm_token_type_ids"] = self.create_mm_token_type_ids(encoding["input_ids"])
        return encoding

    def _check_image_tokens_kept(
        self, texts: list[str], expanded: list[str], input_ids: list[list[int]], text_kwargs: dict
    ) -> None:
        """Raise when truncation removed image tokens from a sample (they would no longer match the features)."""
        for index, (sample, ids) in enumerate(zip(expanded, input_ids)):
            expected = sample.count(self.image_token)
            kept = list(ids).count(self.image_token_id)
            if kept == expected:
                continue
            untruncated = {key: value for key, value in text_kwargs.items() if key not in ("truncation", "max_length")}
            untruncated["padding"] = False
            needed = len(self.tokenizer(sample, **untruncated)["input_ids"])
            max_length = text_kwargs.get("max_length") or self.tokenizer.model_max_length
            raise ValueError(
                f"Truncation would cut image tokens from sample {index}: it needs {needed} tokens ({expected} of them "
                f"for its {texts[index].count(self.image_token)} image(s)) but max_length={max_length} keeps only "
                f"{kept} image tokens. Raise max_length to at least "
                f"{needed}, lower num_visual_tokens / max_object_tokens, shorten the text, or pass truncation=False."
            )


def _is_image_batch(obj: object) -> bool:
    """A 4-D numpy array or torch tensor holds a batch of images along its first axis."""
    return isinstance(obj, (np.ndarray, torch.Tensor)) and obj.ndim == 4


def _group_images(images) -> tuple[list, bool]:
    """Split `images` into per-sample lists; return them and whether the input was nested per sample.

    A list of lists (or of 4-D arrays) is one group per sample; anything else (one image, a flat list, a 4-D batch
    array) is a single group. The images themselves are checked later, by `to_rgb_image`.
    """
    if isinstance(images, (list, tuple)):
        if images and all(isinstance(group, (list, tuple)) or _is_image_batch(group) for group in images):
            return [list(group) for group in images], True
        return [list(images)], False
    if _is_image_batch(images):
        return [list(images)], False
    return [[images]], False


DeltaLlavaProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["DeltaLlavaProcessor"]
