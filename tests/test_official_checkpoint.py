"""Converting checkpoints written by the authors' training code (stage 2 folders and stage 1 projectors)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import tiny_config
from delta_llava import DeltaLlavaForConditionalGeneration
from delta_llava.official_checkpoint import convert_official_checkpoint, main
from delta_llava.official_weights import RENAMES, ROLES, SQUEEZED_CONVS
from delta_llava.processing.processing_delta_llava import VICUNA_V1_SYSTEM_PROMPT
from isolated_python import run_without_project

WORDS = ["<unk>", "<s>", "</s>", "USER", ":", "ASSISTANT", "what", "is", "it", "?", "a", "red", "circle"]
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 2, "image_size": 48, "patch_size": 2}
TEXT = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def to_authors_names(projector_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our official projector's state dict under the authors' names and shapes (the inverse of the conversion)."""
    theirs = {}
    for their_name, our_name in RENAMES.items():
        tensor = projector_state[our_name]
        theirs[their_name] = tensor[:, :, None, None] if our_name in SQUEEZED_CONVS else tensor
    for their_role, our_role in ROLES.items():
        theirs[f"{their_role}.shared_weight.weight"] = projector_state[f"{our_role}.base.weight"]
        theirs[f"{their_role}.U"] = projector_state[f"{our_role}.update.down"].T
        theirs[f"{their_role}.V"] = projector_state[f"{our_role}.update.up"].T
        theirs[f"{their_role}.norm.weight"] = projector_state[f"{our_role}.norm.weight"]
        theirs[f"{their_role}.norm.bias"] = projector_state[f"{our_role}.norm.bias"]
    for kind in ("weight", "bias"):
        key, value = projector_state[f"query_block.self_attention.key_value.{kind}"].chunk(2)
        theirs[f"combined_block.ntb.e_mhsa.k.{kind}"], theirs[f"combined_block.ntb.e_mhsa.v.{kind}"] = key, value
        theirs[f"clip_attn.in_proj_{kind}"] = torch.cat(
            [projector_state[f"cross_attention.{role}.{kind}"] for role in ("query", "key", "value")]
        )
    return {name: tensor.contiguous() for name, tensor in theirs.items()}


