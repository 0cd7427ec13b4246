"""The projector family: shapes at every budget, the Delta structure, the windowed attention and the ablations."""

import math

import pytest
import torch

from conftest import tiny_config
from delta_llava import DeltaLlavaForConditionalGeneration
from delta_llava.delta_projection import DeltaProjection, LowRankUpdate
from delta_llava.projector_delta import DeltaProjector
from delta_llava.projector_layers import ZeroInitLinear, resize_tokens
from delta_llava.windowed_cross_attention import WindowedCrossAttention, effective_window

BUDGETS = [576, 144, 64, 36, 16, 9, 4, 1]


def projector_inputs(config, batch=2):
    grid = config.patch_grid_size
    width = config.vision_config.hidden_size
    levels = len(config.memory_layers)
    return torch.randn(batch, grid * grid, width), torch.randn(batch, levels, grid * grid, width)


@pytest.mark.parametrize(
    "projector_type, layout", [("delta", "official"), ("delta", "shared_base"), ("tokenpacker", None), ("avgpool", None)]
)
def test_every_budget_with_the_same_weights(projector_type, layout):
    torch.manual_seed(0)
    layout_setting = {"delta_layout": layout} if layout else {}
    model = DeltaLlavaForConditionalGeneration(tiny_config(projector_type=projector_type, **layout_setting)).eval()
    pixel_values = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        for budget in BUDGETS:
            features = model.get_image_features(pixel_values, num_visual_tokens=budget).pooler_output
            assert [tuple(f.shape) for f in features] == [(budget, 48)] * 2
            assert torch.isfinite(torch.stack(features)).all()


def test_mlp_projector_keeps_every_patch():
    model = DeltaLlavaForConditionalGeneration(tiny_config(projector_type="mlp2x_gelu", num_visual_tokens=576)).eval()
    with torch.no_grad():
        features = model.get_image_features(torch.randn(1, 3, 48, 48)).pooler_output
    assert features[0].shape == (576, 48)


def test_invalid_call_time_budget_is_a_clear_error():
    model = DeltaLlavaForConditionalGeneration(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"num_visual_tokens=10 .*Allowed values"):
        model.get_image_features(torch.randn(1, 3, 48, 48), num_visual_tokens=10)


def test_fresh_tokenpacker_is_the_pooled_querys_mlp():
    torch.manual_seed(0)
    config = tiny_config(projector_type="tokenpacker", num_visual_tokens=4)
    projector = DeltaLlavaForConditionalGeneration(config).model.multi_modal_projector
    patches, memory = projector_inputs(config)
    with torch.no_grad():
        expected = projector.project_extra_tokens(resize_tokens(patches, 2), "query")
        torch.testing.assert_close(projector(patches, memory, query_side=2), expected)


def test_tokenpacker_starts_at_the_mlp_baselines_scale():
    """At the CPU benchmarks' width (64) the 0.02-std init once made TokenPacker's tokens ~100x smaller than the
    MLP's; its output norm keeps them within a small factor of it."""
    torch.manual_seed(0)
    norms = {}
    for projector_type in ("tokenpacker", "avgpool"):
        config = tiny_config(projector_type=projector_type, num_visual_tokens=4)
        projector = DeltaLlavaForConditionalGeneration(config).model.multi_modal_projector
        patches, memory = projector_inputs(config)
        with torch.no_grad():
            norms[projector_type] = projector(patches, memory, query_side=2).norm(dim=-1).mean().item()
    assert 0.2 < norms["tokenpacker"] / norms["avgpool"] < 5, norms


