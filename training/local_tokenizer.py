"""A word-level tokenizer trained on the spot with the `tokenizers` library, for tiny models built offline.

Tests and the quick start cannot download a real tokenizer, so they train this one on the words of their data.
Each word and each punctuation character is one token, which keeps one-word answers one token long.
"""

import string
from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
IMAGE_TOKEN = "<image>"

# Words the default chat template writes, so a prompt never contains unknown tokens of its own.
TEMPLATE_WORDS = ("USER", "ASSISTANT")

# One punctuation character per token; an apostrophe inside a word ("don't") stays in the word.
_PUNCTUATION_PATTERN = r"[^\w\s']|(?<!\w)'|'(?!\w)"

# Punctuation written without a space before it when decoding (the WordPiece clean-up handles . , ? ! and 's).
_CLOSING_PUNCTUATION = (":", ";", ")", "]", "}", "%")


def build_word_level_tokenizer(
    words: Iterable[str],
    extra_special_tokens: Sequence[str] = (),
    padding_side: str = "left",
) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on `words` (single words or whole sentences).

    Special tokens come first, in this order: `<pad>` (0), `<s>` (1), `</s>` (2), `<unk>` (3), `<image>` (4),
    then `extra_special_tokens`; then, most frequent first, the chat-template words ("USER", "ASSISTANT"), every
    ASCII punctuation character and the words of `words`. Text is split on whitespace and around each punctuation character (an apostrophe inside a word,
    as in "don't", stays in it); words outside the vocabulary become `<unk>`. Encoding adds `<s>` in front;
    decoding joins words with spaces and attaches punctuation.

    Args:
        words: the training text, e.g. every question and answer of a dataset.
        extra_special_tokens: more tokens that must never be split, e.g. `("<mask>",)`.
        padding_side: `"left"` (the default, what batched generation needs) or `"right"`.

    Returns:
        A `PreTrainedTokenizerFast` with `bos_token`, `eos_token`, `pad_token`, `unk_token` and
        `image_token` (`tokenizer.image_token_id`) set; it saves and loads with `save_pretrained` /
        `AutoTokenizer.from_pretrained`.
    """
    if isinstance(words, str):
        raise TypeError("`words` must be an iterable of strings (words or sentences), not a single string.")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    special_tokens = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_TOKEN]
    special_tokens += [token for token in extra_special_tokens if token not in special_tokens]

    backend = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(_PUNCTUATION_PATTERN), behavior="isolated")]
    )
    backend.decoder = decoders.Sequence(
        [decoders.WordPiece(prefix="##", cleanup=True)]
        + [decoders.Replace(f" {mark}", mark) for mark in _CLOSING_PUNCTUATION]
    )
    trainer = trainers.WordLevelTrainer(special_tokens=special_tokens, min_frequency=1, show_progress=False)
    corpus = [*TEMPLATE_WORDS, *string.punctuation]
    backend.train_from_iterator(_chain(corpus, words), trainer=trainer)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        image_token=IMAGE_TOKEN,
        extra_special_tokens=special_tokens[5:],
        add_bos_token=True,
        add_eos_token=False,
        padding_side=padding_side,
        model_input_names=["input_ids", "attention_mask"],
    )


def _chain(corpus: list[str], words: Iterable[str]) -> Iterable[str]:
    yield from corpus
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"`words` must contain only strings; got {type(word).__name__}: {word!r}.")
        yield word
