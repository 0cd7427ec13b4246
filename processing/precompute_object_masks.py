"""Precompute object masks for a whole ``datasets`` dataset, so training never runs DETR or SAM per step.

Every image of the ``images`` column (a list of PIL images per row) gets one compact mask stack, stored in the
``object_masks`` column as a list (one entry per image) of uint8 arrays ``(K + 1, S, S)`` (layout in
``object_mask_inputs``). The work runs through ``Dataset.map`` and is cached by ``datasets``: running again with
the same data, models, settings and ``mask_size`` loads the cache file instead of recomputing.

Command line, for a dataset saved with ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``)::

    python -m delta_llava.processing.precompute_object_masks --dataset_path data/train --output_dir data/train_masks
"""

import hashlib
from dataclasses import dataclass, field
from functools import partial

import torch
from datasets import Array3D, Dataset, DatasetDict, List, load_from_disk
from PIL import Image
from transformers import HfArgumentParser

from .object_mask_inputs import check_mask_size, compact_mask_stack
from .object_masks import (
    DEFAULT_DETECTOR_ID,
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_SEGMENTER_ID,
    DEFAULT_TOP_K,
    ObjectMaskExtractor,
)

OBJECT_MASKS_COLUMN = "object_masks"
DEFAULT_MASK_SIZE = 24

__all__ = ["OBJECT_MASKS_COLUMN", "PrecomputeArguments", "main", "precompute_object_masks"]


def object_masks_feature(mask_size: int) -> List:
    """The `object_masks` column's feature: per row, one compact uint8 mask stack (K, S, S) per image."""
    return List(Array3D(shape=(None, mask_size, mask_size), dtype="uint8"))


