"""Precompute the MaskInversion embeddings of a dataset's object masks, so training never inverts.

Reads the `object_masks` column that `precompute_object_masks` writes (per row, one compact uint8 mask stack per
image) and adds `object_embeddings`: per row, one float32 `(K_i, E)` array per image, the MaskInversion embedding of
each of its masks (`processing.MaskInversion`; one inversion per image, all its masks at once). The work runs through
`Dataset.map` with a progress bar and is cached by `datasets` (the fingerprint covers the data, the CLIP tower's
config and weights, the inversion settings and the image processor); `map` writes its cache to a temporary file and
renames it only when complete, so a killed run leaves no half-written cache behind.

Command line, for a dataset saved with `save_to_disk` that already has `object_masks`:

    python -m delta_llava.processing.precompute_object_embeddings --dataset_path data/train_masks \
        --output_dir data/train_embeddings --clip_model openai/clip-vit-large-patch14-336
"""

import hashlib
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from datasets import Array2D, Dataset, List, load_from_disk
from transformers import AutoImageProcessor, CLIPVisionModelWithProjection, HfArgumentParser

from .mask_inversion import MaskInversion
from .object_mask_inputs import count_valid_masks, masks_to_model_input
from .precompute_object_masks import OBJECT_MASKS_COLUMN, add_cached_column, add_model_digest, run_on_splits

OBJECT_EMBEDDINGS_COLUMN = "object_embeddings"

__all__ = ["OBJECT_EMBEDDINGS_COLUMN", "precompute_object_embeddings", "main"]


def precompute_object_embeddings(
    dataset: Dataset,
    inverter: MaskInversion,
    image_processor,
    image_column: str = "images",
    batch_size: int = 8,
    cache_file_name: str | None = None,
) -> Dataset:
    """Add the `object_embeddings` column: per row, one float32 `(K_i, E)` array per image, K_i its valid masks.

    Args:
        dataset: rows with `image_column` (a list of PIL images) and `object_masks` (from `precompute_object_masks`).
        inverter: the MaskInversion over the CLIP tower the model's object tokens are trained with.
        image_processor: that tower's image processor; each mask is resized to the processed image's grid.
        batch_size: rows per `map` batch (not part of the cache key).
        cache_file_name: see `precompute_object_masks`.
    """
    missing = [column for column in (image_column, OBJECT_MASKS_COLUMN) if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The dataset has no column(s) {missing} (columns: {dataset.column_names}). Run "
            "`precompute_object_masks` first, and pass `image_column` naming the column of each row's images."
        )
    return add_cached_column(
        dataset,
        partial(_invert_batch, inverter=inverter, image_processor=image_processor, image_column=image_column),
        OBJECT_EMBEDDINGS_COLUMN,
        List(Array2D(shape=(None, inverter.model.config.projection_dim), dtype="float32")),
        cache_key=[inverter_fingerprint(inverter), image_processor.to_json_string(), image_column],
        batch_size=batch_size,
        cache_file_name=cache_file_name,
        desc="Inverting object masks",
    )


def _invert_batch(batch: dict, inverter: MaskInversion, image_processor, image_column: str) -> dict:
    """`map` function: every image's valid masks through one inversion."""
    rows = []
    for images, stacks in zip(batch[image_column], batch[OBJECT_MASKS_COLUMN]):
        if len(images) != len(stacks):
            raise ValueError(f"A row has {len(images)} images but {len(stacks)} mask stacks: rerun precompute_object_masks.")
        row = []
        for image, stack in zip(images, stacks):
            stack = np.asarray(stack, dtype=np.uint8)
            embeddings = np.zeros((0, inverter.model.config.projection_dim), dtype=np.float32)
            if stack.size:  # an image without any mask (not even the background) gets no embedding
                pixel_values = image_processor(image.convert("RGB"), return_tensors="pt")["pixel_values"]
                masks = masks_to_model_input([stack], pixel_values.shape[-1])
                count = int(count_valid_masks(masks)[0])
                if count:
                    embeddings = inverter(pixel_values, masks[0, :count]).float().cpu().numpy()
            row.append(embeddings)
        rows.append(row)
    return {OBJECT_EMBEDDINGS_COLUMN: rows}


def inverter_fingerprint(inverter: MaskInversion) -> str:
    """Digest of everything that decides the embeddings: the tower's config and weights, and the settings."""
    digest = hashlib.blake2b(digest_size=16)
    add_model_digest(digest, inverter.model)
    settings = (inverter.first_layer, inverter.iterations, inverter.lr, inverter.alpha, inverter.weight_decay)
    digest.update(repr(settings).encode())
    return digest.hexdigest()


@dataclass
class PrecomputeEmbeddingsArguments:
    """Command-line arguments of `python -m delta_llava.processing.precompute_object_embeddings`."""

    dataset_path: str = field(metadata={"help": "Folder of a Dataset or DatasetDict with `object_masks`, saved with `save_to_disk`."})
    output_dir: str = field(metadata={"help": "Folder to save the dataset with the new `object_embeddings` column."})
    clip_model: str = field(
        default="openai/clip-vit-large-patch14-336",
        metadata={"help": "CLIP checkpoint whose vision tower and projection the inversion runs on."},
    )
    layer_index: int = field(default=-1, metadata={"help": "First layer of LeGrad's maps, from the end when negative."})
    iterations: int = field(default=10, metadata={"help": "MaskInversion's optimisation steps per image."})
    lr: float = field(default=0.5, metadata={"help": "AdamW learning rate."})
    alpha: float = field(default=0.0, metadata={"help": "Weight of the term keeping embeddings near the image's."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    batch_size: int = field(default=8, metadata={"help": "Rows per `map` batch."})
    image_column: str = field(default="images", metadata={"help": "Column with each row's list of images."})
    device: str | None = field(default=None, metadata={"help": "Device of the tower (default: cuda if any)."})


def main(argv: list[str] | None = None) -> None:
    """Load the saved dataset, add `object_embeddings` to every split, and save the result to `output_dir`."""
    parser = HfArgumentParser(PrecomputeEmbeddingsArguments, description=__doc__.split("\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    dataset = load_from_disk(args.dataset_path)
    tower = CLIPVisionModelWithProjection.from_pretrained(args.clip_model)
    tower.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    inverter = MaskInversion(tower, args.layer_index, args.iterations, args.lr, args.alpha, args.weight_decay)
    run = partial(
        precompute_object_embeddings,
        inverter=inverter,
        image_processor=AutoImageProcessor.from_pretrained(args.clip_model),
        image_column=args.image_column,
        batch_size=args.batch_size,
    )
    run_on_splits(dataset, run).save_to_disk(args.output_dir)


if __name__ == "__main__":
    main()
