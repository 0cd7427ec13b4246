"""Delta-LLaVA: a vision tower, a token-efficient projector and a causal language model, in transformers' Llava style."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, ModelOutput
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, torch_compilable_check
from transformers.utils.generic import can_return_tuple

from .configuration_delta_llava import DeltaLlavaConfig
from .delta_projection import BaseWeight, LowRankUpdate
from .input_checks import (
    check_input_ids,
    check_max_object_tokens,
    check_object_embeddings,
    check_object_masks,
    check_pixel_values,
)
from .object_tokens import count_object_masks, pool_mask_features, scale_to_norm
from .projector_baselines import AvgPoolProjector, MlpProjector, TokenPackerProjector
from .projector_delta import DeltaProjector
from .projector_delta_official import OfficialDeltaProjector
from .projector_layers import ZeroInitLinear


try:  # transformers 5.23 (tested): a list in output_hidden_states names the hidden-state indices to keep
    from transformers.utils.output_capturing import resolve_hidden_states_indices  # noqa: F401

    TOWER_KEEPS_SELECTED_HIDDEN_STATES = True
except ImportError:  # transformers 5.19 (tested) reads such a list as layer numbers: keep them all instead
    TOWER_KEEPS_SELECTED_HIDDEN_STATES = False

if torch.distributed.is_available():
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method
else:  # a torch build without distributed: nothing can be sharded
    FSDPModule = ()

PROJECTOR_CLASSES = {
    "mlp2x_gelu": MlpProjector,
    "tokenpacker": TokenPackerProjector,
    "avgpool": AvgPoolProjector,
}
DELTA_PROJECTOR_CLASSES = {"official": OfficialDeltaProjector, "shared_base": DeltaProjector}
PROJECTORS_READING_MEMORY = ("delta", "tokenpacker")
# The modules between the tower and the language model, trained as "the projector" (stage 1, LoRA's modules_to_save):
# the projector itself and, with MaskInversion object features, the map of their embeddings to the tower's width.
PROJECTOR_MODULES = ("multi_modal_projector", "object_embedding_map")


def projector_inputs(
    config: DeltaLlavaConfig, hidden_states: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    The tower's hidden states, one (I, T, C) tensor per layer (T = the N patches, after a CLS token where the tower
    has one) -> patch_features (I, N, C) from `vision_feature_layer` and, for the projectors that read them, memory
    (I, L, N, C) from `memory_layers` (else None).
    """
    num_patches = config.patch_grid_size**2
    patch_features = hidden_states[config.vision_feature_layer][:, -num_patches:]
    memory = None
    if config.projector_type in PROJECTORS_READING_MEMORY:
        memory = torch.stack([hidden_states[layer][:, -num_patches:] for layer in config.memory_layers], dim=1)
    return patch_features, memory


def build_projector(config: DeltaLlavaConfig) -> nn.Module:
    """The projector module for `config.projector_type` (and, for `delta`, `config.delta_layout`)."""
    if config.projector_type == "delta":
        return DELTA_PROJECTOR_CLASSES[config.delta_layout](config)
    return PROJECTOR_CLASSES[config.projector_type](config)


def repeated_layer_classes(model: PreTrainedModel) -> set[str]:
    """Names of the classes that `model` declares not to be split and that it stacks in a ModuleList (its layers)."""
    declared = set(model._no_split_modules or ())
    stacked = {type(layer).__name__ for child in model.modules() if isinstance(child, nn.ModuleList) for layer in child}
    return declared & stacked


@dataclass
class DeltaLlavaModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(total_image_tokens, hidden_size)`, *optional*):
        The projected visual tokens of every image of the batch, concatenated in placeholder order.
    """

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class DeltaLlavaCausalLMOutputWithPast(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*): next-token loss on the positions `labels` keeps.
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`): language modeling scores.
    past_key_values (`Cache`, *optional*): the key/value cache for the next decoding step.
    image_hidden_states (`torch.FloatTensor` of shape `(total_image_tokens, hidden_size)`, *optional*): see above.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    image_hidden_states: torch.FloatTensor | None = None


