"""TRL's vision collator, plus Mask-LLaVA objects: an `object_masks` (or `object_embeddings`) column reaches the
processor and the model.

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
    """The processor, with the objects (`object_masks` or `object_embeddings`) added to the kwargs of
    `apply_chat_template`'s processor call."""

    def __init__(self, processor, objects: dict[str, list[list[np.ndarray]]]):
        self._processor = processor
        self._objects = objects

    def __getattr__(self, name):
        return getattr(self._processor, name)

    def apply_chat_template(self, *args, processor_kwargs: dict | None = None, **kwargs):
        processor_kwargs = {**(processor_kwargs or {}), **self._objects}
        return self._processor.apply_chat_template(*args, processor_kwargs=processor_kwargs, **kwargs)


# The object columns a training set may carry and their stored dtype: masks (precompute_object_masks) or their
# MaskInversion embeddings (precompute_object_embeddings), per row one stack per image.
OBJECT_COLUMNS = {"object_embeddings": np.float32, "object_masks": np.uint8}


@dataclass
class ObjectMaskCollator(DataCollatorForVisionLanguageModeling):
    """
    Exactly TRL's collator when the examples have no object column; otherwise the batch also carries `object_masks`
    (num_images, K_max, S, S) or `object_embeddings` (num_images, K_max, E), and each image's placeholders include
    its object tokens.
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        present = [name for name in OBJECT_COLUMNS if name in examples[0]]
        if len(present) > 1:
            raise ValueError(
                "The rows carry both object_masks and object_embeddings: keep the one your model reads "
                "(object_features='mask_pooling': object_masks; 'mask_inversion': object_embeddings), e.g. with "
                "`dataset.remove_columns(...)`."
            )
        if not present:
            return super().torch_call(examples)
        column = present[0]
        dtype = OBJECT_COLUMNS[column]
        stacks = [[np.asarray(stack, dtype=dtype) for stack in example.pop(column)] for example in examples]
        processor = self.processor
        self.processor = _ProcessorWithObjectMasks(processor, {column: stacks})
        try:
            return super().torch_call(examples)
        finally:
            self.processor = processor
