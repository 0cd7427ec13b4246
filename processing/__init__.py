"""Preprocessing for Delta-LLaVA: the processor, image inputs, object masks and their MaskInversion embeddings."""

from .mask_inversion import MaskInversion
from .processing_delta_llava import DeltaLlavaProcessor

__all__ = ["DeltaLlavaProcessor", "MaskInversion"]