def write_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A word-level tokenizer without `<image>`, as Vicuna's has none."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="module")
def authors_run(tmp_path_factory):
    """A tiny tower folder, and a stage-2 folder as the authors' training writes it, from known weights."""
    root = tmp_path_factory.mktemp("official")
    torch.manual_seed(0)
    tower = CLIPVisionModel(CLIPVisionConfig(**VISION)).eval()
    tower.save_pretrained(root / "tower")
    CLIPImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}).save_pretrained(root / "tower")
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), bos_token_id=1, eos_token_id=2, **TEXT)).eval()
    projector = DeltaLlavaForConditionalGeneration(tiny_config(num_visual_tokens=16)).model.multi_modal_projector
    with torch.no_grad():
        for parameter in projector.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    stage2 = root / "llava-v1.5-delta"
    stage2.mkdir()
    write_tokenizer(stage2)
    weights = {name: t.contiguous() for name, t in llm.state_dict().items()}
    weights.update({f"model.mm_projector.{n}": t for n, t in to_authors_names(projector.state_dict()).items()})
    names = sorted(weights)
    save_file({n: weights[n] for n in names[: len(names) // 2]}, stage2 / "model-00001-of-00002.safetensors")
    save_file({n: weights[n] for n in names[len(names) // 2 :]}, stage2 / "model-00002-of-00002.safetensors")
    config = {
        **llm.config.to_dict(), "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
        "mm_projector_type": "delatallava", "scale_factor": 6, "mm_vision_tower": str(root / "tower"),
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_hidden_size": 32,
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
    }  # fmt: skip
    (stage2 / "config.json").write_text(json.dumps(config))
    return {"root": root, "stage2": stage2, "tower": tower, "llm": llm, "projector": projector}


@pytest.fixture(scope="module")
def converted(authors_run):
    output = convert_official_checkpoint(authors_run["root"] / "converted", checkpoint=authors_run["stage2"])
    return DeltaLlavaForConditionalGeneration.from_pretrained(output).eval(), output


def prompt_ids(model, budget: int) -> torch.Tensor:
    return torch.tensor([[1, 3, 4] + [model.config.image_token_id] * budget + [6, 7, 8, 9, 5, 4]])


def test_stage_two_folder_converts_with_the_authors_settings(converted):
    model, folder = converted
    config = model.config
    assert (config.delta_layout, config.num_visual_tokens, config.vision_feature_layer) == ("official", (24 // 6) ** 2, -2)
    assert (config.projector_hidden_size, config.delta_rank, config.ntb_head_dim) == (32, 4, 8)
    assert config.image_token_id == len(WORDS)  # <image> appended to the tokenizer
    assert model.get_input_embeddings().weight.shape[0] == 64  # resized like llava-hf: a multiple of 64
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["pad_to_square"] is True and processor_config["num_visual_tokens"] == 16


def test_logits_equal_a_model_built_directly_from_the_same_weights(authors_run, converted):
    model, _ = converted
    direct = DeltaLlavaForConditionalGeneration(
        tiny_config(vision_config={"model_type": "clip_vision_model", **VISION}, text_config=model.config.text_config.to_dict(),
                    image_token_id=model.config.image_token_id, num_visual_tokens=16, projector_head_dim=4)
    ).eval()  # fmt: skip
    direct.model.vision_tower.load_state_dict(authors_run["tower"].state_dict())
    direct.model.multi_modal_projector.load_state_dict(authors_run["projector"].state_dict())
    llm_state = authors_run["llm"].state_dict()
    with torch.no_grad():
        for name, tensor in llm_state.items():
            target = direct.lm_head.weight if name == "lm_head.weight" else direct.model.language_model.get_parameter(name[len("model."):])
            target[: tensor.shape[0]] = tensor
    inputs = {"input_ids": prompt_ids(model, 16), "pixel_values": torch.randn(1, 3, 48, 48)}
    with torch.no_grad():
        expected = direct(**inputs).logits[..., : len(WORDS)]
        actual = model(**inputs).logits[..., : len(WORDS)]
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_the_processor_speaks_the_authors_v1_conversation(converted):
    from delta_llava.processing import DeltaLlavaProcessor

    _, folder = converted
    processor = DeltaLlavaProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it ?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == f"<s>{VICUNA_V1_SYSTEM_PROMPT} USER: <image>\nwhat is it ? ASSISTANT:"


def test_the_result_loads_by_remote_code_in_a_clean_process(authors_run, converted):
    model, folder = converted
    inputs = {"input_ids": prompt_ids(model, 4), "pixel_values": torch.randn(1, 3, 48, 48)}
    with torch.no_grad():
        torch.save({"inputs": inputs, "logits": model(**inputs, num_visual_tokens=4).logits}, authors_run["root"] / "io.pt")
    result = run_without_project(
        f"""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert processor.pad_to_square and model.config.delta_layout == "official"
        saved = torch.load("io.pt")
        with torch.no_grad():
            logits = model(**saved["inputs"], num_visual_tokens=4).logits
        torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-5)
        print("OFFICIAL-OK")
        """,
        cwd=str(authors_run["root"]),
    )
    assert "OFFICIAL-OK" in result.stdout


def test_bin_shards_convert_to_the_same_model(authors_run, converted, tmp_path):
    import shutil

    from safetensors.torch import load_file

    model, _ = converted
    as_bin = tmp_path / "bin"
    shutil.copytree(authors_run["stage2"], as_bin)
    for index, shard in enumerate(sorted(as_bin.glob("*.safetensors"))):
        torch.save(load_file(shard), as_bin / f"pytorch_model-0000{index + 1}-of-00002.bin")
        shard.unlink()
    from_bin = DeltaLlavaForConditionalGeneration.from_pretrained(
        convert_official_checkpoint(tmp_path / "out", checkpoint=as_bin)
    )
    for (name, ours), (_, reference) in zip(from_bin.state_dict().items(), model.state_dict().items()):
        assert torch.equal(ours, reference), name


def test_a_stage_one_projector_converts(authors_run, converted, tmp_path):
    model, _ = converted
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    theirs = to_authors_names(authors_run["projector"].state_dict())
    torch.save({f"model.mm_projector.{n}": t for n, t in theirs.items()}, stage1 / "mm_projector.bin")
    authors_run["llm"].save_pretrained(tmp_path / "vicuna")
    write_tokenizer(tmp_path / "vicuna")
    main([
        "--stage1_projector", str(stage1 / "mm_projector.bin"), "--language_model", str(tmp_path / "vicuna"),
        "--vision_tower", str(authors_run["root"] / "tower"), "--scale_factor", "12", "--output_dir", str(tmp_path / "out"),
    ])  # fmt: skip
    from_stage1 = DeltaLlavaForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    assert from_stage1.config.num_visual_tokens == 4
    inputs = {"input_ids": prompt_ids(model, 4), "pixel_values": torch.randn(1, 3, 48, 48)}
    with torch.no_grad():
        torch.testing.assert_close(from_stage1(**inputs).logits, model(**inputs, num_visual_tokens=4).logits)


@pytest.mark.parametrize(
    "breakage, message",
    [
        ({"mm_projector_type": "mlp2x_gelu"}, r"mm_projector_type='mlp2x_gelu' is not the authors' Delta-LLaVA projector"),
        ({"scale_factor": 5}, r"scale_factor=5 does not divide the tower's 24x24 patch grid"),
        ({"mm_vision_select_feature": "cls_patch"}, r"mm_vision_select_feature='cls_patch'"),
        ({"drop_tensor": "model.mm_projector.k_proj_1.U"}, r"missing \['k_proj_1.U'\]"),
        ({"drop_tensor": "model.layers.1.mlp.up_proj.weight"}, r"missing \['layers.1.mlp.up_proj.weight'\]"),
    ],
)
def test_bad_folders_get_a_clear_error_and_no_output(authors_run, tmp_path, breakage, message):
    import shutil

    from safetensors.torch import load_file

    broken = tmp_path / "broken"
    shutil.copytree(authors_run["stage2"], broken)
    config = json.loads((broken / "config.json").read_text())
    drop = breakage.pop("drop_tensor", None)
    config.update(breakage)
    (broken / "config.json").write_text(json.dumps(config))
    if drop:
        for shard in broken.glob("*.safetensors"):
            tensors = load_file(shard)
            tensors.pop(drop, None)
            save_file(tensors, shard)
    with pytest.raises((ValueError, KeyError), match=message):
        convert_official_checkpoint(tmp_path / "out", checkpoint=broken)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken"]  # no staging folder left behind
