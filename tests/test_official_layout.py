"""The official layout against the authors' own module: their weights, their inputs, their outputs, at every budget."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from delta_llava import DeltaLlavaConfig, convert_official_projector_weights
from delta_llava.modeling_delta_llava import build_projector
from delta_llava.projector_delta_official import OfficialDeltaProjector

FIXTURES = Path(__file__).parent / "fixtures" / "official_delta_projector"
sys.path.insert(0, str(FIXTURES))
import fill  # noqa: E402  (the fixture's deterministic weights and inputs)

STATE_DICT_SHAPES = json.loads((FIXTURES / "reference.json").read_text())["state_dict_shapes"]


def paper_size_config(num_visual_tokens: int = 16) -> DeltaLlavaConfig:
    """CLIP ViT-L/14-336 and a 4096-wide LLM, every projector field at the official layout's default."""
    return DeltaLlavaConfig(text_config={"model_type": "llama", "hidden_size": 4096}, num_visual_tokens=num_visual_tokens)


@pytest.fixture(scope="module")
def authors_weights():
    return fill.fill_state_dict(STATE_DICT_SHAPES)


@pytest.fixture(scope="module")
def projector(authors_weights):
    module = build_projector(paper_size_config()).eval()
    module.load_state_dict(convert_official_projector_weights(authors_weights), strict=True)
    return module


def run(projector, query_side: int) -> torch.Tensor:
    single, multi = fill.inputs(batch=2)
    memory = multi.view(2, 576, 4, 1024).permute(0, 2, 1, 3)  # (B, L, G*G, C): the levels the authors concatenate
    with torch.no_grad():
        return projector(single, memory, query_side)


def test_default_config_is_the_authors_module():
    config = paper_size_config()
    assert config.delta_layout == "official"
    assert (config.delta_rank, config.projector_hidden_size, config.projector_head_dim) == (16, 1024, 128)
    assert (config.ntb_head_dim, config.drop_path_rate, config.window_size, config.spatial_reduction) == (32, 0.1, 1, 1)
    assert config.memory_layers == [12, 16, 22, 23] and config.vision_feature_layer == -2
    projector = build_projector(config)
    assert isinstance(projector, OfficialDeltaProjector)
    assert sum(p.numel() for p in projector.parameters()) == sum(
        torch.Size(shape).numel() for shape in STATE_DICT_SHAPES.values()
    )  # 42,503,680: the same parameters, none added or lost


def test_sixteen_tokens_match_the_authors_output(projector):
    expected = load_file(FIXTURES / "reference_outputs.safetensors")["scale6.output"]
    output = run(projector, query_side=4)
    assert output.shape == (2, 16, 4096)
    assert (output - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("scale_factor", [1, 2, 4, 24])
def test_other_budgets_match_the_authors_output(projector, scale_factor):
    expected = load_file(FIXTURES / "more_budgets.safetensors")
    output = run(projector, query_side=24 // scale_factor)
    assert output.shape == (2, (24 // scale_factor) ** 2, 4096)
    first_rows = expected[f"scale{scale_factor}.first_rows"]
    assert (output[:, : first_rows.shape[1]] - first_rows).abs().max() <= 1e-4
    assert (fill.readout(output) - expected[f"scale{scale_factor}.readout"]).abs().max() <= 1e-4


@pytest.mark.parametrize("prefix", ["", "model.mm_projector.", "mm_projector."])
def test_conversion_accepts_the_checkpoint_prefixes(authors_weights, prefix):
    converted = convert_official_projector_weights({prefix + name: t for name, t in authors_weights.items()})
    assert set(converted) == set(build_projector(paper_size_config()).state_dict())


def test_conversion_ignores_the_rest_of_a_stage_two_state_dict(authors_weights):
    state = {f"model.mm_projector.{name}": t for name, t in authors_weights.items()}
    state["model.embed_tokens.weight"] = torch.zeros(3, 4)
    # 45 tensors: E-MHSA key + value merge into one map (-2), the packed attention input map splits in three (+4)
    assert len(convert_official_projector_weights(state)) == 47


def test_conversion_names_missing_and_unknown_tensors(authors_weights):
    broken = dict(authors_weights)
    del broken["k_proj_1.U"]
    broken["k_proj_2.U"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"missing \['k_proj_1.U'\], unknown \['k_proj_2.U'\]"):
        convert_official_projector_weights(broken)


def test_a_wrongly_shaped_projector_refuses_the_weights(authors_weights):
    narrow = build_projector(
        DeltaLlavaConfig(text_config={"model_type": "llama", "hidden_size": 2048}, num_visual_tokens=16)
    )
    with pytest.raises(RuntimeError, match=r"output_mlp.0.weight.*torch.Size\(\[4096, 1024\]\).*torch.Size\(\[2048, 1024\]\)"):
        narrow.load_state_dict(convert_official_projector_weights(authors_weights), strict=True)
