import pytest

from conftest import tiny_config
from delta_llava import DeltaLlavaConfig
from delta_llava.configuration_delta_llava import allowed_visual_token_counts, default_memory_layers


def test_defaults_are_the_paper_setting():
    config = DeltaLlavaConfig()
    assert config.patch_grid_size == 24
    assert config.memory_layers == [12, 16, 22, 23]
    assert config.allowed_visual_token_counts() == [576, 144, 64, 36, 16, 9, 4, 1]
    assert config.delta_layout == "official"
    assert (config.projector_hidden_size, config.delta_rank, config.projector_head_dim) == (1024, 16, 128)
    assert config.ffn_hidden_size is None  # the authors' module has no FFN refinement


def test_shared_base_keeps_its_own_defaults():
    config = DeltaLlavaConfig(delta_layout="shared_base")
    assert (config.delta_rank, config.projector_head_dim, config.ffn_hidden_size, config.spatial_reduction) == (64, 64, 4096, 2)
    assert (config.ntb_head_dim, config.drop_path_rate) == (None, None)


def test_baselines_keep_the_widths_they_had_before_the_official_layout():
    config = DeltaLlavaConfig(projector_type="tokenpacker")
    assert (config.projector_head_dim, config.ffn_hidden_size) == (64, 4096)
    assert config.auto_map["AutoModelForImageTextToText"] == "modeling_delta_llava.DeltaLlavaForConditionalGeneration"


def test_memory_layers_scale_with_tower_depth():
    assert default_memory_layers(24) == [12, 16, 22, 23]
    assert default_memory_layers(12) == [6, 8, 10, 11]
    assert default_memory_layers(2) == [1]


def test_mlp_projector_only_allows_the_full_grid():
    assert allowed_visual_token_counts(24, "mlp2x_gelu") == [576]
    with pytest.raises(ValueError, match=r"num_visual_tokens=144 .*mlp2x_gelu.*Allowed values: \[576\]"):
        tiny_config(projector_type="mlp2x_gelu", num_visual_tokens=144)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"projector_type": "qformer"}, r"projector_type='qformer' is unknown. Allowed values: \['delta', 'mlp2x_gelu'"),
        ({"num_visual_tokens": 100}, r"num_visual_tokens=100 .*g dividing the 24x24 patch grid. Allowed values: \[576, 144"),
        ({"num_visual_tokens": 0}, r"num_visual_tokens=0 .*Allowed values"),
        ({"delta_rank": 33}, r"delta_rank=33 is larger than the widths .*Allowed values: 1 to 32"),
        ({"delta_rank": 0}, r"delta_rank=0 must be a positive integer"),
        ({"window_size": 0}, r"window_size=0 must be a positive integer"),
        (
            {"delta_layout": "shared_base", "projector_head_dim": 12, "ffn_hidden_size": 64},
            r"vision_config.hidden_size=32 must be divisible by projector_head_dim=12",
        ),
        ({"projector_head_dim": 12}, r"projector_hidden_size=32 must be divisible by projector_head_dim=12"),
        ({"delta_layout": "paper"}, r"delta_layout='paper' is unknown. Allowed values: \['official', 'shared_base'\]"),
        ({"window_size": 2}, r"window_size=2 is not part of delta_layout='official' .*delta_layout='shared_base'"),
        ({"spatial_reduction": 2}, r"spatial_reduction=2 is not part of delta_layout='official'"),
        ({"ffn_hidden_size": 64}, r"ffn_hidden_size=64 is the hidden width of the FFN refinement.*'shared_base' only"),
        ({"delta_layout": "shared_base", "ntb_head_dim": 8}, r"ntb_head_dim=8 is the head width .*'official' only"),
        ({"drop_path_rate": 1.0}, r"drop_path_rate=1.0 must be a number in \[0, 1\)"),
        ({"ntb_head_dim": 16}, r"vision_config.hidden_size=32 with ntb_head_dim=16 does not split .*got 32 and 0"),
        ({"memory_layers": [1, 9]}, r"memory_layers=\[1, 9\] must be hidden-state indices of the 4-layer .*\[-5, 4\]"),
        ({"memory_layers": []}, r"memory_layers=\[\] must be hidden-state indices"),
        ({"vision_feature_layer": 7}, r"vision_feature_layer=7 must be hidden-state indices"),
        ({"max_object_tokens": -1}, r"max_object_tokens=-1 must be an integer >= 0"),
    ],
)
def test_impossible_settings_fail_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_call_time_budget_check_names_the_allowed_values():
    config = tiny_config()
    assert config.check_num_visual_tokens(144) == 12
    with pytest.raises(ValueError, match=r"num_visual_tokens=50 .*Allowed values: \[576, 144, 64, 36, 16, 9, 4, 1\]"):
        config.check_num_visual_tokens(50)


def test_round_trip_through_dict_keeps_every_field(tmp_path):
    config = tiny_config(drop_path_rate=0.2, use_emhsa=False, use_object_tokens=True, max_object_tokens=3)
    config.save_pretrained(tmp_path)
    loaded = DeltaLlavaConfig.from_pretrained(tmp_path)
    fields = ("delta_layout", "drop_path_rate", "ntb_head_dim", "use_emhsa", "use_object_tokens", "max_object_tokens")
    for field in (*fields, "memory_layers", "auto_map"):
        assert getattr(loaded, field) == getattr(config, field)
    assert loaded.vision_config.hidden_size == 32 and loaded.text_config.hidden_size == 48
