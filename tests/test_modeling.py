"""The model end to end: loss, placeholders, generation with cache, padding, checkpointing, dtypes, save/load."""

import pytest
import torch

from conftest import TINY_IMAGE_TOKEN_ID, tiny_config
from delta_llava import DeltaLlavaForConditionalGeneration, DeltaLlavaModel

IMAGE = TINY_IMAGE_TOKEN_ID


def make_model(**overrides):
    torch.manual_seed(0)
    return DeltaLlavaForConditionalGeneration(tiny_config(**overrides)).eval()


def prompt(budget, before=(1, 5, 6), after=(7, 8)):
    return list(before) + [IMAGE] * budget + list(after)


def test_loss_ignores_masked_labels_and_changes_with_the_image():
    model = make_model()
    input_ids = torch.tensor([prompt(16)])
    labels = input_ids.clone()
    labels[:, :-2] = -100
    pixels = torch.randn(1, 3, 48, 48)
    out = model(input_ids=input_ids, pixel_values=pixels, labels=labels)
    assert out.logits.shape == (1, input_ids.shape[1], 96)
    assert out.image_hidden_states.shape == (16, 48)
    other = model(input_ids=input_ids, pixel_values=torch.randn(1, 3, 48, 48), labels=labels)
    assert not torch.allclose(out.logits[:, -1], other.logits[:, -1])
    manual = torch.nn.functional.cross_entropy(out.logits[0, -3:-1], input_ids[0, -2:])
    torch.testing.assert_close(out.loss, manual)


def test_placeholder_mismatch_names_both_numbers():
    model = make_model()
    with pytest.raises(ValueError, match=r"15 image placeholder tokens but the 1 image\(s\) produce 16 features"):
        model(input_ids=torch.tensor([prompt(15)]), pixel_values=torch.randn(1, 3, 48, 48))


def test_budget_mismatch_names_both_budgets():
    model = make_model()
    with pytest.raises(ValueError, match=r"written for num_visual_tokens=64 per image, but the model was called with "
                                         r"num_visual_tokens=16.*num_visual_tokens=64\)"):  # fmt: skip
        model(input_ids=torch.tensor([prompt(64), prompt(64)]), pixel_values=torch.randn(2, 3, 48, 48))


def test_call_time_budget_changes_only_the_sequence_length():
    model = make_model()
    pixels = torch.randn(1, 3, 48, 48)
    for budget in (144, 4, 1):
        logits = model(input_ids=torch.tensor([prompt(budget)]), pixel_values=pixels, num_visual_tokens=budget).logits
        assert logits.shape[1] == budget + 5


def test_cached_greedy_equals_uncached_greedy():
    model = make_model()
    inputs = {"input_ids": torch.tensor([prompt(16)]), "pixel_values": torch.randn(1, 3, 48, 48)}
    cached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape[1] == inputs["input_ids"].shape[1] + 8
    assert torch.equal(cached, uncached)


def test_left_padded_batch_matches_single_samples():
    model = make_model()
    short, long = prompt(16, before=(1, 5)), prompt(16, before=(1, 5, 6, 9, 10))
    pad = len(long) - len(short)
    input_ids = torch.tensor([[0] * pad + short, long])
    attention_mask = torch.tensor([[0] * pad + [1] * len(short), [1] * len(long)])
    pixels = torch.randn(2, 3, 48, 48)
    batch = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels, max_new_tokens=6, do_sample=False
    )
    for row, ids in enumerate((short, long)):
        single = model.generate(
            input_ids=torch.tensor([ids]), pixel_values=pixels[row : row + 1], max_new_tokens=6, do_sample=False
        )
        assert torch.equal(batch[row, -6:], single[0, -6:])


def test_generate_accepts_a_call_time_budget():
    model = make_model()
    out = model.generate(
        input_ids=torch.tensor([prompt(4)]), pixel_values=torch.randn(1, 3, 48, 48), num_visual_tokens=4, max_new_tokens=3
    )
    assert out.shape[1] == len(prompt(4)) + 3


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model = make_model()
    model.train()
    input_ids = torch.tensor([prompt(16)])
    pixels = torch.randn(1, 3, 48, 48)

    def loss_and_grad():
        model.zero_grad()
        loss = model(input_ids=input_ids, pixel_values=pixels, labels=input_ids).loss
        loss.backward()
        return loss.detach(), model.lm_head.weight.grad.clone()

    plain = loss_and_grad()
    # transformers 5.23 names it activation_checkpointing_enable, 5.19 gradient_checkpointing_enable
    enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
    enable()
    assert model.model.language_model.gradient_checkpointing
    checkpointed = loss_and_grad()
    torch.testing.assert_close(plain[0], checkpointed[0])
    torch.testing.assert_close(plain[1], checkpointed[1])


def test_bf16_forward():
    model = make_model().to(torch.bfloat16)
    out = model(input_ids=torch.tensor([prompt(16)]), pixel_values=torch.randn(1, 3, 48, 48, dtype=torch.bfloat16))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()


@pytest.mark.parametrize("settings", [{}, {"delta_layout": "shared_base", "window_size": 2}])
def test_save_load_round_trip_is_exact(tmp_path, settings):
    model = make_model(**settings)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = DeltaLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    inputs = {"input_ids": torch.tensor([prompt(16)]), "pixel_values": torch.randn(1, 3, 48, 48)}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, loaded(**inputs).logits, rtol=0, atol=0)


def test_device_map_auto_and_sdpa(tmp_path):
    make_model().save_pretrained(tmp_path)
    loaded = DeltaLlavaForConditionalGeneration.from_pretrained(tmp_path, device_map="auto", attn_implementation="sdpa")
    assert loaded.config.text_config._attn_implementation == "sdpa"
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert loaded._no_split_modules == {"OfficialDeltaProjector", "CLIPEncoderLayer", "LlamaDecoderLayer"}


def test_base_model_returns_hidden_states():
    torch.manual_seed(0)
    model = DeltaLlavaModel(tiny_config()).eval()
    out = model(input_ids=torch.tensor([prompt(16)]), pixel_values=torch.randn(1, 3, 48, 48))
    assert out.last_hidden_state.shape == (1, 21, 48)
