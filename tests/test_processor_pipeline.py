"""The processor with the model through transformers' own entry points: `pipeline("image-text-to-text")` on a real
photo with chat messages, and `model.generate(**processor(...))` on a left-padded batch."""

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
from transformers import CLIPImageProcessor, pipeline

from conftest import tiny_config, tiny_text_config
from delta_llava import DeltaLlavaForConditionalGeneration
from delta_llava.processing import DeltaLlavaProcessor
from delta_llava.training.local_tokenizer import build_word_level_tokenizer

WORDS = "what is in the image describe it a man cup of coffee".split()


def tiny_model_and_processor(**object_settings):
    """A tiny random model and a processor that agree on vocabulary, image token and object-token settings."""
    tokenizer = build_word_level_tokenizer(WORDS)
    text_config = tiny_text_config(vocab_size=len(tokenizer))
    config = tiny_config(text_config=text_config, image_token_id=tokenizer.image_token_id, **object_settings)
    torch.manual_seed(0)
    model = DeltaLlavaForConditionalGeneration(config).eval()
    side = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    processor = DeltaLlavaProcessor(
        image_processor, tokenizer, num_visual_tokens=config.num_visual_tokens, mask_size=8, **object_settings
    )
    return model, processor


def photos() -> tuple[PIL.Image.Image, PIL.Image.Image]:
    return PIL.Image.fromarray(skimage.data.astronaut()), PIL.Image.fromarray(skimage.data.coffee())


def test_pipeline_answers_chat_messages_about_a_real_photo(tmp_path):
    model, processor = tiny_model_and_processor()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    chat = pipeline("image-text-to-text", model=str(tmp_path), trust_remote_code=True)
    assert type(chat.processor).__name__ == "DeltaLlavaProcessor"

    astronaut, _ = photos()
    content = [{"type": "image", "image": astronaut}, {"type": "text", "text": "describe the image"}]
    messages = [{"role": "user", "content": content}]
    full = chat(text=messages, max_new_tokens=4, generate_kwargs={"do_sample": False})
    reply = full[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and isinstance(reply["content"], str) and reply["content"].strip()

    budget = 4
    short = chat(
        text=messages,
        max_new_tokens=4,
        return_full_text=False,
        processor_kwargs={"num_visual_tokens": budget},
        generate_kwargs={"do_sample": False, "num_visual_tokens": budget},
    )
    assert isinstance(short[0]["generated_text"], str)


def test_generate_on_a_left_padded_batch_of_two_prompts_and_images():
    model, processor = tiny_model_and_processor()
    astronaut, coffee = photos()
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True,
        )
        for question in ("what is in the image", "describe it")
    ]
    budget = 4
    batch = processor(images=[astronaut, coffee], text=prompts, num_visual_tokens=budget)
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][0].all()  # the shorter prompt is padded left

    generated = model.generate(**batch, num_visual_tokens=budget, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, batch["input_ids"].shape[1] + 3)
    assert torch.equal(generated[:, : batch["input_ids"].shape[1]], batch["input_ids"])

    with torch.no_grad():
        batched_logits = model(**batch, num_visual_tokens=budget).logits[:, -1]
        for row, (photo, prompt) in enumerate(zip((astronaut, coffee), prompts)):
            single = processor(images=photo, text=prompt, num_visual_tokens=budget)
            single_logits = model(**single, num_visual_tokens=budget).logits[:, -1]
            torch.testing.assert_close(batched_logits[row : row + 1], single_logits, rtol=1e-4, atol=1e-4)


def test_generate_with_object_tokens_from_masks():
    model, processor = tiny_model_and_processor(use_object_tokens=True, max_object_tokens=2, use_global_token=True)
    astronaut, coffee = photos()
    masks = []
    for photo, num_objects in ((astronaut, 3), (coffee, 0)):
        stack = np.zeros((num_objects + 1, photo.height, photo.width), bool)
        for index in range(num_objects):
            stack[index, 40 * index : 40 * index + 60, 40 * index : 40 * index + 60] = True
        stack[-1] = ~stack[:-1].any(axis=0)  # background
        masks.append(stack)
    arguments = {
        "images": [astronaut, coffee],
        "text": ["<image> what is in the image", "<image> describe it"],
        "object_masks": masks,
    }
    batch = processor(**arguments)
    assert (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == [1 + 16 + 2, 1 + 16 + 1]
    generated = model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert generated.shape[1] == batch["input_ids"].shape[1] + 2

    fewer = processor(**arguments, max_object_tokens=1)
    assert (fewer["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == [1 + 16 + 1, 1 + 16 + 1]
    assert model.generate(**fewer, max_object_tokens=1, max_new_tokens=2, do_sample=False).shape[0] == 2


@pytest.mark.parametrize("budget", [1, 64])
def test_processor_and_model_agree_on_every_budget(budget):
    model, processor = tiny_model_and_processor()
    inputs = processor(images=photos()[0], text="<image> what is it", num_visual_tokens=budget)
    with torch.no_grad():
        logits = model(**inputs, num_visual_tokens=budget).logits
    assert logits.shape[1] == inputs["input_ids"].shape[1]


def test_pipeline_brings_masks_and_an_inverter_to_a_maskinversion_model(tmp_path):
    from mask_inversion_setup import EMBEDDING_WIDTH, tiny_clip

    from delta_llava.processing import MaskInversion

    settings = {"use_object_tokens": True}
    model, processor = tiny_model_and_processor(**settings)
    model = DeltaLlavaForConditionalGeneration(
        tiny_config(text_config=model.config.text_config.to_dict(), image_token_id=model.config.image_token_id,
                    object_features="mask_inversion", object_embedding_dim=EMBEDDING_WIDTH, **settings)
    ).eval()  # fmt: skip
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    chat = pipeline("image-text-to-text", model=str(tmp_path), trust_remote_code=True)
    astronaut, _ = photos()
    masks = np.zeros((2, *astronaut.size[::-1]), dtype=bool)
    masks[0, 100:300, 100:300], masks[1, 250:, :] = True, True
    messages = [{"role": "user", "content": [{"type": "image", "image": astronaut}, {"type": "text", "text": "describe it"}]}]
    inverted = []

    class RecordingInversion(MaskInversion):
        def __call__(self, pixel_values, masks, return_explainability_maps=False):
            inverted.append(len(masks))
            return super().__call__(pixel_values, masks, return_explainability_maps)

    inverter = RecordingInversion(tiny_clip(image_size=model.config.vision_config.image_size), iterations=1)
    reply = chat(
        text=messages, max_new_tokens=3, return_full_text=False, generate_kwargs={"do_sample": False},
        processor_kwargs={"object_masks": [masks], "object_mask_inverter": inverter},
    )  # fmt: skip
    assert isinstance(reply[0]["generated_text"], str) and inverted == [2]  # the image's two masks, inverted once