class DeltaLlavaPreTrainedModel(PreTrainedModel):
    config: DeltaLlavaConfig
    config_class = DeltaLlavaConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = None  # set per instance by DeltaLlavaModel: the tower's and the LLM's layers, the projector
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True  # text and decoding steps; image prefill does not (README, tests)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, ZeroInitLinear):  # before the generic Linear init, which would mark it initialised
            init.zeros_(module.weight)
            init.zeros_(module.bias)
            return
        super()._init_weights(module)
        if isinstance(module, BaseWeight):  # as transformers initialises a Linear's weight
            init.normal_(module.weight, mean=0.0, std=getattr(self.config.get_text_config(), "initializer_range", 0.02))
        elif isinstance(module, LowRankUpdate) and module.starts_at_zero:
            init.normal_(module.down, std=module.down.shape[1] ** -0.5)
            init.zeros_(module.up)  # a fresh role starts exactly at the shared base
        elif isinstance(module, LowRankUpdate):  # the authors' init: both factors Xavier-uniform
            init.xavier_uniform_(module.down)
            init.xavier_uniform_(module.up)


    def save_pretrained(self, *args, **kwargs):
        """
        transformers' `save_pretrained`, run under the model's own class: FSDP2 swaps a sharded model's class for a
        subclass defined in torch, and the saved `auto_map` and remote-code files would then name torch's module.
        """
        sharded_class = type(self)
        self.__class__ = next(cls for cls in sharded_class.__mro__ if cls.__module__ == __name__)
        try:
            return super().save_pretrained(*args, **kwargs)
        finally:
            self.__class__ = sharded_class


