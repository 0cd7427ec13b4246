"""Preprocessing for Delta-LLaVA: the processor, image inputs and object masks."""

from .processing_delta_llava import DeltaLlavaProcessor

__all__ = ["DeltaLlavaProcessor"]