def precompute_object_masks(
    dataset: Dataset,
    extractor: ObjectMaskExtractor,
    mask_size: int = DEFAULT_MASK_SIZE,
    image_column: str = "images",
    batch_size: int = 8,
    cache_file_name: str | None = None,
) -> Dataset:
    """Add the ``object_masks`` column: per row, one uint8 ``(K_i + 1, mask_size, mask_size)`` stack per image.

    Args:
        dataset: rows with ``image_column`` holding a list of PIL images.
        extractor: the DETR + SAM extractor; its models and settings are part of the cache key.
        mask_size: side of the stored square masks (the model pools them at its patch grid, e.g. 24 for
            CLIP-L/14-336).
        batch_size: rows per ``map`` batch; all their images go through the models together (not part of the
            cache key).
        cache_file_name: where ``map`` writes its result; by default ``datasets`` picks a file next to the
            dataset's own files, named by the fingerprint. A dataset held only in memory (no files, e.g.
            ``Dataset.from_dict``) is cached only when this is given.

    Returns:
        The dataset with the new column (other columns unchanged).
    """
    if image_column not in dataset.column_names:
        raise ValueError(
            f"The dataset has no column {image_column!r} (columns: {dataset.column_names}). Pass "
            "`image_column` naming the column that holds each row's list of images."
        )
    check_mask_size(mask_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    return add_cached_column(
        dataset,
        partial(_extract_batch, extractor=extractor, mask_size=mask_size, image_column=image_column),
        OBJECT_MASKS_COLUMN,
        object_masks_feature(mask_size),
        cache_key=[_extractor_fingerprint(extractor), str(mask_size), image_column],
        batch_size=batch_size,
        cache_file_name=cache_file_name,
        desc="Extracting object masks",
    )


def add_cached_column(
    dataset: Dataset, batch_function, column: str, feature, cache_key: list[str], batch_size: int,
    cache_file_name: str | None, desc: str,
) -> Dataset:
    """`dataset.map(batch_function, batched=True)` adding `column`, cached under a fingerprint of the dataset's and
    `cache_key` (what decides the column's values), with a progress bar named `desc`."""
    features = dataset.features.copy()
    features[column] = feature
    fingerprint = hashlib.blake2b("/".join([dataset._fingerprint, *cache_key]).encode(), digest_size=16).hexdigest()
    return dataset.map(
        batch_function, batched=True, batch_size=batch_size, features=features, cache_file_name=cache_file_name,
        new_fingerprint=fingerprint, desc=desc,
    )  # fmt: skip


def add_model_digest(digest, model) -> None:
    """Feeds `model`'s config and every weight (names, dtypes, shapes, bytes) to a hashlib `digest`."""
    digest.update(model.config.to_json_string().encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


def run_on_splits(dataset: Dataset | DatasetDict, run) -> Dataset | DatasetDict:
    """`run(dataset)`, or `run` on every split of a DatasetDict."""
    if isinstance(dataset, DatasetDict):
        return DatasetDict({split: run(split_dataset) for split, split_dataset in dataset.items()})
    return run(dataset)


def _extract_batch(batch: dict, extractor: ObjectMaskExtractor, mask_size: int, image_column: str) -> dict:
    """``map`` function: one forward of the extractor over every image of the batch's rows."""
    rows = batch[image_column]
    for row in rows:
        if not isinstance(row, list) or not all(isinstance(image, Image.Image) for image in row):
            raise TypeError(
                f"Column {image_column!r} must hold a list of images per row (feature List(Image())), got a "
                f"{type(row).__name__}. Wrap single images in a list, e.g. with `map(lambda row: "
                f"{{{image_column!r}: [row[{image_column!r}]]}})`."
            )
    results = extractor([image for row in rows for image in row])
    stacks = [compact_mask_stack(result.masks, mask_size) for result in results]
    grouped, start = [], 0
    for row in rows:
        grouped.append(stacks[start : start + len(row)])
        start += len(row)
    return {OBJECT_MASKS_COLUMN: grouped}


def _extractor_fingerprint(extractor: ObjectMaskExtractor) -> str:
    """Digest of everything that decides the masks: model configs and weights, processor settings, thresholds."""
    digest = hashlib.blake2b(digest_size=16)
    for model in (extractor.detector, extractor.segmenter):
        add_model_digest(digest, model)
    for processor in (extractor.detector_processor, extractor.segmenter_processor):
        digest.update(processor.to_json_string().encode())
    digest.update(f"{extractor.score_threshold}/{extractor.top_k}".encode())
    return digest.hexdigest()


@dataclass
class PrecomputeArguments:
    """Command-line arguments of ``python -m delta_llava.processing.precompute_object_masks``."""

    dataset_path: str = field(metadata={"help": "Folder of a Dataset or DatasetDict saved with `save_to_disk`."})
    output_dir: str = field(metadata={"help": "Folder to save the dataset with the new `object_masks` column."})
    detector_id: str = field(default=DEFAULT_DETECTOR_ID, metadata={"help": "Deformable DETR checkpoint."})
    segmenter_id: str = field(default=DEFAULT_SEGMENTER_ID, metadata={"help": "SAM checkpoint."})
    score_threshold: float = field(default=DEFAULT_SCORE_THRESHOLD, metadata={"help": "Keep detections above it."})
    top_k: int = field(default=DEFAULT_TOP_K, metadata={"help": "Most objects kept per image."})
    mask_size: int = field(default=DEFAULT_MASK_SIZE, metadata={"help": "Side of the stored square masks."})
    batch_size: int = field(default=8, metadata={"help": "Rows per batch through the models."})
    image_column: str = field(default="images", metadata={"help": "Column with each row's list of images."})
    device: str | None = field(default=None, metadata={"help": "Device of both models (default: cuda if any)."})
    dtype: str = field(
        default="float32",
        metadata={"help": "Dtype of both models.", "choices": ["float32", "float16", "bfloat16"]},
    )


def main(argv: list[str] | None = None) -> None:
    """Load the saved dataset, add ``object_masks`` to every split, and save the result to ``output_dir``."""
    (args,) = HfArgumentParser(PrecomputeArguments, description=__doc__.split("\n")[0]).parse_args_into_dataclasses(args=argv)
    dataset = load_from_disk(args.dataset_path)
    extractor = ObjectMaskExtractor.from_pretrained(
        args.detector_id,
        args.segmenter_id,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        dtype=getattr(torch, args.dtype),
        score_threshold=args.score_threshold,
        top_k=args.top_k,
    )
    run = partial(
        precompute_object_masks,
        extractor=extractor,
        mask_size=args.mask_size,
        image_column=args.image_column,
        batch_size=args.batch_size,
    )
    run_on_splits(dataset, run).save_to_disk(args.output_dir)


if __name__ == "__main__":
    main()
