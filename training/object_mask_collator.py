"""TRL's vision collator, plus Mask-LLaVA object masks: an `object_masks` column reaches the processor and the model.

TRL's `DataCollatorForVisionLanguageModeling` renders a batch with `processor.apply_chat_template(...,
processor_kwargs={...})`, kwargs it builds itself, and never reads extra dataset columns. A dataset with an
`object_masks` column (per row, one uint8 mask stack (K_i, S, S) per image, as `precompute_object_masks` writes it)
needs those stacks in that processor call, both to expand each image's object-token placeholders and to give the model the masks.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling


class _ProcessorWithObjectMasks:
    """The processor, with `object_masks` added to the kwargs of `apply_chat_template`'s processor call."""

    def __init__(self, processor, object_masks: list[list[np.ndarray]]):
        self._processor = processor
        self._object_masks = object_masks

    def __getattr__(self, name):
        return getattr(self._processor, name)

    def apply_chat_template(self, *args, processor_kwargs: dict | None = None, **kwargs):
        processor_kwargs = {**(processor_kwargs or {}), "object_masks": self._object_masks}
        return self._processor.apply_chat_template(*args, processor_kwargs=processor_kwargs, **kwargs)


@dataclass
class ObjectMaskCollator(DataCollatorForVisionLanguageModeling):
    """
    Exactly TRL's collator when the examples have no `object_masks`; otherwise the batch also carries
    `object_masks` (num_images, K_max, S, S) and each image's placeholders include its object tokens.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if "object_masks" not in examples[0]:
            return super().torch_call(examples)
        masks = [[np.asarray(stack, dtype=np.uint8) for stack in example.pop("object_masks")] for example in examples]
        processor = self.processor
        self.processor = _ProcessorWithObjectMasks(processor, masks)
        try:
            return super().torch_call(examples)
        finally:
            self.processor = processor
