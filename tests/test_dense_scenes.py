"""training/dense_scenes.py: many small things per image, drawn deterministically, labelled as drawn."""

import numpy as np
import pytest

from delta_llava.training.dense_scenes import make_dense_scenes
from delta_llava.training.synthetic_vqa import BACKGROUND, CELL_LABEL_NAMES


def test_same_seed_same_scenes_other_seed_other_scenes():
    first, again, other = (make_dense_scenes(4, seed) for seed in (3, 3, 4))
    assert first["cell_labels"] == again["cell_labels"]
    assert all(np.array_equal(np.asarray(a[0]), np.asarray(b[0])) for a, b in zip(first["images"], again["images"]))
    assert first["cell_labels"] != other["cell_labels"]


def test_most_cells_hold_something_and_each_label_matches_its_pixels():
    scenes = make_dense_scenes(20, seed=0)
    labels = np.array(scenes["cell_labels"])
    assert labels.shape == (20, 64)
    assert 0.5 < (labels != 0).mean() < 0.7  # ~60% filled: several things per token region from 36 tokens down
    assert len(np.unique(labels)) > 25  # every kind of content shows up (31 classes)
    image = np.asarray(scenes["images"][0][0])
    assert image.shape == (192, 192, 3)
    for cell, label in enumerate(labels[0]):
        row, column = divmod(cell, 8)
        pixels = image[row * 24 : (row + 1) * 24, column * 24 : (column + 1) * 24]
        drawn = (pixels != BACKGROUND).any(axis=-1).sum()
        assert (drawn > 0) == (label != 0), f"cell {cell} labelled {CELL_LABEL_NAMES[label]!r} has {drawn} drawn pixels"


def test_bad_sizes_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="a shape or word needs at least 8 px per cell: use image_size >= 64"):
        make_dense_scenes(2, seed=0, image_size=40)
    with pytest.raises(ValueError, match="num_images must be at least 1"):
        make_dense_scenes(0, seed=0)