@pytest.mark.parametrize(
    "projector_type, settings",
    [
        ("delta", {"delta_layout": "official", "use_object_tokens": True, "use_global_token": True}),
        ("delta", {"delta_layout": "shared_base", "window_size": 2}),
        ("tokenpacker", {}),
        ("avgpool", {}),
        ("mlp2x_gelu", {}),
    ],
)
def test_gradients_reach_every_projector_parameter(projector_type, settings):
    torch.manual_seed(0)
    budget = 576 if projector_type == "mlp2x_gelu" else 16
    config = tiny_config(projector_type=projector_type, num_visual_tokens=budget, **settings)
    model = DeltaLlavaForConditionalGeneration(config).eval()  # eval: no drop-path, so no branch is skipped
    projector = model.model.multi_modal_projector
    with torch.no_grad():  # move the zero-initialised maps off zero, as after a first step, so what feeds them
        for module in projector.modules():  # gets gradient too (Delta's U, TokenPacker's attention output map)
            if isinstance(module, LowRankUpdate):
                module.up.normal_(std=0.02)
            elif isinstance(module, ZeroInitLinear):
                module.weight.normal_(std=0.02)
    extra = config.use_global_token + (2 if config.use_object_tokens else 0)
    masks = torch.zeros(1, 2, 48, 48)
    masks[0, 0, :24], masks[0, 1, 24:] = 1, 1
    input_ids = torch.tensor([[1, 5] + [config.image_token_id] * (budget + extra) + [7, 8, 9]])
    pixel_values = torch.randn(1, 3, 48, 48)
    model(input_ids=input_ids, pixel_values=pixel_values, object_masks=masks, labels=input_ids).loss.backward()
    for name, parameter in projector.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert parameter.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_shared_base_is_one_tensor_and_fresh_deltas_are_zero():
    torch.manual_seed(0)
    config = tiny_config(delta_layout="shared_base")
    projection = DeltaLlavaForConditionalGeneration(config).model.multi_modal_projector.delta_projection
    full_matrices = [n for n, p in projection.named_parameters() if p.shape == (32, 32)]
    assert full_matrices == ["base.weight"]
    levels = len(config.memory_layers)
    assert len(projection.roles) == 1 + 2 * levels
    assert all(float(update.up.detach().abs().max()) == 0.0 for update in projection.updates.values())
    features = torch.randn(3, 32)
    outputs = projection(features, projection.roles)
    base = projection.base(features)
    for output in outputs:
        torch.testing.assert_close(output, base, rtol=0, atol=0)
    with torch.no_grad():
        projection.base.weight.add_(1.0)
    shifted = projection(features, projection.roles)
    assert all(not torch.allclose(a, b) for a, b in zip(outputs, shifted))


@pytest.mark.parametrize("use_delta", [True, False])
def test_levels_batched_equal_each_role_alone(use_delta):
    """`project_levels` (one base product over every level, batched updates, values updated in place) gives each
    level's rows what its own key and value roles give them one at a time, and the same gradients."""
    torch.manual_seed(0)
    key_roles, value_roles = ["key_0", "key_1", "key_2"], ["value_0", "value_1", "value_2"]
    projection = DeltaProjection(8, 12, rank=3, roles=[*key_roles, *value_roles], use_delta=use_delta)
    with torch.no_grad():
        for parameter in projection.parameters():
            parameter.normal_()  # fresh updates start at zero; make every role different
    rows = torch.randn(3, 5, 8)

    def gradients(loss):
        projection.zero_grad()
        loss.backward()
        return {name: parameter.grad.clone() for name, parameter in projection.named_parameters()}

    keys, values = projection.project_levels(rows, key_roles, value_roles)
    weights = torch.randn(2, 3, 5, 12)  # a loss that weighs every output element differently
    batched = gradients((weights[0] * keys).sum() + (weights[1] * values).sum())
    one_by_one = [projection(rows[level], [key_roles[level], value_roles[level]]) for level in range(3)]
    torch.testing.assert_close(keys, torch.stack([key for key, _ in one_by_one]))
    torch.testing.assert_close(values, torch.stack([value for _, value in one_by_one]))
    reference = gradients(sum((weights[0, level] * key).sum() + (weights[1, level] * value).sum()
                              for level, (key, value) in enumerate(one_by_one)))
    assert batched.keys() == reference.keys()
    for name in batched:
        torch.testing.assert_close(batched[name], reference[name], msg=name)


def test_updates_are_rank_limited():
    torch.manual_seed(0)
    projection = DeltaLlavaForConditionalGeneration(tiny_config(delta_layout="shared_base", delta_rank=3)).model.multi_modal_projector.delta_projection
    update = projection.updates["query"]
    with torch.no_grad():
        update.up.normal_()
    delta_matrix = update.up @ update.down
    assert torch.linalg.matrix_rank(delta_matrix) == 3


