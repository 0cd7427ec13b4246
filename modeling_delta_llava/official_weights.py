"""Maps the authors' `Delta_LLaVA` projector state dict onto `OfficialDeltaProjector`'s."""

import torch

OFFICIAL_CHECKPOINT_PREFIXES = ("model.mm_projector.", "mm_projector.")

# The authors' name -> ours. Their 1x1 convolutions are our Linears (the trailing 1x1 is squeezed).
RENAMES = {
    "combined_block.ntb.patch_embed.conv.weight": "query_block.reduce.weight",
    "combined_block.ntb.norm_mhsa.weight": "query_block.self_attention.norm.0.weight",
    "combined_block.ntb.norm_mhsa.bias": "query_block.self_attention.norm.0.bias",
    "combined_block.ntb.e_mhsa.norm.weight": "query_block.self_attention.norm.1.weight",
    "combined_block.ntb.e_mhsa.norm.bias": "query_block.self_attention.norm.1.bias",
    "combined_block.ntb.e_mhsa.q.weight": "query_block.self_attention.query.weight",
    "combined_block.ntb.e_mhsa.q.bias": "query_block.self_attention.query.bias",
    "combined_block.ntb.e_mhsa.proj.weight": "query_block.self_attention.out.weight",
    "combined_block.ntb.e_mhsa.proj.bias": "query_block.self_attention.out.bias",
    "combined_block.ntb.projection.conv.weight": "query_block.split.weight",
    "combined_block.ntb.mhca.group_conv3x3.weight": "query_block.conv_attention.grouped_conv.weight",
    "combined_block.ntb.mhca.norm.weight": "query_block.conv_attention.conv_norm.weight",
    "combined_block.ntb.mhca.norm.bias": "query_block.conv_attention.conv_norm.bias",
    "combined_block.ntb.mhca.projection.weight": "query_block.conv_attention.merge_heads.weight",
    "combined_block.ntb.mlp.conv1.weight": "query_block.mlp.fc1.weight",
    "combined_block.ntb.mlp.conv1.bias": "query_block.mlp.fc1.bias",
    "combined_block.ntb.mlp.conv2.weight": "query_block.mlp.fc2.weight",
    "combined_block.ntb.mlp.conv2.bias": "query_block.mlp.fc2.bias",
    "clip_attn.out_proj.weight": "cross_attention.out.weight",
    "clip_attn.out_proj.bias": "cross_attention.out.bias",
    "mlp.0.weight": "output_mlp.0.weight",
    "mlp.0.bias": "output_mlp.0.bias",
    "mlp.2.weight": "output_mlp.2.weight",
    "mlp.2.bias": "output_mlp.2.bias",
}
ROLES = {"q_proj_1": "query_projection", "k_proj_1": "key_projection", "v_proj_1": "value_projection"}
SQUEEZED_CONVS = {"query_block.reduce.weight", "query_block.split.weight", "query_block.mlp.fc1.weight", "query_block.mlp.fc2.weight"}


def strip_checkpoint_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keeps the projector's tensors of a stage-1 `mm_projector.bin` or a stage-2 model, without their prefix."""
    prefixed = {
        name[len(prefix):]: tensor
        for name, tensor in state_dict.items()
        for prefix in OFFICIAL_CHECKPOINT_PREFIXES
        if name.startswith(prefix)
    }
    return prefixed or dict(state_dict)


def convert_official_projector_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """
    The authors' `Delta_LLaVA` state dict (45 tensors; with or without the `model.mm_projector.` / `mm_projector.`
    prefix) -> the state dict of an official-layout `model.model.multi_modal_projector`.

    Their DeltaProjection keeps U (C, r) and V (r, d) with the update (U V)^T; ours keeps `down` = U^T and `up` = V^T.
    Their E-MHSA's separate key and value maps become one `key_value` map; their MultiheadAttention's packed input
    projection becomes separate query/key/value maps. Raises a KeyError naming every missing or unknown tensor.
    """
    source = strip_checkpoint_prefix(state_dict)
    converted = {}
    missing = [name for name in expected_official_keys() if name not in source]
    unknown = sorted(set(source) - set(expected_official_keys()))
    if missing or unknown:
        raise KeyError(
            f"Not the authors' Delta_LLaVA projector state dict: missing {missing}, unknown {unknown}. Pass the "
            "tensors stored under `model.mm_projector.` (stage 2) or in `mm_projector.bin` (stage 1)."
        )
    for theirs, ours in RENAMES.items():
        tensor = source[theirs]
        converted[ours] = tensor.flatten(1) if ours in SQUEEZED_CONVS else tensor
    for theirs, ours in ROLES.items():
        converted[f"{ours}.base.weight"] = source[f"{theirs}.shared_weight.weight"]
        converted[f"{ours}.update.down"] = source[f"{theirs}.U"].T.contiguous()
        converted[f"{ours}.update.up"] = source[f"{theirs}.V"].T.contiguous()
        converted[f"{ours}.norm.weight"] = source[f"{theirs}.norm.weight"]
        converted[f"{ours}.norm.bias"] = source[f"{theirs}.norm.bias"]
    prefix = "combined_block.ntb.e_mhsa."
    for kind in ("weight", "bias"):
        converted[f"query_block.self_attention.key_value.{kind}"] = torch.cat(
            [source[f"{prefix}k.{kind}"], source[f"{prefix}v.{kind}"]]
        )
        for role, tensor in zip(("query", "key", "value"), source[f"clip_attn.in_proj_{kind}"].chunk(3)):
            converted[f"cross_attention.{role}.{kind}"] = tensor
    return converted


def expected_official_keys() -> list[str]:
    """The 45 tensor names of the authors' Delta_LLaVA."""
    keys = list(RENAMES)
    keys += [f"{role}.{part}" for role in ROLES for part in ("shared_weight.weight", "U", "V", "norm.weight", "norm.bias")]
    keys += [f"combined_block.ntb.e_mhsa.{kind}.{part}" for kind in ("k", "v") for part in ("weight", "bias")]
    keys += ["clip_attn.in_proj_weight", "clip_attn.in_proj_bias"]
    return keys
