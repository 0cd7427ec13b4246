"""The two delta layouts side by side: what each computes, what each ablation switch means, and old checkpoints."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import DELTA_LAYOUTS, tiny_config
from delta_llava import DeltaLlavaConfig, DeltaLlavaForConditionalGeneration
from delta_llava.projector_delta import DeltaProjector
from delta_llava.projector_delta_official import OfficialDeltaProjector, PointToRegionAttention
from delta_llava.windowed_cross_attention import order_by_window_position

LEGACY_CHECKPOINT = Path(__file__).parent / "fixtures" / "shared_base_checkpoint_v0"


def official_projector(**overrides) -> OfficialDeltaProjector:
    """An initialised official-layout projector of the tiny config."""
    projector = DeltaLlavaForConditionalGeneration(tiny_config(**overrides)).model.multi_modal_projector
    assert isinstance(projector, OfficialDeltaProjector)
    return projector


def test_a_checkpoint_saved_before_the_layouts_loads_as_shared_base_with_the_same_logits():
    assert "delta_layout" not in (LEGACY_CHECKPOINT / "config.json").read_text()
    model = DeltaLlavaForConditionalGeneration.from_pretrained(LEGACY_CHECKPOINT).eval()
    assert model.config.delta_layout == "shared_base"
    assert isinstance(model.model.multi_modal_projector, DeltaProjector)
    saved = load_file(LEGACY_CHECKPOINT / "expected_logits.safetensors")
    with torch.no_grad():
        logits = model(
            input_ids=saved["input_ids"], pixel_values=saved["pixel_values"], object_masks=saved["object_masks"]
        ).logits
    torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-6)


def test_a_new_checkpoint_records_its_layout(tmp_path):
    tiny_config(delta_layout="shared_base").save_pretrained(tmp_path / "shared")
    tiny_config().save_pretrained(tmp_path / "official")
    assert DeltaLlavaConfig.from_pretrained(tmp_path / "shared").delta_layout == "shared_base"
    assert DeltaLlavaConfig.from_pretrained(tmp_path / "official").delta_layout == "official"


@pytest.mark.parametrize("layout", DELTA_LAYOUTS)
def test_object_and_global_tokens_in_both_layouts(layout):
    torch.manual_seed(0)
    config = tiny_config(delta_layout=layout, use_object_tokens=True, use_global_token=True, max_object_tokens=3)
    model = DeltaLlavaForConditionalGeneration(config).eval()
    masks = torch.zeros(2, 3, 48, 48)
    masks[0, 0, :10], masks[0, 1, 10:], masks[1, 0, :, :5] = 1, 1, 1
    with torch.no_grad():
        features = model.get_image_features(torch.randn(2, 3, 48, 48), num_visual_tokens=4, object_masks=masks).pooler_output
        dropped = model.get_image_features(torch.randn(2, 3, 48, 48), num_visual_tokens=4, object_masks=masks, max_object_tokens=0).pooler_output
    assert [f.shape[0] for f in features] == [1 + 4 + 2, 1 + 4 + 1]
    assert [f.shape[0] for f in dropped] == [1 + 4, 1 + 4]


def test_official_object_tokens_have_their_own_delta_projection():
    projector = official_projector(use_object_tokens=True, use_global_token=True)
    assert set(projector.extra_projections) == {"object", "global"}
    assert not official_projector().extra_projections  # the authors' 45 tensors only, when neither is used


def test_official_ablation_switches_remove_exactly_their_part():
    def names(**overrides):
        return {name for name, _ in official_projector(**overrides).named_parameters()}

    full = names()
    assert full - names(use_emhsa=False) == {n for n in full if n.startswith("query_block.self_attention.")}
    assert full - names(use_transformer_block=False) == {n for n in full if n.startswith("query_block.")}
    assert full - names(use_delta_projection=False) == {n for n in full if ".update." in n}
    assert all(names(**{switch: False}) < full for switch in ("use_emhsa", "use_transformer_block", "use_delta_projection"))


def test_without_delta_each_official_role_is_its_plain_base_map():
    torch.manual_seed(0)
    projection = official_projector(use_delta_projection=False).key_projection
    memory = torch.randn(2, 5, projection.base.weight.shape[1])
    expected = torch.nn.functional.layer_norm(
        torch.nn.functional.gelu(memory @ projection.base.weight.T), (32,), projection.norm.weight, projection.norm.bias, 1e-6
    )
    torch.testing.assert_close(projection(memory), expected)


def test_official_delta_projection_adds_a_rank_limited_update_to_its_own_base():
    torch.manual_seed(0)
    projector = official_projector()
    query, key = projector.query_projection, projector.key_projection
    assert query.base.weight.data_ptr() != key.base.weight.data_ptr()  # three separate instances, nothing shared
    assert torch.linalg.matrix_rank(query.update.delta_weight()) == 4
    assert float(query.update.up.detach().abs().max()) > 0  # the authors' init: both factors Xavier-uniform, not zero


def test_point_to_region_attention_sees_only_the_patches_under_each_query():
    torch.manual_seed(0)
    attention = PointToRegionAttention(width=16, num_heads=2).eval()
    queries, keys, values = torch.randn(1, 4, 16), torch.randn(1, 1, 64, 16), torch.randn(1, 1, 64, 16)

    def by_window(grid):  # (1, 1, 8*8, 16) -> (4*4, 2*2, 16)
        return order_by_window_position(grid, windows_per_side=2)

    with torch.no_grad():
        before = attention(queries, by_window(keys), by_window(values))
        changed = values.view(1, 8, 8, 16).clone()
        changed[0, :4, :4] += 5.0  # the top-left 4x4 region: under query 0 of the 2x2 grid only
        after = attention(queries, by_window(keys), by_window(changed.view(1, 1, 64, 16)))
    assert not torch.allclose(before[:, 0], after[:, 0])
    torch.testing.assert_close(before[:, 1:], after[:, 1:])


def test_drop_path_acts_only_while_training():
    torch.manual_seed(0)
    block = official_projector(drop_path_rate=0.5).query_block
    queries = torch.randn(16, 16, 32)
    block.eval()
    with torch.no_grad():
        first, second = block(queries), block(queries)
        torch.testing.assert_close(first, second)
        block.train()
        trained = block(queries)
    changed = (trained - first).flatten(1).abs().amax(dim=1) > 1e-4 * first.abs().max()
    assert 0 < int(changed.sum()) <= 16  # whole samples' branches dropped (or rescaled), per sample


@pytest.mark.parametrize("layout", DELTA_LAYOUTS)
def test_the_projector_keeps_its_call_in_both_layouts(layout):
    torch.manual_seed(0)
    projector = DeltaLlavaForConditionalGeneration(tiny_config(delta_layout=layout)).model.multi_modal_projector.eval()
    patches, memory = torch.randn(2, 576, 32), torch.randn(2, 2, 576, 32)
    with torch.no_grad():
        for side in (24, 12, 6, 4, 1):
            assert projector(patches, memory, side).shape == (2, side * side, 48)


def test_image_query_positions_give_one_place_the_same_code_at_every_budget():
    from delta_llava.projector_layers import sincos_position_embedding

    def code(side, row, column, cell_size):
        return sincos_position_embedding(side, 32, cell_size=cell_size)[row * side + column]

    # On a 12x12 patch grid the centre of the 1x1 grid is the centre of the 3x3 grid's middle cell (patch 6, 6), and
    # the 2x2 grid's top-left cell is centred where the 6x6 grid's cell (1, 1) is (patch 3, 3).
    assert torch.equal(code(1, 0, 0, 12.0), code(3, 1, 1, 4.0))
    assert torch.equal(code(2, 0, 0, 6.0), code(6, 1, 1, 2.0))
    assert not torch.equal(code(1, 0, 0, None), code(3, 1, 1, None))  # query-grid indices: (0, 0) vs (1, 1)


def test_query_positions_change_the_output_but_not_the_weights():
    torch.manual_seed(0)
    grid = DeltaLlavaForConditionalGeneration(tiny_config(delta_layout="shared_base")).model.multi_modal_projector
    image = DeltaLlavaForConditionalGeneration(tiny_config(delta_layout="shared_base", query_positions="image"))
    image = image.model.multi_modal_projector
    image.load_state_dict(grid.state_dict())  # strict: the same parameters
    patches, memory = torch.randn(1, 576, 32), torch.randn(1, 2, 576, 32)
    with torch.no_grad():
        assert not torch.allclose(grid.eval()(patches, memory, 2), image.eval()(patches, memory, 2))


def test_query_positions_default_and_bad_values(tmp_path):
    assert tiny_config(delta_layout="shared_base").query_positions == "query_grid"
    assert DeltaLlavaConfig.from_pretrained(LEGACY_CHECKPOINT).query_positions == "query_grid"
    with pytest.raises(ValueError, match="query_positions='image' .* applies to delta_layout='shared_base' only"):
        tiny_config(query_positions="image")
    with pytest.raises(ValueError, match=r"query_positions='centre' is unknown. Allowed values: \['query_grid', 'image'\]"):
        tiny_config(delta_layout="shared_base", query_positions="centre")
