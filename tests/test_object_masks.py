"""Object-mask preprocessing: DETR+SAM extractor, masks from annotations, dataset precompute, model input layout.

Everything runs on tiny randomly initialised Deformable DETR and SAM models built from configs; nothing is
downloaded.
"""

import numpy as np
import pytest
import torch
from datasets import Array3D, Dataset, Features, List, Value, load_from_disk
from datasets import Image as ImageFeature
from PIL import Image
from transformers import (
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    DeformableDetrImageProcessor,
    ResNetConfig,
    SamConfig,
    SamImageProcessor,
    SamModel,
    SamProcessor,
)

from delta_llava.processing import precompute_object_masks as precompute_module
from delta_llava.processing.mask_annotations import masks_from_annotations, polygons_to_mask, rle_to_mask
from delta_llava.processing.object_mask_inputs import compact_mask_stack, count_valid_masks, masks_to_model_input
from delta_llava.processing.object_masks import ObjectMaskExtractor
from delta_llava.processing.precompute_object_masks import OBJECT_MASKS_COLUMN, precompute_object_masks

SAM_IMAGE_SIZE = 64


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models gain nothing from threads; on a shared CPU, extra threads only contend (5x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_detector(seed: int = 0) -> DeformableDetrForObjectDetection:
    """Deformable DETR with a 4-stage ResNet of width 8-16, d_model 32, 10 queries, 5 labels."""
    backbone = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], out_features=["stage2", "stage3", "stage4"]
    )
    config = DeformableDetrConfig(
        backbone_config=backbone,
        d_model=32,  # the input projections use GroupNorm(32, d_model)
        encoder_layers=1,
        decoder_layers=2,  # one decoder layer breaks the tied box heads
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_feature_levels=3,
        encoder_n_points=2,
        decoder_n_points=2,
        num_queries=10,
        num_labels=5,
    )
    torch.manual_seed(seed)
    detector = DeformableDetrForObjectDetection(config)
    for classifier in detector.class_embed:  # spread the scores around 0.5 so thresholds matter
        torch.nn.init.normal_(classifier.weight, std=0.05)
        torch.nn.init.zeros_(classifier.bias)
    return detector.eval()


def tiny_segmenter(seed: int = 0) -> SamModel:
    """SAM for 64x64 inputs: patch 8 (8x8 embedding, 32x32 low-res masks), width 16, one layer everywhere."""
    config = SamConfig(
        vision_config=dict(
            hidden_size=16,
            output_channels=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=SAM_IMAGE_SIZE,
            patch_size=8,
            window_size=4,
            global_attn_indexes=[0],
            num_pos_feats=8,
            mlp_dim=32,
        ),
        prompt_encoder_config=dict(hidden_size=16, image_size=SAM_IMAGE_SIZE, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=16
        ),
    )
    torch.manual_seed(seed)
    return SamModel(config).eval()


def make_extractor(score_threshold: float = 0.5, top_k: int = 10) -> ObjectMaskExtractor:
    return ObjectMaskExtractor(
        tiny_detector(),
        DeformableDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
        tiny_segmenter(),
        SamProcessor(
            SamImageProcessor(
                size={"longest_edge": SAM_IMAGE_SIZE}, pad_size={"height": SAM_IMAGE_SIZE, "width": SAM_IMAGE_SIZE}
            )
        ),
        score_threshold=score_threshold,
        top_k=top_k,
    )


