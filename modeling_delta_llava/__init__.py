"""Delta-LLaVA for Hugging Face transformers: `from delta_llava import DeltaLlavaForConditionalGeneration`."""

from .configuration_delta_llava import DeltaLlavaConfig
from .conversion import convert_llava_to_delta_llava
from .modeling_delta_llava import DeltaLlavaForConditionalGeneration, DeltaLlavaModel, DeltaLlavaPreTrainedModel
from .processing import DeltaLlavaProcessor

__all__ = [
    "DeltaLlavaConfig",
    "DeltaLlavaModel",
    "DeltaLlavaPreTrainedModel",
    "DeltaLlavaForConditionalGeneration",
    "DeltaLlavaProcessor",
    "convert_llava_to_delta_llava",
]
