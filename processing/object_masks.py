"""Object masks for Mask-LLaVA object tokens: Deformable DETR finds boxes, SAM turns each box into a mask.

``ObjectMaskExtractor`` runs both models on a batch of PIL images and returns, per image, the object masks at
the original image size, ordered by detector score, followed by one background mask (see
``object_mask_inputs`` for the layout every mask producer shares).

This file needs only ``torch``, ``PIL`` and ``transformers``; it may travel with a checkpoint as remote code.
"""

from dataclasses import dataclass

import torch
from PIL import Image
from transformers import AutoImageProcessor, DeformableDetrForObjectDetection, SamModel, SamProcessor
from transformers.image_processing_utils import BaseImageProcessor

from .object_mask_inputs import append_background_mask

DEFAULT_DETECTOR_ID = "SenseTime/deformable-detr"
DEFAULT_SEGMENTER_ID = "facebook/sam-vit-base"
DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_TOP_K = 16

__all__ = ["DEFAULT_DETECTOR_ID", "DEFAULT_SEGMENTER_ID", "ObjectMaskExtractor", "ObjectMasks"]


@dataclass
class ObjectMasks:
    """Objects found in one image of height ``H`` and width ``W``; ``K`` objects kept.

    Attributes:
        masks: bool ``(K + 1, H, W)``: object masks by descending score, then the background mask
            (complement of the union of the objects; all ones when ``K == 0``).
        scores: float32 ``(K,)``, descending.
        boxes: float32 ``(K, 4)``, ``(x1, y1, x2, y2)`` in pixels of the original image.
        labels: int64 ``(K,)``, detector class ids.
    """

    masks: torch.Tensor
    scores: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor


@dataclass
class _Detections:
    """Detector output for one image, best first: scores ``(K,)``, labels ``(K,)``, boxes ``(K, 4)``."""

    scores: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor


class ObjectMaskExtractor:
    """Boxes from Deformable DETR, one SAM mask per box, plus a background mask.

    Each detector query yields at most one detection (its best class), so one object never appears twice with
    two labels. Queries scoring above ``score_threshold`` are kept, at most ``top_k`` of them, best first. SAM is
    prompted with those boxes; of its candidate masks per box the one with the highest predicted IoU is kept.
    A detection whose mask comes out empty is dropped: it has no pixels to pool. Both models run in their own
    device and dtype; results lie on the detector's device.
    """

    def __init__(
        self,
        detector: DeformableDetrForObjectDetection,
        detector_processor: BaseImageProcessor,
        segmenter: SamModel,
        segmenter_processor: SamProcessor,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        top_k: int = DEFAULT_TOP_K,
    ) -> None:
        if not isinstance(detector, DeformableDetrForObjectDetection):
            raise TypeError(
                f"`detector` must be a DeformableDetrForObjectDetection, got {type(detector).__name__}. Load one "
                f"with DeformableDetrForObjectDetection.from_pretrained({DEFAULT_DETECTOR_ID!r})."
            )
        if not isinstance(segmenter, SamModel):
            raise TypeError(
                f"`segmenter` must be a SamModel, got {type(segmenter).__name__}. Load one with "
                f"SamModel.from_pretrained({DEFAULT_SEGMENTER_ID!r})."
            )
        if not hasattr(detector_processor, "post_process_object_detection"):
            raise TypeError(
                f"`detector_processor` must be the detector's image processor, got "
                f"{type(detector_processor).__name__}. Load it with AutoImageProcessor.from_pretrained(detector_id)."
            )
        if not isinstance(segmenter_processor, SamProcessor):
            raise TypeError(
                f"`segmenter_processor` must be a SamProcessor, got {type(segmenter_processor).__name__}. Load it "
                "with SamProcessor.from_pretrained(segmenter_id)."
            )
        if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)):
            raise TypeError(f"`score_threshold` must be a number in [0, 1], got {score_threshold!r}.")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(
                f"`score_threshold` must lie in [0, 1] (detector scores are probabilities), got {score_threshold}."
            )
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"`top_k` must be a positive integer (most objects kept per image), got {top_k!r}.")
        self.detector = detector.eval()
        self.detector_processor = detector_processor
        self.segmenter = segmenter.eval()
        self.segmenter_processor = segmenter_processor
        self.score_threshold = float(score_threshold)
        self.top_k = top_k

    @classmethod
    def from_pretrained(
        cls,
        detector_id: str = DEFAULT_DETECTOR_ID,
        segmenter_id: str = DEFAULT_SEGMENTER_ID,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        top_k: int = DEFAULT_TOP_K,
    ) -> "ObjectMaskExtractor":
        """Load the detector, SAM and their processors (Hub ids or local folders).

        ``device`` and ``dtype`` apply to both models; ``None`` keeps the loading defaults.
        """
        dtype_kwargs = {} if dtype is None else {"dtype": dtype}
        detector = DeformableDetrForObjectDetection.from_pretrained(detector_id, **dtype_kwargs)
        segmenter = SamModel.from_pretrained(segmenter_id, **dtype_kwargs)
        if device is not None:
            detector.to(device)
            segmenter.to(device)
        return cls(
            detector,
            AutoImageProcessor.from_pretrained(detector_id),
            segmenter,
            SamProcessor.from_pretrained(segmenter_id),
            score_threshold=score_threshold,
            top_k=top_k,
        )

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image]) -> list[ObjectMasks]:
        """Extract object masks for a batch of images: one detector forward and one SAM forward for the batch.

        Args:
            images: PIL images of any mode and size (converted to RGB).

        Returns:
            One ``ObjectMasks`` per image, in input order.
        """
        images = _as_rgb_images(images)
        if not images:
            return []
        detections = self._detect(images)
        masks_per_image = self._segment(images, [detection.boxes for detection in detections])
        results = []
        for detection, object_masks in zip(detections, masks_per_image):
            object_masks = object_masks.to(detection.scores.device)
            non_empty = object_masks.flatten(1).any(dim=1)
            results.append(
                ObjectMasks(
                    masks=append_background_mask(object_masks[non_empty]),
                    scores=detection.scores[non_empty],
                    boxes=detection.boxes[non_empty],
                    labels=detection.labels[non_empty],
                )
            )
        return results

    def _detect(self, images: list[Image.Image]) -> list[_Detections]:
        """Run Deformable DETR once on the batch and keep each image's best queries above the threshold."""
        inputs = self.detector_processor(images=images, return_tensors="pt")
        model_inputs = {"pixel_values": inputs["pixel_values"].to(self.detector.device, self.detector.dtype)}
        if "pixel_mask" in inputs:
            model_inputs["pixel_mask"] = inputs["pixel_mask"].to(self.detector.device)
        outputs = self.detector(**model_inputs)
        # The processor ranks (query, class) pairs; leaving only each query's best class in the running makes
        # its top-k a top-k over queries.
        logits = outputs.logits
        best_class = logits.argmax(dim=-1, keepdim=True)
        outputs.logits = torch.full_like(logits, float("-inf")).scatter(-1, best_class, logits.gather(-1, best_class))
        sizes = [(image.height, image.width) for image in images]
        results = self.detector_processor.post_process_object_detection(
            outputs, threshold=self.score_threshold, target_sizes=sizes, top_k=self.top_k
        )
        detections = []
        for result, (height, width) in zip(results, sizes):
            order = result["scores"].argsort(descending=True, stable=True)
            boxes = result["boxes"][order].float()
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            detections.append(
                _Detections(scores=result["scores"][order].float(), labels=result["labels"][order].long(), boxes=boxes)
            )
        return detections

    def _segment(self, images: list[Image.Image], boxes_per_image: list[torch.Tensor]) -> list[torch.Tensor]:
        """One SAM mask per box, at the original image size: bool ``(K_i, H_i, W_i)`` per image.

        Images without boxes skip SAM. SAM takes the same number of boxes for every image of a batch, so shorter
        box lists are padded by repeating their last box, and the padding's masks are dropped.
        """
        masks = [torch.zeros(0, image.height, image.width, dtype=torch.bool) for image in images]
        prompted = [index for index, boxes in enumerate(boxes_per_image) if len(boxes)]
        if not prompted:
            return masks
        max_boxes = max(len(boxes_per_image[index]) for index in prompted)
        input_boxes = []
        for index in prompted:
            boxes = boxes_per_image[index]
            padding = boxes[-1:].expand(max_boxes - len(boxes), 4)
            input_boxes.append(torch.cat([boxes, padding]).tolist())
        inputs = self.segmenter_processor(
            images=[images[index] for index in prompted], input_boxes=input_boxes, return_tensors="pt"
        )
        device, dtype = self.segmenter.device, self.segmenter.dtype
        outputs = self.segmenter(
            pixel_values=inputs["pixel_values"].to(device, dtype),
            input_boxes=inputs["input_boxes"].to(device, dtype),
            multimask_output=True,
        )
        # pred_masks: (batch, boxes, candidates, h, w) logits; iou_scores: (batch, boxes, candidates).
        best = outputs.iou_scores.argmax(dim=-1)
        low_res_size = outputs.pred_masks.shape[-2:]
        best_masks = outputs.pred_masks.gather(2, best[..., None, None, None].expand(-1, -1, 1, *low_res_size))
        full_size = self.segmenter_processor.post_process_masks(
            best_masks.float(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        for row, index in enumerate(prompted):
            masks[index] = full_size[row][: len(boxes_per_image[index]), 0]
        return masks


def _as_rgb_images(images: list[Image.Image]) -> list[Image.Image]:
    """Check the batch and convert every image to RGB."""
    if isinstance(images, Image.Image) or not isinstance(images, (list, tuple)):
        raise TypeError(
            f"`images` must be a list of PIL images, got {type(images).__name__}. Wrap a single image in a list."
        )
    rgb_images = []
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"Image {index} is a {type(image).__name__}, not a PIL image. Convert it with "
                "PIL.Image.fromarray(array) or open files with PIL.Image.open(path)."
            )
        if image.width < 1 or image.height < 1:
            raise ValueError(f"Image {index} has size {image.size} and no pixels; drop it or pass a real image.")
        rgb_images.append(image if image.mode == "RGB" else image.convert("RGB"))
    return rgb_images