def naive_windowed_attention(module, queries, keys, values):
    """One window at a time, with explicit softmax: the reference for the batched implementation."""
    batch, num_queries, width = queries.shape
    side, grid = math.isqrt(num_queries), math.isqrt(keys.shape[2])
    window = effective_window(side, module.window_size)
    region = window * grid // side
    heads, head_dim = module.num_heads, width // module.num_heads
    normed = module.query_norm(queries).view(batch, side, side, width)
    key_grid = keys.view(batch, keys.shape[1], grid, grid, width)
    value_grid = values.view(batch, keys.shape[1], grid, grid, width)
    out = torch.zeros(batch, side, side, width)
    for b in range(batch):
        for wy in range(side // window):
            for wx in range(side // window):
                q = normed[b, wy * window:(wy + 1) * window, wx * window:(wx + 1) * window].reshape(-1, width)
                ys, xs = slice(wy * region, (wy + 1) * region), slice(wx * region, (wx + 1) * region)
                k = key_grid[b, :, ys, xs].reshape(-1, width)
                v = value_grid[b, :, ys, xs].reshape(-1, width)
                for h in range(heads):
                    cols = slice(h * head_dim, (h + 1) * head_dim)
                    weights = torch.softmax(q[:, cols] @ k[:, cols].T / head_dim**0.5, dim=-1)
                    block = (weights @ v[:, cols]).view(window, window, head_dim)
                    out[b, wy * window:(wy + 1) * window, wx * window:(wx + 1) * window, cols] = block
    return queries + module.out(out.view(batch, num_queries, width))


@pytest.mark.parametrize("side, window_size", [(12, 1), (12, 3), (8, 2), (6, 4), (1, 2), (24, 1)])
def test_batched_windows_equal_the_per_window_reference(side, window_size):
    torch.manual_seed(0)
    module = WindowedCrossAttention(width=16, num_heads=2, window_size=window_size)
    queries = torch.randn(2, side * side, 16)
    keys, values = torch.randn(2, 3, 576, 16), torch.randn(2, 3, 576, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            module(queries, keys, values), naive_windowed_attention(module, queries, keys, values), atol=1e-5, rtol=1e-4
        )


def test_effective_window_divides_the_query_grid():
    assert effective_window(12, 1) == 1
    assert effective_window(12, 5) == 4
    assert effective_window(9, 2) == 1
    assert effective_window(3, 8) == 3


def test_window_size_changes_what_a_query_sees():
    torch.manual_seed(0)
    queries, keys, values = torch.randn(1, 16, 16), torch.randn(1, 2, 576, 16), torch.randn(1, 2, 576, 16)
    point = WindowedCrossAttention(16, 2, window_size=1)
    wide = WindowedCrossAttention(16, 2, window_size=2)
    wide.load_state_dict(point.state_dict())
    with torch.no_grad():
        assert not torch.allclose(point(queries, keys, values), wide(queries, keys, values))


def parameter_names(**overrides):
    return {name for name, _ in DeltaProjector(tiny_config(delta_layout="shared_base", **overrides)).named_parameters()}


def test_no_emhsa_removes_exactly_the_self_attention_blocks():
    removed = parameter_names() - parameter_names(use_emhsa=False)
    assert removed and all(n.startswith(("refine_attention.", "transformer_block.self_attention.")) for n in removed)
    assert parameter_names(use_emhsa=False) <= parameter_names()


def test_no_transformer_block_removes_exactly_the_block():
    removed = parameter_names() - parameter_names(use_transformer_block=False)
    assert removed == {n for n in parameter_names() if n.startswith("transformer_block.")}
    assert parameter_names(use_transformer_block=False) <= parameter_names()


def test_no_delta_projection_uses_independent_full_maps():
    full, plain = parameter_names(), parameter_names(use_delta_projection=False)
    assert {n for n in full ^ plain} == {n for n in full | plain if n.startswith("delta_projection.")}
    projector = DeltaProjector(tiny_config(delta_layout="shared_base", use_delta_projection=False))
    assert not hasattr(projector.delta_projection, "base")
    assert all(linear.weight.shape == (32, 32) for linear in projector.delta_projection.independent.values())


def test_spatial_reduction_pools_keys_only_on_large_grids():
    from delta_llava.projector_layers import EfficientSelfAttention

    torch.manual_seed(0)
    reduced = EfficientSelfAttention(16, 2, spatial_reduction=2)
    full = EfficientSelfAttention(16, 2, spatial_reduction=1)
    full.load_state_dict(reduced.state_dict())
    large, small = torch.randn(1, 64, 16), torch.randn(1, 9, 16)
    with torch.no_grad():
        assert not torch.allclose(reduced(large), full(large))
        torch.testing.assert_close(reduced(small), full(small))
