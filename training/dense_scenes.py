"""Dense synthetic scenes: many small shapes and printed words per image, so that few visual tokens cannot hold them.

The quick start's scenes (`synthetic_vqa`) put at most five things on a 3x3 grid: nine flat cells survive any pooling,
so projectors cannot be told apart on them. These put a thing in most cells of an 8x8 grid: on a 192-px image with
8-px patches (a 24x24 patch grid, the paper's) a cell is 3x3 patches, and at 16 visual tokens one token covers four
cells, at 1 token all 64. The cells' contents are the same kinds as in `synthetic_vqa` (shapes of 4 colours x 3 shapes
x 2 sizes, and 6 printed words; `CELL_LABEL_NAMES`), drawn by the same `render_scene`, so a tower warmed up on one set
reads the other.

    scenes = make_dense_scenes(4000, seed=0)   # columns: images (one 192-px RGB image), cell_labels (64 ints)
"""

from __future__ import annotations

import random

import datasets

from .synthetic_vqa import (
    COLORS,
    MIN_CELL_PIXELS,
    SHAPES,
    SIZES,
    TEXT_WORDS,
    PrintedWord,
    Scene,
    ShapeObject,
    render_scene,
)

DENSE_GRID = 8
DENSE_IMAGE_SIZE = 192
SHAPE_PROBABILITY = 0.45  # per cell; a printed word with WORD_PROBABILITY, else the cell stays empty
WORD_PROBABILITY = 0.15

DENSE_FEATURES = datasets.Features(
    {"images": datasets.List(datasets.Image()), "cell_labels": datasets.List(datasets.Value("int32"))}
)


def sample_dense_scene(rng: random.Random, grid_size: int = DENSE_GRID) -> Scene:
    """Every cell independently: a random shape, a random printed word, or nothing (about 60% of cells are filled)."""
    cells = []
    for _ in range(grid_size**2):
        draw = rng.random()
        if draw < SHAPE_PROBABILITY:
            jitter = (rng.uniform(-1, 1), rng.uniform(-1, 1))
            cells.append(ShapeObject(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(SIZES), jitter))
        elif draw < SHAPE_PROBABILITY + WORD_PROBABILITY:
            cells.append(PrintedWord(rng.choice(TEXT_WORDS)))
        else:
            cells.append(None)
    return Scene(grid_size, tuple(cells))


def make_dense_scenes(
    num_images: int, seed: int, image_size: int = DENSE_IMAGE_SIZE, grid_size: int = DENSE_GRID
) -> datasets.Dataset:
    """`num_images` scenes drawn from `seed` (the same seed gives the same images): columns `images` (a list of one RGB
    image, `image_size` px square) and `cell_labels` (`grid_size**2` ints indexing `CELL_LABEL_NAMES`, row-major)."""
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}.")
    if image_size < MIN_CELL_PIXELS * grid_size:
        raise ValueError(
            f"image_size {image_size} leaves cells of {image_size / grid_size:.1f} px on a {grid_size}x{grid_size} grid; "
            f"a shape or word needs at least {MIN_CELL_PIXELS} px per cell: use image_size >= {MIN_CELL_PIXELS * grid_size}."
        )
    rng = random.Random(seed)
    scenes = [sample_dense_scene(rng, grid_size) for _ in range(num_images)]
    return datasets.Dataset.from_dict(
        {
            "images": [[render_scene(scene, image_size)] for scene in scenes],
            "cell_labels": [scene.cell_labels() for scene in scenes],
        },
        features=DENSE_FEATURES,
    )