def random_image(height: int, width: int, seed: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def reference_detections(extractor, images, score_threshold, top_k):
    """Scores and labels the extractor must keep: per query its best class, above threshold, best top_k."""
    inputs = extractor.detector_processor(images=images, return_tensors="pt")
    with torch.inference_mode():
        probabilities = extractor.detector(**inputs).logits.sigmoid()
    best_scores, best_labels = probabilities.max(dim=-1)
    references = []
    for scores, labels in zip(best_scores, best_labels):
        order = scores.argsort(descending=True)
        order = order[scores[order] > score_threshold][:top_k]
        references.append((scores[order], labels[order]))
    return references


def force_sam_candidates(segmenter: SamModel):
    """Make SAM's three candidates recognisable and choose the best by predicted IoU.

    Candidate 0 covers the top of the image, 1 the bottom, 2 everything; box ``j`` gets its highest predicted
    IoU on candidate ``j % 3``.
    """

    def hook(module, args, output):
        num_boxes, height = output.pred_masks.shape[1], output.pred_masks.shape[-2]
        masks = torch.full_like(output.pred_masks, -10.0)
        masks[:, :, 0, : height // 2] = 10.0
        masks[:, :, 1, height // 2 :] = 10.0
        masks[:, :, 2] = 10.0
        iou_scores = torch.zeros_like(output.iou_scores)
        iou_scores[:, torch.arange(num_boxes), torch.arange(num_boxes) % 3] = 1.0
        output.pred_masks, output.iou_scores = masks, iou_scores
        return output

    return segmenter.register_forward_hook(hook)


def count_forward_calls(model: torch.nn.Module) -> list:
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(1))
    return calls


# --- ObjectMaskExtractor ---------------------------------------------------------------------------------------


def test_layout_masks_at_original_size_ordered_by_score_background_last():
    extractor = make_extractor(score_threshold=0.5, top_k=10)
    images = [random_image(40, 30, seed=0), random_image(50, 70, seed=1, mode="L"), random_image(33, 33, 2, "RGBA")]
    results = extractor(images)
    assert len(results) == len(images)
    for image, result in zip(images, results):
        num_objects = len(result.scores)
        assert result.masks.shape == (num_objects + 1, image.height, image.width)
        assert result.masks.dtype == torch.bool
        assert result.boxes.shape == (num_objects, 4) and result.labels.shape == (num_objects,)
        assert result.scores.dtype == torch.float32 and result.labels.dtype == torch.int64
        assert torch.all(result.scores[:-1] >= result.scores[1:])
        assert torch.equal(result.masks[-1], ~result.masks[:-1].any(dim=0))
        assert result.masks[:-1].flatten(1).any(dim=1).all(), "object masks without pixels must be dropped"
        assert (result.boxes[:, 0::2] >= 0).all() and (result.boxes[:, 0::2] <= image.width).all()
        assert (result.boxes[:, 1::2] >= 0).all() and (result.boxes[:, 1::2] <= image.height).all()
    assert sum(len(result.scores) for result in results) > 0


@pytest.mark.parametrize("score_threshold, top_k", [(0.5, 10), (0.55, 10), (0.5, 3), (0.0, 1)])
def test_threshold_top_k_and_best_iou_candidate(score_threshold, top_k):
    extractor = make_extractor(score_threshold=score_threshold, top_k=top_k)
    force_sam_candidates(extractor.segmenter)
    images = [random_image(40, 30, seed=0), random_image(50, 70, seed=1)]
    results = extractor(images)
    references = reference_detections(extractor, images, score_threshold, top_k)
    for result, (scores, labels) in zip(results, references):
        assert len(result.scores) <= top_k
        assert (result.scores > score_threshold).all()
        torch.testing.assert_close(result.scores, scores, atol=1e-5, rtol=0)
        assert torch.equal(result.labels, labels)
        for index, mask in enumerate(result.masks[:-1]):
            top_covered, bottom_covered = {0: (True, False), 1: (False, True), 2: (True, True)}[index % 3]
            assert bool(mask[0].all()) == bool(mask[0].any()) == top_covered
            assert bool(mask[-1].all()) == bool(mask[-1].any()) == bottom_covered


def test_no_detection_gives_only_an_all_ones_background():
    extractor = make_extractor(score_threshold=1.0)
    (result,) = extractor([random_image(20, 25, seed=3)])
    assert result.masks.shape == (1, 20, 25) and result.masks.all()
    assert result.scores.shape == (0,) and result.labels.shape == (0,) and result.boxes.shape == (0, 4)


def test_image_without_detection_inside_a_batch():
    extractor = make_extractor(score_threshold=0.5)

    def silence_second_image(module, args, output):
        output.logits[1] = -30.0
        return output

    extractor.detector.register_forward_hook(silence_second_image)
    segmenter_calls = count_forward_calls(extractor.segmenter)
    first, second, third = extractor([random_image(40, 30, 0), random_image(40, 30, 1), random_image(40, 30, 2)])
    assert len(first.scores) > 0 and len(third.scores) > 0
    assert second.masks.shape == (1, 40, 30) and second.masks.all() and len(second.scores) == 0
    assert len(segmenter_calls) == 1


def test_batch_gives_the_same_masks_as_one_by_one():
    extractor = make_extractor(score_threshold=0.5, top_k=10)
    detector_calls = count_forward_calls(extractor.detector)
    images = [random_image(40, 30, seed=seed) for seed in range(3)]
    batched = extractor(images)
    assert len(detector_calls) == 1
    assert len({len(result.scores) for result in batched}) > 1, "box padding for SAM is not exercised"
    for image, batched_result in zip(images, batched):
        (single,) = extractor([image])
        assert torch.equal(single.masks, batched_result.masks)
        assert torch.equal(single.labels, batched_result.labels)
        torch.testing.assert_close(single.scores, batched_result.scores)
        torch.testing.assert_close(single.boxes, batched_result.boxes)


def test_models_receive_inputs_in_their_own_dtype_and_results_follow_their_device():
    extractor = make_extractor(score_threshold=0.5)
    extractor.detector.to(torch.float64)
    extractor.segmenter.to(torch.float64)
    seen = {}

    def record(name):
        def hook(module, args, kwargs):
            seen[name] = kwargs["pixel_values"].dtype

        return hook

    extractor.detector.register_forward_pre_hook(record("detector"), with_kwargs=True)
    extractor.segmenter.register_forward_pre_hook(record("segmenter"), with_kwargs=True)
    (result,) = extractor([random_image(40, 30, seed=0)])
    assert seen == {"detector": torch.float64, "segmenter": torch.float64}
    assert len(result.scores) > 0
    for tensor in (result.masks, result.scores, result.boxes, result.labels):
        assert tensor.device == extractor.detector.device
    assert result.masks.dtype == torch.bool and result.scores.dtype == torch.float32


def test_from_pretrained_loads_saved_folders(tmp_path):
    extractor = make_extractor(score_threshold=0.4, top_k=2)
    extractor.detector.save_pretrained(tmp_path / "detector")
    extractor.detector_processor.save_pretrained(tmp_path / "detector")
    extractor.segmenter.save_pretrained(tmp_path / "segmenter")
    extractor.segmenter_processor.save_pretrained(tmp_path / "segmenter")
    loaded = ObjectMaskExtractor.from_pretrained(
        str(tmp_path / "detector"),
        str(tmp_path / "segmenter"),
        device="cpu",
        dtype=torch.float64,
        score_threshold=0.4,
        top_k=2,
    )
    assert loaded.detector.dtype == loaded.segmenter.dtype == torch.float64
    image = random_image(40, 30, seed=0)
    (original,) = extractor([image])
    (reloaded,) = loaded([image])
    assert reloaded.masks.shape == original.masks.shape and reloaded.masks.shape[1:] == (40, 30)
    torch.testing.assert_close(reloaded.scores, original.scores, atol=1e-5, rtol=0)
    assert torch.equal(reloaded.labels, original.labels)


def test_extractor_rejects_bad_inputs_with_a_fix():
    extractor = make_extractor()
    with pytest.raises(TypeError, match="Wrap a single image in a list"):
        extractor(random_image(10, 10, 0))
    with pytest.raises(TypeError, match="Image 1 is a ndarray.*PIL.Image.fromarray"):
        extractor([random_image(10, 10, 0), np.zeros((10, 10, 3), np.uint8)])
    with pytest.raises(ValueError, match="Image 0 has size \\(0, 5\\) and no pixels"):
        extractor([Image.new("RGB", (0, 5))])
    assert extractor([]) == []
    with pytest.raises(ValueError, match="`score_threshold` must lie in \\[0, 1\\]"):
        make_extractor(score_threshold=1.5)
    with pytest.raises(ValueError, match="`top_k` must be a positive integer"):
        make_extractor(top_k=0)
    with pytest.raises(TypeError, match="`detector` must be a DeformableDetrForObjectDetection, got SamModel"):
        ObjectMaskExtractor(
            extractor.segmenter, extractor.detector_processor, extractor.segmenter, extractor.segmenter_processor
        )


# --- masks from annotations ------------------------------------------------------------------------------------


def encode_rle_counts(mask: np.ndarray) -> list[int]:
    """Run lengths of a mask read column by column, starting with a (possibly empty) background run."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    boundaries = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(boundaries).tolist()
    return [0, *counts] if flat[0] else counts


def compress_rle_counts(counts: list[int]) -> str:
    """COCO's string form: delta to the run two back (from the 4th run), 5-bit groups, +48 per character."""
    characters = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        while True:
            group = value & 0x1F
            value >>= 5
            done = value == -1 if group & 0x10 else value == 0
            characters.append(chr(group + 48 + (0 if done else 0x20)))
            if done:
                break
    return "".join(characters)


def test_polygon_square_covers_its_area_in_pixels():
    square = polygons_to_mask([[0, 0, 4, 0, 4, 4, 0, 4]], height=10, width=10)
    assert square.dtype == bool and square.shape == (10, 10)
    assert square.sum() == 16 and square[:4, :4].all()
    shifted = polygons_to_mask([[1, 2, 5, 2, 5, 6, 1, 6]], height=10, width=10)
    assert shifted.sum() == 16 and shifted[2:6, 1:5].all()
    triangle = polygons_to_mask([[0, 0, 8, 0, 0, 8]], height=10, width=10)
    assert triangle.sum() == 36  # pixel centres (i + .5, j + .5) with i + j <= 7
    two_parts = polygons_to_mask([[0, 0, 2, 0, 2, 2, 0, 2], [6, 6, 9, 6, 9, 9, 6, 9]], height=10, width=10)
    assert two_parts.sum() == 4 + 9
    clipped = polygons_to_mask([[-5, -5, 3, -5, 3, 3, -5, 3]], height=10, width=10)
    assert clipped.sum() == 9


def test_rle_uncompressed_is_column_major():
    mask = rle_to_mask({"size": [2, 3], "counts": [1, 2, 3]})
    np.testing.assert_array_equal(mask, [[0, 1, 0], [1, 0, 0]])


def test_rle_compressed_strings_derived_by_hand():
    # [5, 1, 2, 0]: single characters '5', '1', '2'; the 4th run is stored as 0 - 1 = -1 -> group 31 -> 'O'.
    np.testing.assert_array_equal(
        rle_to_mask({"size": [2, 4], "counts": "512O"}), rle_to_mask({"size": [2, 4], "counts": [5, 1, 2, 0]})
    )
    # [40, 3, 2, 50]: 40 = 8 + 1*32 -> 'X' (8 | 0x20) '1'; 50 - 3 = 47 = 15 + 1*32 -> '_' '1'.
    expected = rle_to_mask({"size": [5, 19], "counts": [40, 3, 2, 50]})
    np.testing.assert_array_equal(rle_to_mask({"size": [5, 19], "counts": "X132_1"}), expected)
    np.testing.assert_array_equal(rle_to_mask({"size": [5, 19], "counts": b"X132_1"}), expected)
    assert expected.sum() == 3 + 50


def test_rle_compressed_round_trip_on_random_masks():
    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (7, 5), (37, 53)]:
        mask = rng.random((height, width)) < rng.random()
        mask[: height // 2, : width // 3] = True  # long runs need several characters
        counts = encode_rle_counts(mask)
        assert compress_rle_counts([5, 1, 2, 0]) == "512O"
        rle = {"size": [height, width], "counts": compress_rle_counts(counts)}
        np.testing.assert_array_equal(rle_to_mask(rle), mask)
        np.testing.assert_array_equal(rle_to_mask({"size": [height, width], "counts": counts}), mask)


def test_masks_from_annotations_orders_objects_and_appends_background():
    big = [[0, 0, 6, 0, 6, 6, 0, 6]]  # 36 px
    small = {"size": [8, 8], "counts": [0, 2, 62]}  # 2 px in column 0
    middle = np.zeros((8, 8), dtype=np.uint8)
    middle[7, :] = 1  # 8 px
    by_area = masks_from_annotations([small, big, middle], height=8, width=8)
    assert by_area.shape == (4, 8, 8) and by_area.dtype == torch.bool
    assert [int(mask.sum()) for mask in by_area[:-1]] == [36, 8, 2]
    assert torch.equal(by_area[-1], ~by_area[:-1].any(dim=0))
    by_score = masks_from_annotations([small, big, middle], 8, 8, scores=[0.9, 0.1, 0.5])
    assert [int(mask.sum()) for mask in by_score[:-1]] == [2, 8, 36]
    by_given_area = masks_from_annotations([small, big, middle], 8, 8, areas=[100.0, 1.0, 5.0])
    assert [int(mask.sum()) for mask in by_given_area[:-1]] == [2, 8, 36]
    nothing = masks_from_annotations([], 8, 8)
    assert nothing.shape == (1, 8, 8) and nothing.all()
    empty_object = masks_from_annotations([np.zeros((8, 8), bool), big], 8, 8)
    assert empty_object.shape == (2, 8, 8), "an object without pixels is dropped"


@pytest.mark.parametrize(
    "segmentation, message",
    [
        ([], "Empty polygon segmentation"),
        ([0, 0, 4, 0, 4, 4], "flat list of numbers.*Wrap it"),
        ([[0, 0, 4, 0]], "needs an even count of at least 6"),
        ([[0, 0, 4, 0, 4]], "needs an even count of at least 6"),
        ([[0, 0, 4, float("nan"), 4, 4]], "NaN or infinite"),
        (np.zeros((5, 8), bool), "shape \\(5, 8\\) but the image is \\(8, 8\\)"),
        (np.full((8, 8), 0.7), "values other than 0 and 1.*mask > 0.5"),
        ({"size": [8, 9], "counts": [72]}, "RLE size mismatch: the RLE is \\[8, 9\\].*image is \\[8, 8\\]"),
        ({"size": [8, 8], "counts": [10, 3]}, "RLE size mismatch: the runs cover 13 pixels.*has 64"),
        ({"size": [8, 8], "counts": "X"}, "ends in the middle of a number"),
        ({"size": [8, 8], "counts": "1 2"}, "character ' ' at position 1"),
        ({"size": [8, 8], "counts": [64, -1, 1]}, "must be non-negative integers"),
        ({"counts": [64]}, "must be a dict with 'size'"),
        ({"segmentation": [[0, 0, 4, 0, 4, 4]], "area": 8}, "pass its 'segmentation' field"),
    ],
)
def test_bad_annotations_raise_value_errors_naming_the_fix(segmentation, message):
    with pytest.raises(ValueError, match=message):
        masks_from_annotations([segmentation], height=8, width=8)


def test_bad_annotation_arguments():
    square = [[0, 0, 4, 0, 4, 4, 0, 4]]
    with pytest.raises(ValueError, match="`scores` must hold one number per segmentation \\(2\\)"):
        masks_from_annotations([square, square], 8, 8, scores=[0.5])
    with pytest.raises(ValueError, match="height and width must be positive integers"):
        masks_from_annotations([square], 0, 8)
    with pytest.raises(TypeError, match="Wrap a single object's segmentation in a list"):
        masks_from_annotations({"size": [8, 8], "counts": [64]}, 8, 8)
    with pytest.raises(TypeError, match="Unsupported segmentation type str"):
        masks_from_annotations(["polygon"], 8, 8)


# --- model input layout ----------------------------------------------------------------------------------------


def test_masks_to_model_input_pads_with_empty_masks_after_the_valid_ones():
    full_size = masks_from_annotations([[[0, 0, 8, 0, 8, 8, 0, 8]]], height=16, width=32)  # (2, 16, 32) bool
    compact = compact_mask_stack(masks_from_annotations([np.eye(16, dtype=bool), [[0, 0, 8, 0, 8, 8]]], 16, 16), 8)
    assert compact.dtype == np.uint8 and compact.shape == (3, 8, 8)
    model_input = masks_to_model_input([full_size, compact, compact[-1:]], mask_size=8)
    assert model_input.shape == (3, 3, 8, 8) and model_input.dtype == torch.float32
    assert model_input.min() >= 0 and model_input.max() <= 1
    assert count_valid_masks(model_input).tolist() == [2, 3, 1]
    assert not model_input[0, 2:].any() and not model_input[2, 1:].any(), "padding masks are all zero"
    torch.testing.assert_close(model_input[1], torch.from_numpy(compact).float() / 255)
    # Cells are 2x4 pixels: the 8x8-pixel object fills exactly the 4x2 top-left cells.
    assert model_input[0, 0, :4, :2].eq(1).all() and model_input[0, 0].sum() == 8


def test_compact_masks_keep_tiny_objects_non_empty():
    mask = torch.zeros(2, 256, 256, dtype=torch.bool)
    mask[0, 100, 100] = True  # covers 1/1024 of its 32x32 cell: 0.25/255, which rounding would erase
    mask[1] = ~mask[0]
    compact = compact_mask_stack(mask, 8)
    assert compact[0].max() == 1 and compact[0].sum() == 1
    assert count_valid_masks(masks_to_model_input([compact], 8)).tolist() == [2]


def test_masks_to_model_input_rejects_bad_stacks():
    with pytest.raises(ValueError, match="mask 0 is empty but a later mask is not"):
        masks_to_model_input([np.stack([np.zeros((4, 4), bool), np.ones((4, 4), bool)])], 4)
    with pytest.raises(ValueError, match="Mask stack 0 has shape \\(4, 4\\).*3-D stack"):
        masks_to_model_input([np.ones((4, 4), bool)], 4)
    with pytest.raises(ValueError, match="integer values outside 0..255.*Pass binary masks as bool"):
        masks_to_model_input([np.full((1, 4, 4), 256)], 4)
    with pytest.raises(ValueError, match="float values outside \\[0, 1\\]"):
        masks_to_model_input([np.full((1, 4, 4), 2.0)], 4)
    with pytest.raises(ValueError, match="non-empty list"):
        masks_to_model_input([], 4)
    with pytest.raises(ValueError, match="`mask_size` must be a positive integer"):
        masks_to_model_input([np.ones((1, 4, 4), bool)], 0)


# --- precompute over a dataset ---------------------------------------------------------------------------------


@pytest.fixture
def saved_dataset(tmp_path):
    features = Features({"images": List(ImageFeature()), "id": Value("int64")})
    rows = {
        "images": [[random_image(40, 30, 0)], [random_image(30, 44, 1), random_image(20, 20, 2)], []],
        "id": [0, 1, 2],
    }
    path = tmp_path / "dataset"
    Dataset.from_dict(rows, features=features).save_to_disk(str(path))
    return path


def test_precompute_writes_the_column_and_reuses_the_cache(saved_dataset):
    extractor = make_extractor(score_threshold=0.5, top_k=4)
    detector_calls = count_forward_calls(extractor.detector)
    dataset = load_from_disk(str(saved_dataset))
    result = precompute_object_masks(dataset, extractor, mask_size=8, batch_size=2)
    assert len(detector_calls) == 1  # batch 1: rows 0-1 (3 images); batch 2: row 2 has no image, no forward
    assert result.column_names == ["images", "id", OBJECT_MASKS_COLUMN]
    assert result.features[OBJECT_MASKS_COLUMN] == List(Array3D(shape=(None, 8, 8), dtype="uint8"))
    stacks_per_row = result[OBJECT_MASKS_COLUMN]  # nested Python ints, as a collator sees them
    assert [len(stacks) for stacks in stacks_per_row] == [1, 2, 0]
    first_batch_images = [image for row in dataset[:2]["images"] for image in row]
    stacks = [*stacks_per_row[0], *stacks_per_row[1]]
    expected = extractor(first_batch_images)
    for stack, expected_masks in zip(stacks, expected):
        np.testing.assert_array_equal(np.asarray(stack), compact_mask_stack(expected_masks.masks, 8))
    model_input = masks_to_model_input(stacks, mask_size=8)
    # Objects are never empty; an empty background (objects cover the image) ends the valid masks early.
    expected_counts = [len(masks.scores) + int(masks.masks[-1].any()) for masks in expected]
    assert count_valid_masks(model_input).tolist() == expected_counts
    detector_calls.clear()

    again = precompute_object_masks(load_from_disk(str(saved_dataset)), extractor, mask_size=8, batch_size=2)
    assert detector_calls == [], "the second run must load datasets' cache file"
    assert again.cache_files == result.cache_files

    precompute_object_masks(dataset, extractor, mask_size=4, batch_size=2)
    assert len(detector_calls) == 1, "another mask size is another cache entry"


def test_precompute_rejects_a_missing_column(saved_dataset):
    with pytest.raises(ValueError, match="no column 'pictures'.*Pass `image_column`"):
        precompute_object_masks(load_from_disk(str(saved_dataset)), make_extractor(), image_column="pictures")


def test_command_line_saves_the_dataset_with_masks(saved_dataset, tmp_path, monkeypatch):
    extractor = make_extractor()
    loaded_with = {}

    def fake_from_pretrained(cls, detector_id, segmenter_id, **kwargs):
        loaded_with.update(detector_id=detector_id, segmenter_id=segmenter_id, **kwargs)
        return extractor

    monkeypatch.setattr(precompute_module.ObjectMaskExtractor, "from_pretrained", classmethod(fake_from_pretrained))
    output_dir = tmp_path / "with_masks"
    precompute_module.main(
        ["--dataset_path", str(saved_dataset), "--output_dir", str(output_dir), "--mask_size", "6", "--top_k", "3"]
    )
    assert loaded_with["detector_id"] == "SenseTime/deformable-detr"
    assert loaded_with["segmenter_id"] == "facebook/sam-vit-base"
    assert loaded_with["top_k"] == 3 and loaded_with["dtype"] == torch.float32
    saved = load_from_disk(str(output_dir))
    assert [np.asarray(stack).shape[1:] for stack in saved[1][OBJECT_MASKS_COLUMN]] == [(6, 6), (6, 6)]

