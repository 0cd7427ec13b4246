"""MaskInversion on transformers' CLIP reproduces the reference packages (maskinversion-torch 1.1, legrad-torch 1.1)
number for number, leaves the model as it found it, and refuses bad input."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

from delta_llava.processing import MaskInversion

FIXTURE = Path(__file__).parent / "fixtures" / "maskinversion" / "reference_example.safetensors"
# open_clip's names (the reference's tower) -> CLIPVisionModelWithProjection's, per layer and outside the layers
LAYER_NAMES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
               "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}  # fmt: skip


def reference_tower(reference: dict) -> CLIPVisionModelWithProjection:
    """The fixture's float64 tower (64 px, 8 px patches, width 64, 3 layers, 4 heads, QuickGELU, embeddings of 32)."""
    config = CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, image_size=64, patch_size=8,
        projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    visual = {name.removeprefix("visual."): tensor for name, tensor in reference.items() if name.startswith("visual.")}
    state = {
        "vision_model.embeddings.patch_embedding.weight": visual["conv1.weight"],
        "vision_model.embeddings.class_embedding": visual["class_embedding"],
        "vision_model.embeddings.position_embedding.weight": visual["positional_embedding"],
        "visual_projection.weight": visual["proj"].T,
    }
    for part in ("weight", "bias"):
        state[f"vision_model.pre_layrnorm.{part}"] = visual[f"ln_pre.{part}"]
        state[f"vision_model.post_layernorm.{part}"] = visual[f"ln_post.{part}"]
        for layer in range(config.num_hidden_layers):
            theirs, ours = f"transformer.resblocks.{layer}.", f"vision_model.encoder.layers.{layer}."
            for their_name, our_name in LAYER_NAMES.items():
                state[f"{ours}{our_name}.{part}"] = visual[f"{theirs}{their_name}.{part}"]
            for chunk, projection in zip(visual[f"{theirs}attn.in_proj_{part}"].chunk(3), ("q_proj", "k_proj", "v_proj")):
                state[f"{ours}self_attn.{projection}.{part}"] = chunk
    model = CLIPVisionModelWithProjection(config).double()
    model.load_state_dict(state, strict=True)
    return model


@pytest.fixture(scope="module")
def reference() -> dict:
    return load_file(FIXTURE)


@pytest.fixture
def tower(reference) -> CLIPVisionModelWithProjection:
    return reference_tower(reference)


def test_the_reference_example_number_for_number(tower, reference):
    inverter = MaskInversion(tower, layer_index=-1, iterations=10, lr=0.5, alpha=0.0, weight_decay=0.0)
    with torch.no_grad():
        torch.testing.assert_close(tower(pixel_values=reference["image"]).image_embeds, reference["image_embedding"])
    start = inverter.explainability_maps(reference["image"], reference["image_embedding"].repeat(3, 1))
    torch.testing.assert_close(start, reference["start_explainability_map"], rtol=0, atol=1e-5)
    embeddings, final_maps = inverter(reference["image"], reference["masks"], return_explainability_maps=True)
    assert embeddings.dtype == torch.float64 and embeddings.shape == (3, 32)
    torch.testing.assert_close(embeddings, reference["mask_embeddings"], rtol=0, atol=1e-5)
    torch.testing.assert_close(final_maps, reference["final_explainability_map"], rtol=0, atol=1e-5)


def test_the_model_is_left_as_it_was_found(tower, reference):
    tower.set_attn_implementation("sdpa")
    tower.train()
    tower.visual_projection.requires_grad_(False)
    before = {name: parameter.detach().clone() for name, parameter in tower.named_parameters()}
    flags = {name: parameter.requires_grad for name, parameter in tower.named_parameters()}
    MaskInversion(tower, iterations=2)(reference["image"], reference["masks"])
    assert tower.config._attn_implementation == "sdpa" and tower.training
    assert {name: parameter.requires_grad for name, parameter in tower.named_parameters()} == flags
    for name, parameter in tower.named_parameters():
        assert torch.equal(parameter, before[name]) and parameter.grad is None, name


def test_more_layers_and_the_regulariser_and_weight_decay_change_what_they_should(tower, reference):
    """No reference output exists for these settings (the fixture holds the package's own example only): checked by
    what each setting must do."""
    image, masks = reference["image"], reference["masks"]
    plain = MaskInversion(tower, iterations=5)(image, masks)
    all_layers = MaskInversion(tower, layer_index=0, iterations=5)(image, masks)
    assert not torch.allclose(all_layers, plain)
    image_direction = torch.nn.functional.normalize(reference["image_embedding"], dim=-1)

    def closeness(embeddings):
        return (torch.nn.functional.normalize(embeddings, dim=-1) * image_direction).sum(-1)

    held = MaskInversion(tower, iterations=5, alpha=50.0)(image, masks)
    assert (closeness(held) > closeness(plain)).all()  # alpha keeps each embedding's direction nearer the image's
    decayed = MaskInversion(tower, iterations=5, weight_decay=0.5)(image, masks)
    assert (decayed.norm(dim=-1) < plain.norm(dim=-1)).all()  # AdamW's decoupled decay shrinks the embeddings


def test_float32_runs_in_the_models_dtype(tower, reference):
    tower32 = tower.float()
    embeddings, maps = MaskInversion(tower32, iterations=2)(reference["image"].float(), reference["masks"], True)
    assert embeddings.dtype == maps.dtype == torch.float32 and maps.shape == (1, 3, 64, 64)
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1


def test_bad_input_is_refused_with_the_fix(tower, reference):
    image, masks = reference["image"], reference["masks"]
    with pytest.raises(TypeError, match="CLIPVisionModelWithProjection"):
        MaskInversion(CLIPVisionModel(tower.config))
    with pytest.raises(ValueError, match="iterations=0 must be an integer >= 1"):
        MaskInversion(tower, iterations=0)
    with pytest.raises(ValueError, match="layer_index=5 is outside"):
        MaskInversion(tower, layer_index=5)
    inverter = MaskInversion(tower, iterations=1)
    with pytest.raises(ValueError, match=r"at the image's size \(64, 64\)"):
        inverter(image, masks[:, :32, :32])
    empty = masks.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"masks \[1\] are all zero"):
        inverter(image, empty)
    with pytest.raises(ValueError, match="NaN or infinite"):
        inverter(image.clone().fill_(float("nan")), masks)
    with pytest.raises(ValueError, match=r"one image \(1, 3, H, W\)"):
        inverter(image.repeat(2, 1, 1, 1), masks)