class DeltaLlavaModel(DeltaLlavaPreTrainedModel):
    """Vision tower + projector + language model, without the language modeling head."""

    def __init__(self, config: DeltaLlavaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = build_projector(config)
        if config.use_object_tokens and config.object_features == "mask_inversion":  # E -> the tower's width C
            self.object_embedding_map = nn.Linear(config.object_embedding_dim, config.vision_config.hidden_size)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()
        # post_init collects the children's lists, which name classes this model lacks (CLIP's text embeddings), and
        # FSDP's transformer wrap policy fails on a name it cannot find
        self._no_split_modules = {
            *repeated_layer_classes(self.vision_tower), *repeated_layer_classes(self.language_model),
            type(self.multi_modal_projector).__name__,
        }  # fmt: skip

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        num_visual_tokens: int | None = None,
        object_masks: torch.FloatTensor | None = None,
        max_object_tokens: int | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        visual_token_budget: int | torch.Tensor | None = None,
        object_embeddings: torch.FloatTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """
        pixel_values (I, 3, H, W) [+ object_masks (I, K, h, w), or with object_features="mask_inversion" the masks'
        object_embeddings (I, K, E), valid rows first then zeros] -> the tower's output with `pooler_output` set to
        one (n_i, hidden_size) tensor per image, n_i = [1 global token] + V_i + [min(valid objects of image i,
        max_object_tokens) object tokens]. V_i is `num_visual_tokens` for every image, or the processor's per-image
        `visual_token_budget` (I,) — a serving engine batches images of requests with different budgets into one call.
        The tower's `hidden_states` hold only the layers the projector reads (the others `None`) unless
        `output_hidden_states` asks for all; `attentions` come with `output_attentions` (argument or config).
        """
        config = self.config
        check_pixel_values(pixel_values, config.vision_config.image_size)
        budgets = self.reconcile_budgets(num_visual_tokens, visual_token_budget, pixel_values.shape[0])
        query_sides = [config.check_num_visual_tokens(budget) for budget in budgets]
        if output_attentions is None:
            output_attentions = config.output_attentions or config.vision_config.output_attentions
        tower_outputs = self.vision_tower(
            pixel_values,
            output_hidden_states=output_hidden_states or self.hidden_states_read() or True,
            output_attentions=output_attentions,
            return_dict=True,
        )
        hidden_states = tower_outputs.hidden_states
        patch_features, memory = projector_inputs(config, hidden_states)
        features = self.project_patches(patch_features, memory, query_sides)

        reference_norm = patch_features.norm(dim=-1).mean(dim=1)  # (I,): Mask-LLaVA's norm scaling target
        if config.use_global_token:
            selected = hidden_states[config.vision_feature_layer]
            has_cls = selected.shape[1] == patch_features.shape[1] + 1
            global_feature = selected[:, :1] if has_cls else patch_features.mean(dim=1, keepdim=True)
            global_tokens = self.project_extra_tokens(scale_to_norm(global_feature, reference_norm), "global")
            features = [torch.cat([token, image]) for token, image in zip(global_tokens, features)]

        max_object_tokens = config.max_object_tokens if max_object_tokens is None else max_object_tokens
        check_max_object_tokens(max_object_tokens)
        objects = None
        if config.use_object_tokens:
            objects = self.check_object_inputs(object_masks, object_embeddings, pixel_values.shape[0])
        if objects is not None and max_object_tokens > 0:
            kept = count_object_masks(objects).clamp(max=max_object_tokens).tolist()
            objects = objects[:, : max(kept, default=0)]
            if object_embeddings is not None:
                object_features = self.object_embedding_map(objects.to(self.object_embedding_map.weight.dtype))
            else:
                object_features = pool_mask_features(patch_features, objects)
            object_tokens = self.project_extra_tokens(scale_to_norm(object_features, reference_norm), "object")
            features = [torch.cat([image, tokens[:count]]) for image, tokens, count in zip(features, object_tokens, kept)]
        return BaseModelOutputWithPooling(
            last_hidden_state=tower_outputs.last_hidden_state,
            pooler_output=features,
            hidden_states=hidden_states,
            attentions=tower_outputs.attentions,
        )

    def check_object_inputs(
        self, object_masks: torch.Tensor | None, object_embeddings: torch.Tensor | None, num_images: int
    ) -> torch.Tensor | None:
        """The object inputs this model's `object_features` reads (masks, or MaskInversion embeddings), checked."""
        if object_masks is not None and object_embeddings is not None:
            raise ValueError(
                "Pass object_masks or object_embeddings, not both: the embeddings are computed from the masks (the "
                "processor does it when given masks and a MaskInversion inverter)."
            )
        method = self.config.object_features
        if object_embeddings is not None and method != "mask_inversion":
            raise ValueError(
                f"object_embeddings were given but this model pools its object tokens from masks "
                f"(object_features={method!r}): pass object_masks instead."
            )
        if object_masks is not None and method == "mask_inversion":
            raise ValueError(
                "This model's object tokens are MaskInversion embeddings (object_features='mask_inversion'): pass "
                "object_embeddings (I, K, E), e.g. from the processor called with the masks and "
                "`object_mask_inverter=MaskInversion(clip_tower)`, instead of object_masks."
            )
        if object_masks is not None:
            check_object_masks(object_masks, num_images)
            return object_masks
        if object_embeddings is not None:
            check_object_embeddings(object_embeddings, num_images, self.config.object_embedding_dim)
        return object_embeddings

    def hidden_states_read(self) -> list[int]:
        """Hidden-state indices of the tower that the projector reads: the patch features' and the memory levels'
        (empty where transformers cannot keep only those)."""
        if not TOWER_KEEPS_SELECTED_HIDDEN_STATES:
            return []
        config = self.config
        layers = [config.vision_feature_layer]
        if config.projector_type in PROJECTORS_READING_MEMORY:
            layers += config.memory_layers
        depth = config.vision_config.num_hidden_layers + 1
        return sorted({layer % depth for layer in layers})

    def project_patches(
        self, patch_features: torch.Tensor, memory: torch.Tensor | None, query_sides: list[int]
    ) -> list[torch.Tensor]:
        """patch_features (I, N, C) [+ memory (I, L, N, C)] -> one (g_i*g_i, D) tensor per image: the images that share
        a query side g are projected together, in one call of the projector."""
        if len(set(query_sides)) == 1:
            return list(self.multi_modal_projector(patch_features, memory, query_sides[0]))
        features = [None] * len(query_sides)
        for side in sorted(set(query_sides)):
            indices = [index for index, image_side in enumerate(query_sides) if image_side == side]
            rows = torch.tensor(indices, device=patch_features.device)
            group_memory = None if memory is None else memory.index_select(0, rows)
            projected = self.multi_modal_projector(patch_features.index_select(0, rows), group_memory, side)
            for index, tokens in zip(indices, projected):
                features[index] = tokens
        return features

    def projector_parts(self) -> list[nn.Module]:
        """The modules of `PROJECTOR_MODULES` this model has."""
        return [getattr(self, name) for name in PROJECTOR_MODULES if hasattr(self, name)]

    def project_extra_tokens(self, tokens: torch.Tensor, role: str) -> torch.Tensor:
        """
        Object or global tokens (I, K, C) -> (I, K, D) through the projector. Under FSDP2 the projector is a unit of its
        own, gathered only around its forward: this method is registered as a second forward (once), so it is
        gathered here too and its gradients are reduced.
        """
        projector = self.multi_modal_projector
        if isinstance(projector, FSDPModule) and "project_extra_tokens" not in vars(projector):
            register_fsdp_forward_method(projector, "project_extra_tokens")
        return projector.project_extra_tokens(tokens, role)

    def get_placeholder_mask(self, input_ids: torch.LongTensor | None, inputs_embeds: torch.FloatTensor) -> torch.BoolTensor:
        """(B, T) positions of the `<image>` placeholders."""
        if input_ids is not None:
            return input_ids == self.config.image_token_id
        image_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == image_embedding).all(dim=-1)

    def placeholder_mismatch(
        self, num_placeholders: int, num_features: int, num_images: int, num_visual_tokens: int | None, has_objects: bool
    ) -> str:
        """The error message for placeholders that do not match the image features, naming both budgets when it can."""
        budget = self.config.num_visual_tokens if num_visual_tokens is None else num_visual_tokens
        message = (
            f"The text has {num_placeholders} image placeholder tokens but the {num_images} image(s) produce "
            f"{num_features} features at num_visual_tokens={budget}."
        )
        written = num_placeholders // num_images - int(self.config.use_global_token)
        if not has_objects and num_placeholders % num_images == 0 and written in self.config.allowed_visual_token_counts():
            message += (
                f" The placeholders were written for num_visual_tokens={written} per image, but the model was called "
                f"with num_visual_tokens={budget}: pass the processor's budget to the model (e.g. "
                f"`model.generate(**inputs, num_visual_tokens={written})`)."
            )
        else:
            message += " Build inputs with the processor using the num_visual_tokens / max_object_tokens you pass to the model."
        return message

    def reconcile_budgets(
        self, num_visual_tokens: int | None, visual_token_budget: int | torch.Tensor | None, num_images: int
    ) -> list[int]:
        """The budget of each image: the call's `num_visual_tokens`, else the one the processor wrote placeholders for
        (`visual_token_budget` in its output: one int, or one per image), else the config's. A call that asks for
        another budget than the processor's fails."""
        if visual_token_budget is None:
            budget = self.config.num_visual_tokens if num_visual_tokens is None else num_visual_tokens
            return [budget] * num_images
        written = torch.as_tensor(visual_token_budget).flatten().tolist()
        if len(written) == 1:
            written = written * num_images
        if len(written) != num_images:
            raise ValueError(
                f"visual_token_budget holds {len(written)} budgets for {num_images} images: pass the processor's output "
                "for these images unchanged (one budget per image)."
            )
        if num_visual_tokens is not None and any(budget != num_visual_tokens for budget in written):
            raise ValueError(
                f"The processor wrote image placeholders for num_visual_tokens={'/'.join(map(str, sorted(set(written))))} but the model was "
                f"called with num_visual_tokens={num_visual_tokens}. Pass the same budget to both (or drop it from the "
                "model call: the model then uses the processor's)."
            )
        return written

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        num_visual_tokens: int | None = None,
        object_masks: torch.FloatTensor | None = None,
        max_object_tokens: int | None = None,
        visual_token_budget: int | torch.Tensor | None = None,
        object_embeddings: torch.FloatTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DeltaLlavaModelOutputWithPast:
        """
        Without `pixel_values`, image placeholders in the text are ordinary tokens (their own embedding), as in
        transformers' Llava: a text-only prompt that contains the image token stays usable, e.g. as an assistant
        model's prefill in assisted decoding, where the assistant sees the ids but not the images.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            check_input_ids(input_ids, self.get_input_embeddings().num_embeddings, self.config.image_token_id)
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = None
        if pixel_values is not None:
            image_outputs = self.get_image_features(
                pixel_values,
                num_visual_tokens,
                object_masks,
                max_object_tokens,
                visual_token_budget=visual_token_budget,
                object_embeddings=object_embeddings,
                return_dict=True,
            )
            image_features = torch.cat(image_outputs.pooler_output).to(inputs_embeds.device, inputs_embeds.dtype)
            placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds)
            torch_compilable_check(  # a hint instead of a graph break under torch.compile
                placeholder_mask.sum() == image_features.shape[0],
                lambda: self.placeholder_mismatch(
                    int(placeholder_mask.sum()), image_features.shape[0], pixel_values.shape[0], num_visual_tokens,
                    (object_masks is not None or object_embeddings is not None) and self.config.use_object_tokens,
                ),
            )
            inputs_embeds = inputs_embeds.masked_scatter(placeholder_mask.unsqueeze(-1), image_features)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        return DeltaLlavaModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


class DeltaLlavaForConditionalGeneration(DeltaLlavaPreTrainedModel, GenerationMixin):
    """Delta-LLaVA with a language modeling head: training with `labels` and `generate`."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: DeltaLlavaConfig):
        super().__init__(config)
        self.model = DeltaLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.model.register_forward_hook(self._gather_sharded_lm_head)
        self.post_init()

    def _gather_sharded_lm_head(self, *unused) -> None:
        """
        Under FSDP2, accelerate makes `lm_head` a unit of its own, gathered only when it runs. TRL's fused loss reads
        `lm_head.weight` without running it, so each rank would update its slice with its own local gradient.
        Gathering it once the backbone has run makes the weight whole, and FSDP then reduces its gradient.
        """
        if isinstance(self.lm_head, FSDPModule):
            self.lm_head.unshard()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        num_visual_tokens: int | None = None,
        object_masks: torch.FloatTensor | None = None,
        max_object_tokens: int | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """See [`DeltaLlavaModel.get_image_features`]."""
        return self.model.get_image_features(pixel_values, num_visual_tokens, object_masks, max_object_tokens, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        num_visual_tokens: int | None = None,
        object_masks: torch.FloatTensor | None = None,
        max_object_tokens: int | None = None,
        visual_token_budget: int | torch.Tensor | None = None,
        object_embeddings: torch.FloatTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> DeltaLlavaCausalLMOutputWithPast:
        """`labels` (B, T) use -100 on positions without loss (prompt, padding, image placeholders)."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            num_visual_tokens=num_visual_tokens,
            object_masks=object_masks,
            max_object_tokens=max_object_tokens,
            visual_token_budget=visual_token_budget,
            object_embeddings=object_embeddings,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs)
        return DeltaLlavaCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        object_masks: torch.FloatTensor | None = None,
        object_embeddings: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        """Images (and their masks) are read once, at prefill; cached decoding steps only see new text tokens. The
        arguments are named so that `generate(inputs_embeds=..., pixel_values=...)` reaches them."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["pixel_values"] = pixel_values
            model_inputs["object_masks"] = object_masks
            model_inputs["object_embeddings"] = object_embeddings
        return model_inputs


DeltaLlavaConfig.register_for_auto_class()
DeltaLlavaModel.register_for_auto_class("AutoModel")
DeltaLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["DeltaLlavaPreTrainedModel", "DeltaLlavaModel", "DeltaLlavaForConditionalGeneration"]
