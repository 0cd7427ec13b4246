"""MaskInversion (Bousselham et al.): one embedding per mask, optimised so that its LeGrad explainability map over the
image matches the mask — the object features of Mask-LLaVA — on transformers' `CLIPVisionModelWithProjection`.

LeGrad's map for an embedding t and an image: for every layer l from `layer_index` to the last, the layer's output
tokens are averaged, passed through the tower's final LayerNorm and projection and normalised (f_l); the gradient of
<t, f_l> with respect to layer l's attention probabilities is clamped at 0, averaged over heads and queries, its
class-token column dropped, reshaped to the patch grid and upsampled bilinearly by the patch size; the layers' maps
are summed and each map is min-max normalised. MaskInversion starts every mask's embedding at the image embedding and
takes `iterations` AdamW steps on the mean Dice loss (smoothing 1) between each map and its mask, plus `alpha` times
the mean of 1 - cos(image embedding, embedding); the loss is differentiated through the map (second order).
Reference: PyPI `maskinversion-torch` 1.1 / `legrad-torch` 1.1 on open_clip, reproduced number for number
(tests/test_mask_inversion.py).
"""

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import CLIPVisionModelWithProjection

DICE_SMOOTHING = 1.0


def dice_loss(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """maps, masks (N, H, W) -> the mean over masks of 1 - (2 |p m| + 1) / (|p| + |m| + 1)."""
    maps, masks = maps.flatten(1), masks.flatten(1)
    overlap = (maps * masks).sum(-1)
    return (1 - (2 * overlap + DICE_SMOOTHING) / (maps.sum(-1) + masks.sum(-1) + DICE_SMOOTHING)).mean()


def min_max_normalise(maps: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> each map rescaled to [0, 1]."""
    flat = maps.flatten(-2)
    low, high = flat.min(-1).values[..., None, None], flat.max(-1).values[..., None, None]
    return (maps - low) / (high - low)


@dataclass
class TowerRecord:
    """What one tower run keeps for LeGrad: the image embeddings, and per layer its output and attention maps."""

    image_embeds: torch.Tensor | None = None
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)


class MaskInversion:
    """
    `MaskInversion(model)(pixel_values (1, 3, H, W), masks (N, H, W))` -> the N localized embeddings (N, E), not
    normalised; with `return_explainability_maps=True` also the maps (1, N, H, W) of the last iteration (before its
    optimizer step). `explainability_maps(pixel_values, embeddings (N, E))` -> LeGrad's maps (1, N, H, W) for those
    embeddings (normalised inside). Runs in the model's dtype and device; the model is left as found (parameters and
    their `requires_grad`, attention implementation, train/eval mode).

    Args:
        model: a transformers `CLIPVisionModelWithProjection` (its `visual_projection` maps into the joint space).
        layer_index: first layer whose map is summed, counted from the end when negative (-1: the last layer only).
        iterations: AdamW steps (at least 1).
        lr, weight_decay: AdamW's settings.
        alpha: weight of the term that keeps each embedding's direction near the image embedding's.
    """

    def __init__(
        self,
        model: CLIPVisionModelWithProjection,
        layer_index: int = -1,
        iterations: int = 10,
        lr: float = 0.5,
        alpha: float = 0.0,
        weight_decay: float = 0.0,
    ):
        if not isinstance(model, CLIPVisionModelWithProjection):
            raise TypeError(
                f"MaskInversion needs a transformers CLIPVisionModelWithProjection (a CLIP tower with its projection "
                f"into the joint image-text space), got {type(model).__name__}. Load one with "
                "`CLIPVisionModelWithProjection.from_pretrained('openai/clip-vit-large-patch14-336')`."
            )
        depth = model.config.num_hidden_layers
        if not -depth <= layer_index < depth:
            raise ValueError(f"layer_index={layer_index} is outside the tower's {depth} layers (use -{depth} to {depth - 1}).")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations={iterations!r} must be an integer >= 1 (the optimisation steps per image).")
        self.model = model
        self.first_layer = layer_index % depth
        self.iterations, self.lr, self.alpha, self.weight_decay = iterations, lr, alpha, weight_decay

    @classmethod
    def from_config(cls, config, device: str | torch.device | None = None) -> "MaskInversion":
        """The inverter a Delta-LLaVA config with `object_features="mask_inversion"` was trained with: the CLIP tower
        of `config.mask_inversion["source"]` (a Hub id or folder) and the recorded settings."""
        settings = dict(getattr(config, "mask_inversion", None) or {})
        source = settings.pop("source", None)
        if getattr(config, "object_features", None) != "mask_inversion" or source is None:
            raise ValueError(
                "This config has no MaskInversion object features to reproduce: it needs "
                "object_features='mask_inversion' and mask_inversion['source'] naming the CLIP checkpoint (e.g. "
                "'openai/clip-vit-large-patch14-336'); set `config.mask_inversion['source']` and save the model again."
            )
        tower = CLIPVisionModelWithProjection.from_pretrained(source)
        return cls(tower.to(device) if device is not None else tower, **settings)

    def __call__(
        self, pixel_values: torch.Tensor, masks: torch.Tensor, return_explainability_maps: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        masks = self.check_inputs(pixel_values, masks)
        with self.prepared_model():
            pixel_values, masks = pixel_values.clone(), masks.clone()  # ordinary tensors, even from inference mode
            tower = self.forward_copies(pixel_values, len(masks))
            image_embeddings = tower.image_embeds.detach()  # (N, E), one per copy of the image
            embeddings = image_embeddings.clone().requires_grad_(True)
            optimizer = torch.optim.AdamW([embeddings], lr=self.lr, weight_decay=self.weight_decay)
            for _ in range(self.iterations):
                directions = F.normalize(embeddings, dim=-1)
                maps = self.legrad(tower, directions)  # (1, N, H, W), differentiable in the embeddings
                similarity = (F.normalize(image_embeddings, dim=-1) * directions).sum(-1)
                loss = dice_loss(maps[0], masks) + self.alpha * (1 - similarity).mean()
                (embeddings.grad,) = torch.autograd.grad(loss, [embeddings], retain_graph=True)
                optimizer.step()
        embeddings, maps = embeddings.detach(), maps.detach()
        return (embeddings, maps) if return_explainability_maps else embeddings

    def explainability_maps(self, pixel_values: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """pixel_values (1, 3, H, W), embeddings (N, E) -> LeGrad's maps (1, N, H, W) in [0, 1]."""
        self.check_inputs(pixel_values, None)
        if embeddings.dim() != 2 or embeddings.shape[1] != self.model.config.projection_dim:
            raise ValueError(
                f"embeddings must be (N, {self.model.config.projection_dim}), one per map; got {tuple(embeddings.shape)}."
            )
        with self.prepared_model():
            tower = self.forward_copies(pixel_values.clone(), len(embeddings))
            directions = F.normalize(embeddings.clone().to(self.model.device, self.model.dtype), dim=-1)
            return self.legrad(tower, directions).detach()

    def forward_copies(self, pixel_values: torch.Tensor, count: int) -> "TowerRecord":
        """The tower on the image, then on `count` copies of it from layer `layer_index` on: the layers before it run
        once, without a graph; the hidden state entering the first kept layer is copied `count` times and marked as
        requiring grad (no parameter is touched), and only the kept layers' outputs and attention maps are recorded."""
        layers = self.model.vision_model.encoder.layers
        record = TowerRecord()

        def start_graph(module, args):
            return (args[0].detach().expand(count, -1, -1).clone().requires_grad_(True), *args[1:])

        def keep_output(index):
            def hook(module, args, output):
                record.hidden_states[index] = output[0] if isinstance(output, tuple) else output

            return hook

        def keep_attention(index):
            def hook(module, args, output):
                record.attentions[index] = output[1]  # eager attention returns its probabilities

            return hook

        handles = [layers[self.first_layer].register_forward_pre_hook(start_graph)]
        for index in range(self.first_layer, len(layers)):
            handles.append(layers[index].register_forward_hook(keep_output(index)))
            handles.append(layers[index].self_attn.register_forward_hook(keep_attention(index)))
        try:
            record.image_embeds = self.model(pixel_values=pixel_values.to(self.model.device, self.model.dtype)).image_embeds
        finally:
            for handle in handles:
                handle.remove()
        return record

    def legrad(self, tower: "TowerRecord", directions: torch.Tensor) -> torch.Tensor:
        """directions (N, E), unit vectors -> (1, N, H, W): LeGrad's maps of copy n for direction n."""
        vision, patch = self.model.vision_model, self.model.config.patch_size
        total = 0
        for layer in range(self.first_layer, self.model.config.num_hidden_layers):
            pooled = vision.post_layernorm(tower.hidden_states[layer].mean(dim=1))
            features = F.normalize(self.model.visual_projection(pooled), dim=-1)  # (N, E)
            score = (directions * features).sum()  # copy n scored against direction n only
            attention = tower.attentions[layer]  # (N, heads, 1 + g*g, 1 + g*g)
            (gradient,) = torch.autograd.grad(score, [attention], retain_graph=True, create_graph=True)
            relevance = gradient.clamp(min=0).mean(dim=1).mean(dim=1)[:, 1:]  # (N, g*g), the class-token key dropped
            side = int(relevance.shape[1] ** 0.5)
            grid = relevance.reshape(1, -1, side, side)
            total = total + F.interpolate(grid, scale_factor=patch, mode="bilinear")
        return min_max_normalise(total)

    def check_inputs(self, pixel_values: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor | None:
        """pixel_values must be one finite image (1, 3, H, W); masks (N, H, W) of the image's size, none empty."""
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or pixel_values.shape[:2] != (1, 3):
            got = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be one image (1, 3, H, W), as the CLIP processor returns it; got {got}.")
        if not torch.isfinite(pixel_values).all():
            raise ValueError("pixel_values holds NaN or infinite values; check the image loading and normalisation.")
        if masks is None:
            return None
        if not isinstance(masks, torch.Tensor) or masks.dim() != 3 or masks.shape[1:] != pixel_values.shape[2:]:
            got = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise ValueError(
                f"masks must be (N, H, W) at the image's size {tuple(pixel_values.shape[2:])}, got {got}: resize them "
                "the way the image was resized (nearest neighbour for 0/1 masks)."
            )
        empty = [index for index, mask in enumerate(masks) if not mask.any()]
        if empty:
            raise ValueError(f"masks {empty} are all zero: an empty mask has no region to explain. Drop them first.")
        return masks.to(device=self.model.device, dtype=self.model.dtype)

    @contextmanager
    def prepared_model(self):
        """Autograd on (also inside `torch.no_grad` / `torch.inference_mode`, e.g. an evaluation loop), eager attention
        (its probabilities are what LeGrad differentiates), eval mode and frozen parameters for the duration of a
        call; the model's own settings are restored after, even on an error."""
        model = self.model
        attention, training = model.config._attn_implementation, model.training
        flags = [parameter.requires_grad for parameter in model.parameters()]
        model.set_attn_implementation("eager")
        model.eval().requires_grad_(False)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                yield
        finally:
            model.set_attn_implementation(attention)
            model.train(training)
            for parameter, flag in zip(model.parameters(), flags):
                parameter.requires_grad_(flag)
