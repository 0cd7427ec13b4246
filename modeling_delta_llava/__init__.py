"""Delta-LLaVA for Hugging Face transformers: `from delta_llava import DeltaLlavaForConditionalGeneration`."""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_delta_llava import DeltaLlavaConfig
from .conversion import convert_llava_to_delta_llava
from .modeling_delta_llava import DeltaLlavaForConditionalGeneration, DeltaLlavaModel, DeltaLlavaPreTrainedModel
from .official_weights import convert_official_projector_weights
from .processing import DeltaLlavaProcessor

# Installed users get the Auto classes without trust_remote_code; saved checkpoints still carry their code.
AutoConfig.register(DeltaLlavaConfig.model_type, DeltaLlavaConfig)
AutoModel.register(DeltaLlavaConfig, DeltaLlavaModel)
AutoModelForImageTextToText.register(DeltaLlavaConfig, DeltaLlavaForConditionalGeneration)
AutoProcessor.register(DeltaLlavaConfig, DeltaLlavaProcessor)

__all__ = [
    "DeltaLlavaConfig",
    "DeltaLlavaModel",
    "DeltaLlavaPreTrainedModel",
    "DeltaLlavaForConditionalGeneration",
    "DeltaLlavaProcessor",
    "convert_llava_to_delta_llava",
    "convert_official_projector_weights",
]
