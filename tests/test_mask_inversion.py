"""MaskInversion on transformers' CLIP reproduces the reference packages (maskinversion-torch 1.1, legrad-torch 1.1)
number for number, leaves the model as it found it, and refuses bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

from delta_llava.processing import DeltaLlavaProcessor, MaskInversion
from mask_inversion_setup import EMBEDDING_WIDTH, clip_image_processor, masks_dataset, tiny_clip

FIXTURES = Path(__file__).parent / "fixtures" / "maskinversion"
FIXTURE = FIXTURES / "reference_example.safetensors"
# The package's own example, and two more settings written by the same script (see the fixtures' README)
REFERENCE_CASES = ["example", "all_layers_reg", "two_layers"]
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


@pytest.mark.parametrize("case", REFERENCE_CASES)
def test_the_reference_number_for_number(case):
    path = FIXTURES / f"reference_{case}.safetensors"
    reference = load_file(path)
    with safe_open(path, framework="pt") as file:
        settings = json.loads(file.metadata()["settings"])
    tower = reference_tower(reference)
    inverter = MaskInversion(
        tower, layer_index=settings["layer_index"], iterations=settings["iterations"], lr=settings["lr"],
        alpha=settings["alpha"], weight_decay=settings["wd"],
    )  # fmt: skip
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
    """Beside the reference outputs: each setting does what it must, with strengths the fixtures do not use."""
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


# ---------------------------------------------------------------- object tokens from MaskInversion embeddings


def inversion_config(**overrides):
    from conftest import tiny_config

    return tiny_config(**{"use_object_tokens": True, "object_features": "mask_inversion", "object_embedding_dim": 16, **overrides})


def test_the_config_records_the_method_its_width_and_settings():
    from conftest import tiny_config

    assert tiny_config().object_features == "mask_pooling" and tiny_config().mask_inversion is None
    config = inversion_config(mask_inversion={"source": "openai/clip-vit-large-patch14-336", "iterations": 5})
    assert config.mask_inversion == {"source": "openai/clip-vit-large-patch14-336", "layer_index": -1, "iterations": 5,
                                     "lr": 0.5, "alpha": 0.0, "weight_decay": 0.0}  # fmt: skip
    with pytest.raises(ValueError, match="object_features='mask_averaging' is unknown"):
        tiny_config(object_features="mask_averaging")
    with pytest.raises(ValueError, match="set object_features='mask_inversion'"):
        tiny_config(object_embedding_dim=16)
    with pytest.raises(ValueError, match=r"unknown settings \['steps'\]"):
        inversion_config(mask_inversion={"steps": 3})


def test_the_model_takes_embeddings_drops_them_at_test_time_and_refuses_masks():
    from conftest import TINY_IMAGE_TOKEN_ID
    from delta_llava import DeltaLlavaForConditionalGeneration

    torch.manual_seed(0)
    model = DeltaLlavaForConditionalGeneration(inversion_config()).eval()
    pixels = torch.randn(2, 3, 48, 48)
    embeddings = torch.randn(2, 3, 16)
    embeddings[1, 2] = 0  # the second image has two objects
    with torch.no_grad():
        features = model.get_image_features(pixels, object_embeddings=embeddings).pooler_output
        capped = model.get_image_features(pixels, object_embeddings=embeddings, max_object_tokens=1).pooler_output
        none = model.get_image_features(pixels).pooler_output
    assert [len(f) for f in features] == [16 + 3, 16 + 2] and [len(f) for f in capped] == [17, 17]
    assert [len(f) for f in none] == [16, 16]
    torch.testing.assert_close(capped[0], features[0][:17])  # dropping objects leaves the other tokens unchanged
    with pytest.raises(ValueError, match="not both"):
        model.get_image_features(pixels, object_masks=torch.ones(2, 1, 48, 48), object_embeddings=embeddings)
    with pytest.raises(ValueError, match="pass object_embeddings"):
        model.get_image_features(pixels, object_masks=torch.ones(2, 1, 48, 48))
    with pytest.raises(ValueError, match=r"\(I, K, 16\)"):
        model.get_image_features(pixels, object_embeddings=torch.randn(2, 3, 8))
    input_ids = torch.tensor([[1, 5] + [TINY_IMAGE_TOKEN_ID] * 19 + [7]])
    with torch.no_grad():
        assert model(input_ids=input_ids, pixel_values=pixels[:1], object_embeddings=embeddings[:1]).logits.shape[1] == 22
    pooling = DeltaLlavaForConditionalGeneration(inversion_config(object_features="mask_pooling", object_embedding_dim=None))
    with pytest.raises(ValueError, match="pools its object tokens from masks"):
        pooling.get_image_features(pixels, object_embeddings=embeddings)


def test_the_processor_inverts_the_masks_of_raw_images_for_generate():
    from transformers import CLIPImageProcessor

    from delta_llava import DeltaLlavaForConditionalGeneration
    from delta_llava.training.local_tokenizer import build_word_level_tokenizer

    tokenizer = build_word_level_tokenizer(["what", "is", "it"])
    torch.manual_seed(0)
    model = DeltaLlavaForConditionalGeneration(inversion_config(image_token_id=tokenizer.image_token_id)).eval()
    clip = tiny_clip(image_size=48)  # the tiny Delta-LLaVA tower's image size
    inverter = MaskInversion(clip, iterations=2)
    processor_images = CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    processor = DeltaLlavaProcessor(processor_images, tokenizer, num_visual_tokens=16, use_object_tokens=True, mask_size=24)
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    masks = np.zeros((2, 48, 48), dtype=bool)
    masks[0, :20, :20], masks[1, 24:, 10:40] = True, True
    inputs = processor(images=[image], text="<image> what is it", object_masks=[masks], object_mask_inverter=inverter)
    assert "object_masks" not in inputs and inputs["object_embeddings"].shape == (1, 2, 16)
    torch.testing.assert_close(inputs["object_embeddings"][0], inverter(inputs["pixel_values"], torch.as_tensor(masks).float()))
    assert (inputs["input_ids"] == tokenizer.image_token_id).sum() == 16 + 2
    assert model.generate(**inputs, max_new_tokens=2, do_sample=False).shape[1] == inputs["input_ids"].shape[1] + 2
    with pytest.raises(ValueError, match="pass `object_masks` or `object_mask_extractor` too"):
        processor(images=[image], text="<image> what is it", object_mask_inverter=inverter)


def test_precomputed_embeddings_are_each_images_inversion_and_come_from_the_cache(tmp_path):
    from delta_llava.processing.object_mask_inputs import masks_to_model_input
    from delta_llava.processing.precompute_object_embeddings import precompute_object_embeddings

    calls = []

    class CountingInversion(MaskInversion):
        def __call__(self, pixel_values, masks, return_explainability_maps=False):
            calls.append(len(masks))
            return super().__call__(pixel_values, masks, return_explainability_maps)

    clip, image_processor = tiny_clip(), clip_image_processor()
    inverter = CountingInversion(clip, iterations=2)
    dataset = masks_dataset([2, 0, 3])  # the second image has no mask at all
    cache = str(tmp_path / "embeddings.arrow")
    result = precompute_object_embeddings(dataset, inverter, image_processor, cache_file_name=cache)
    assert calls == [2, 3]  # one inversion per image with masks, all its masks at once
    assert [np.asarray(row[0]).reshape(-1, EMBEDDING_WIDTH).shape for row in result["object_embeddings"]] == [
        (2, EMBEDDING_WIDTH), (0, EMBEDDING_WIDTH), (3, EMBEDDING_WIDTH)
    ]  # fmt: skip
    pixel_values = image_processor(dataset[2]["images"][0], return_tensors="pt")["pixel_values"]
    masks = masks_to_model_input([np.asarray(dataset[2]["object_masks"][0], dtype=np.uint8)], pixel_values.shape[-1])
    expected = MaskInversion(clip, iterations=2)(pixel_values, masks[0, :3])
    stored = torch.tensor(np.asarray(result["object_embeddings"][2][0]), dtype=torch.float32)
    torch.testing.assert_close(stored, expected.float())
    precompute_object_embeddings(dataset, inverter, image_processor, cache_file_name=cache)
    assert calls == [2, 3]  # the second run read the cache
    with pytest.raises(ValueError, match="Run `precompute_object_masks` first"):
        precompute_object_embeddings(dataset.remove_columns("object_masks"), inverter, image_processor)


def test_a_killed_precompute_leaves_no_cache_and_a_rerun_computes_every_row(tmp_path):
    from delta_llava.processing.precompute_object_embeddings import precompute_object_embeddings

    cache = tmp_path / "embeddings.arrow"
    script = Path(__file__).with_name("killed_precompute_script.py")
    run = subprocess.run([sys.executable, str(script), str(cache)], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})  # fmt: skip
    assert run.returncode == -9, run.stderr[-2000:]
    assert not cache.exists()  # datasets writes a temporary file and renames it only when the map completes
    result = precompute_object_embeddings(masks_dataset([2, 1, 3, 2]), MaskInversion(tiny_clip(), iterations=1),
                                          clip_image_processor(), batch_size=1, cache_file_name=str(cache))  # fmt: skip
    assert cache.exists() and [np.asarray(row[0]).shape[0] for row in result["object_embeddings"]] == [2, 1, 3, 2]
