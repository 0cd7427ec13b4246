"""Deterministic synthetic visual question answering set (DESIGN §7).

Each scene is a ``grid_size`` x ``grid_size`` layout of cells on a plain background. A cell is empty, holds one
shape (a colour, a shape and a size), or holds one printed word drawn with PIL's default bitmap font. Small
shapes and printed words are what make the number of visual tokens matter.

Every row asks one question about one scene. Question types:

- ``attribute``: the colour, shape or size of the shape in a named cell;
- ``position``: the cell of a shape named by colour and shape (only asked when that pair is unique);
- ``count``: how many shapes have a given colour or shape;
- ``existence``: whether a colour/shape pair is present, answered yes or no (balanced, like POPE);
- ``text``: the printed word;
- ``caption``: a deterministic description listing the cells' contents in reading order.

Answers come from a small closed vocabulary and are balanced: every choice that has some freedom picks the
answer used least so far for its question type (ties broken by the seeded generator), and count questions
choose the count first and build the scene around it. Everything depends only on the arguments, so the same
seed gives the same images and texts; use different seeds for train and test
(e.g. ``make_synthetic_vqa(4000, seed=0)`` and ``make_synthetic_vqa(400, seed=1)``).
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import datasets
from datasets.features.image import encode_pil_image
from PIL import Image, ImageDraw, ImageFont

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
TEXT_WORDS: tuple[str, ...] = ("cat", "dog", "sun", "box", "car", "hat")
QUESTION_TYPES: tuple[str, ...] = ("attribute", "position", "count", "existence", "text", "caption")
ATTRIBUTE_KINDS: tuple[str, ...] = ("color", "shape", "size")
YES, NO = "yes", "no"

BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
DEFAULT_MAX_OBJECTS = 4
MIN_CELL_PIXELS = 8
TEXT_PROBABILITY = 0.5
SIZE_FRACTIONS = {"small": 0.4, "large": 0.8}
TEXT_FILL = 0.9  # largest share of a cell side a printed word may cover

ATTRIBUTE_QUESTION = "what {kind} is the object in the {position} cell ?"
POSITION_QUESTION = "where is the {color} {shape} ?"
COUNT_COLOR_QUESTION = "how many {color} shapes are there ?"
COUNT_SHAPE_QUESTION = "how many {shape}s are there ?"
EXISTENCE_QUESTION = "is there a {color} {shape} ?"
TEXT_QUESTION = "what word is written ?"
CAPTION_QUESTION = "describe the image ."
CAPTION_JOINER = " and "
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")

# Dense per-cell classes: 0 = empty, then every (colour, shape, size), then every printed word.
CELL_LABEL_NAMES: tuple[str, ...] = (
    ("empty",)
    + tuple(f"{size} {color} {shape}" for color in COLORS for shape in SHAPES for size in SIZES)
    + tuple(f"word {word}" for word in TEXT_WORDS)
)


@dataclass(frozen=True)
class ShapeObject:
    """One shape in a cell; ``jitter`` in [-1, 1]^2 moves a small shape inside its cell."""

    color: str
    shape: str
    size: str
    jitter: tuple[float, float]

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class PrintedWord:
    """One printed word in a cell."""

    word: str

    @property
    def phrase(self) -> str:
        return f"word {self.word}"


CellContent = ShapeObject | PrintedWord | None


@dataclass(frozen=True)
class Scene:
    """Cell contents in row-major order: ``cells[row * grid_size + column]``."""

    grid_size: int
    cells: tuple[CellContent, ...]

    def shapes(self) -> list[tuple[int, ShapeObject]]:
        return [(index, cell) for index, cell in enumerate(self.cells) if isinstance(cell, ShapeObject)]

    def cell_labels(self) -> list[int]:
        """Class index of each cell (length ``grid_size**2``), indexing ``CELL_LABEL_NAMES``."""
        return [0 if cell is None else CELL_LABEL_NAMES.index(cell.phrase) for cell in self.cells]

    def caption(self) -> str:
        return CAPTION_JOINER.join(cell.phrase for cell in self.cells if cell is not None)


@dataclass(frozen=True)
class CountPlan:
    """A count question decided before its scene: exactly ``count`` shapes have ``value`` for ``kind``."""

    kind: str
    value: str
    count: int


def position_names(grid_size: int) -> list[str]:
    """Name of every cell in row-major order, e.g. ``"top left"``; grids above 3 use ``"row2 col3"``."""
    _check_grid_size(grid_size)
    if grid_size == 2:
        rows, columns = ["top", "bottom"], ["left", "right"]
    elif grid_size == 3:
        rows, columns = ["top", "middle", "bottom"], ["left", "center", "right"]
    else:
        rows = [f"row{index + 1}" for index in range(grid_size)]
        columns = [f"col{index + 1}" for index in range(grid_size)]
    return [f"{row} {column}" for row in rows for column in columns]


def answer_vocabulary(grid_size: int = 3, max_objects: int | None = None) -> list[str]:
    """Every possible answer except captions (which are phrases built from ``word_vocabulary`` words)."""
    max_objects = _resolve_max_objects(grid_size, max_objects)
    counts = [str(count) for count in range(max_objects + 1)]
    return [YES, NO, *COLORS, *SHAPES, *SIZES, *counts, *position_names(grid_size), *TEXT_WORDS]


def word_vocabulary(grid_size: int = 3, max_objects: int | None = None) -> list[str]:
    """Sorted set of every word and punctuation mark that questions and answers can contain.

    Texts split into words with ``split_words`` (the same split as the ``tokenizers`` Whitespace
    pre-tokenizer on these texts), so a word-level tokenizer trained on this list covers the whole set.
    """
    texts = [*_all_questions(grid_size), *answer_vocabulary(grid_size, max_objects), CAPTION_JOINER]
    texts += [name for name in CELL_LABEL_NAMES if name != "empty"]
    return sorted({word for text in texts for word in split_words(text)})


def split_words(text: str) -> list[str]:
    """Split a question or answer into words and single punctuation marks."""
    return WORD_PATTERN.findall(text)


def make_synthetic_vqa(
    num_samples: int,
    seed: int,
    image_size: int = 64,
    grid_size: int = 3,
    question_types: Sequence[str] = QUESTION_TYPES,
    max_objects: int | None = None,
    questions_per_scene: int = 1,
) -> datasets.Dataset:
    """Build the set as a ``datasets.Dataset`` (see ``iter_synthetic_vqa`` for the arguments and columns)."""
    rows = list(
        iter_synthetic_vqa(num_samples, seed, image_size, grid_size, question_types, max_objects, questions_per_scene)
    )
    # id(image) -> the image encoded as `datasets.Image` stores it. Handing it over encoded skips the feature's own
    # encoder, which compresses each row's image twice (~0.5 ms a row, 9 s of the quick start's 18,000), and the rows
    # of one scene share the image: it is encoded once. Every image is alive in `rows` before the loop starts, so no
    # two of them share an id.
    stored: dict[int, dict] = {}
    for row in rows:
        for image in row["images"]:
            if id(image) not in stored:
                stored[id(image)] = encode_pil_image(image)
        row["images"] = [stored[id(image)] for image in row["images"]]
    columns = {name: [row[name] for row in rows] for name in FEATURES}
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def iter_synthetic_vqa(
    num_samples: int,
    seed: int,
    image_size: int = 64,
    grid_size: int = 3,
    question_types: Sequence[str] = QUESTION_TYPES,
    max_objects: int | None = None,
    questions_per_scene: int = 1,
) -> Iterator[dict]:
    """Yield ``num_samples`` rows, deterministically for a given seed.

    Row ``i`` asks a question of type ``question_types[i % len(question_types)]``, so types are balanced
    exactly. ``questions_per_scene`` consecutive rows share one scene and ask distinct questions of distinct
    types about it. Each row is a dict with ``images`` (one RGB PIL image, ``image_size`` x ``image_size``),
    ``messages`` (user question text, then the image; assistant answer), ``question_type``, ``answer`` and
    ``cell_labels`` (``grid_size**2`` ints indexing ``CELL_LABEL_NAMES``, row-major).
    """
    question_types = _check_arguments(num_samples, image_size, grid_size, question_types, questions_per_scene)
    max_objects = _resolve_max_objects(grid_size, max_objects)
    rng = random.Random(seed)
    balancer = _AnswerBalancer(rng)
    for first_row in range(0, num_samples, questions_per_scene):
        scene_size = min(questions_per_scene, num_samples - first_row)
        types = [question_types[(first_row + offset) % len(question_types)] for offset in range(scene_size)]
        scene, questions = _scene_with_questions(rng, balancer, grid_size, max_objects, types)
        image = render_scene(scene, image_size)
        labels = scene.cell_labels()
        for question_type, (question, answer) in zip(types, questions):
            balancer.record(question_type, answer)
            yield {
                "images": [image],
                "messages": _chat(question, answer),
                "question_type": question_type,
                "answer": answer,
                "cell_labels": labels,
            }


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Draw a scene as an RGB image of ``image_size`` x ``image_size`` pixels."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    edges = [round(index * image_size / scene.grid_size) for index in range(scene.grid_size + 1)]
    for index, cell in enumerate(scene.cells):
        row, column = divmod(index, scene.grid_size)
        box = (edges[column], edges[row], edges[column + 1], edges[row + 1])
        if isinstance(cell, ShapeObject):
            _draw_shape(draw, cell, box)
        elif isinstance(cell, PrintedWord):
            _draw_word(image, cell.word, box)
    return image


def answer_priors(dataset: datasets.Dataset) -> dict[str, dict]:
    """Per question type, what answering without looking at the image reaches on ``dataset``.

    Rows are grouped by ``question_kind`` (attribute questions split by the attribute asked; every other type is
    one kind). For each type: ``majority_answers`` maps each of its kinds to the kind's most frequent answer,
    ``majority_accuracy`` is the share of the type's rows those answers get right, ``chance`` the expected
    accuracy of guessing uniformly among the answers that occur for the row's kind, and ``num_samples``.
    """
    answers_by_kind: dict[tuple[str, str], list[str]] = defaultdict(list)
    for question_type, answer, messages in zip(dataset["question_type"], dataset["answer"], dataset["messages"]):
        answers_by_kind[question_type, question_kind(question_type, question_text(messages))].append(answer)
    priors: dict[str, dict] = {}
    for (question_type, kind), answers in answers_by_kind.items():
        majority_answer, hits = Counter(answers).most_common(1)[0]
        prior = priors.setdefault(
            question_type, {"majority_answers": {}, "majority_accuracy": 0.0, "chance": 0.0, "num_samples": 0}
        )
        prior["majority_answers"][kind] = majority_answer
        prior["majority_accuracy"] += hits
        prior["chance"] += len(answers) / len(set(answers))
        prior["num_samples"] += len(answers)
    for prior in priors.values():
        prior["majority_accuracy"] /= prior["num_samples"]
        prior["chance"] /= prior["num_samples"]
    return priors


def question_kind(question_type: str, question: str) -> str:
    """Which set of answers a question draws from: the asked attribute for ``attribute``, else the type."""
    if question_type != "attribute":
        return question_type
    for kind in ATTRIBUTE_KINDS:
        if question.startswith(f"what {kind} "):
            return kind
    raise ValueError(f"question must ask one of {list(ATTRIBUTE_KINDS)} for an attribute question, got {question!r}")


def question_text(messages: list[dict]) -> str:
    """The text of the first user turn of a chat-format conversation."""
    for message in messages:
        if message["role"] == "user":
            return " ".join(item["text"] for item in message["content"] if item["type"] == "text")
    raise ValueError("messages has no user turn")


FEATURES = datasets.Features(
    {
        "images": datasets.List(datasets.Image()),
        "messages": datasets.List(
            {
                "role": datasets.Value("string"),
                "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
            }
        ),
        "question_type": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "cell_labels": datasets.List(datasets.Value("int32")),
    }
)


class _AnswerBalancer:
    """Counts the answers given so far per question type and picks the least used among those possible."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counts: dict[str, Counter[str]] = defaultdict(Counter)

    def record(self, question_type: str, answer: str) -> None:
        self.counts[question_type][answer] += 1

    def least_used(self, question_type: str, answers: Sequence[str]) -> str:
        used = self.counts[question_type]
        fewest = min(used[answer] for answer in answers)
        return self.rng.choice(sorted({answer for answer in answers if used[answer] == fewest}))

    def pick(self, question_type: str, candidates: list[tuple[str, str]]) -> tuple[str, str] | None:
        """Choose a (question, answer) pair whose answer has been used least; None if there is none."""
        if not candidates:
            return None
        answer = self.least_used(question_type, [answer for _, answer in candidates])
        return self.rng.choice([candidate for candidate in candidates if candidate[1] == answer])


def _scene_with_questions(
    rng: random.Random, balancer: _AnswerBalancer, grid_size: int, max_objects: int, types: list[str]
) -> tuple[Scene, list[tuple[str, str]]]:
    """Sample a scene that can answer every requested type, and one (question, answer) per type."""
    count_plan = None
    if "count" in types:
        count = int(balancer.least_used("count", [str(count) for count in range(max_objects + 1)]))
        kind = rng.choice(["color", "shape"])
        count_plan = CountPlan(kind, rng.choice(list(COLORS) if kind == "color" else SHAPES), count)
    word = balancer.least_used("text", TEXT_WORDS) if "text" in types else None
    while True:
        scene = _sample_scene(rng, grid_size, max_objects, count_plan, word)
        questions = [_question(rng, balancer, scene, question_type, count_plan) for question_type in types]
        if all(question is not None for question in questions):
            return scene, questions


def _sample_scene(
    rng: random.Random, grid_size: int, max_objects: int, count_plan: CountPlan | None, word: str | None
) -> Scene:
    """Place 1..max_objects shapes (honouring ``count_plan``) and maybe a word in distinct random cells."""
    has_word = word is not None or rng.random() < TEXT_PROBABILITY
    if has_word and word is None:
        word = rng.choice(TEXT_WORDS)
    num_objects = rng.randint(max(1, count_plan.count if count_plan else 0), max_objects)
    cells: list[CellContent] = [None] * grid_size**2
    positions = rng.sample(range(grid_size**2), num_objects + has_word)
    planned = set(rng.sample(range(num_objects), count_plan.count)) if count_plan else set()
    for object_index, position in enumerate(positions[:num_objects]):
        cells[position] = _sample_shape(rng, count_plan, object_index in planned)
    if has_word:
        cells[positions[-1]] = PrintedWord(word)
    return Scene(grid_size, tuple(cells))


def _sample_shape(rng: random.Random, count_plan: CountPlan | None, matches_plan: bool) -> ShapeObject:
    colors, shapes = list(COLORS), list(SHAPES)
    if count_plan is not None:
        options = colors if count_plan.kind == "color" else shapes
        allowed = [count_plan.value] if matches_plan else [value for value in options if value != count_plan.value]
        if count_plan.kind == "color":
            colors = allowed
        else:
            shapes = allowed
    jitter = (rng.uniform(-1, 1), rng.uniform(-1, 1))
    return ShapeObject(rng.choice(colors), rng.choice(shapes), rng.choice(SIZES), jitter)


def _question(
    rng: random.Random, balancer: _AnswerBalancer, scene: Scene, question_type: str, count_plan: CountPlan | None
) -> tuple[str, str] | None:
    """One (question, answer) of the given type about the scene, or None if the scene cannot support it."""
    names = position_names(scene.grid_size)
    shapes = scene.shapes()
    if question_type == "attribute":
        candidates = [
            (ATTRIBUTE_QUESTION.format(kind=kind, position=names[index]), getattr(shape, kind))
            for index, shape in shapes
            for kind in ATTRIBUTE_KINDS
        ]
        return balancer.pick(question_type, candidates)
    pairs = Counter((shape.color, shape.shape) for _, shape in shapes)
    if question_type == "position":
        candidates = [
            (POSITION_QUESTION.format(color=shape.color, shape=shape.shape), names[index])
            for index, shape in shapes
            if pairs[shape.color, shape.shape] == 1
        ]
        return balancer.pick(question_type, candidates)
    if question_type == "existence":
        candidates = [
            (EXISTENCE_QUESTION.format(color=color, shape=shape), YES if pairs[color, shape] else NO)
            for color in COLORS
            for shape in SHAPES
        ]
        return balancer.pick(question_type, candidates)
    if question_type == "count":
        template = COUNT_COLOR_QUESTION if count_plan.kind == "color" else COUNT_SHAPE_QUESTION
        question = template.format(color=count_plan.value, shape=count_plan.value)
        return question, str(sum(getattr(shape, count_plan.kind) == count_plan.value for _, shape in shapes))
    if question_type == "text":
        words = [cell.word for cell in scene.cells if isinstance(cell, PrintedWord)]
        return TEXT_QUESTION, words[0]
    return CAPTION_QUESTION, scene.caption()


def _all_questions(grid_size: int) -> list[str]:
    names = position_names(grid_size)
    return [
        *(ATTRIBUTE_QUESTION.format(kind=kind, position=name) for kind in ATTRIBUTE_KINDS for name in names),
        *(POSITION_QUESTION.format(color=color, shape=shape) for color in COLORS for shape in SHAPES),
        *(EXISTENCE_QUESTION.format(color=color, shape=shape) for color in COLORS for shape in SHAPES),
        *(COUNT_COLOR_QUESTION.format(color=color) for color in COLORS),
        *(COUNT_SHAPE_QUESTION.format(shape=shape) for shape in SHAPES),
        TEXT_QUESTION,
        CAPTION_QUESTION,
    ]


def _chat(question: str, answer: str) -> list[dict]:
    """One user turn (question text, then the image) and one assistant turn (the answer)."""
    return [
        {"role": "user", "content": [{"type": "text", "text": question}, {"type": "image", "text": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: ShapeObject, box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    side = max(2, round(SIZE_FRACTIONS[shape.size] * min(right - left, bottom - top)))
    slack_x, slack_y = (right - left - side) / 2 - 1, (bottom - top - side) / 2 - 1
    x0 = round(left + (right - left - side) / 2 + shape.jitter[0] * max(0.0, slack_x))
    y0 = round(top + (bottom - top - side) / 2 + shape.jitter[1] * max(0.0, slack_y))
    x1, y1 = x0 + side - 1, y0 + side - 1
    fill = COLORS[shape.color]
    if shape.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)


def _draw_word(image: Image.Image, word: str, box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    mask = _word_mask(word, right - left, bottom - top)
    x0 = left + (right - left - mask.width) // 2
    y0 = top + (bottom - top - mask.height) // 2
    image.paste(TEXT_COLOR, (x0, y0, x0 + mask.width, y0 + mask.height), mask)


@lru_cache(maxsize=256)
def _word_mask(word: str, cell_width: int, cell_height: int) -> Image.Image:
    """The word in PIL's bitmap font as an "L" mask within ``TEXT_FILL`` of the cell (integer zoom when it fits).

    The font is 11 px tall and 6 px per letter, so a 3-letter word stays crisp from 20 px cells (60 px images on
    a 3x3 grid); smaller cells shrink it with box filtering.
    """
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(word)
    glyphs = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(glyphs).text((-left, -top), word, fill=255, font=font)
    scale = min(TEXT_FILL * cell_width / glyphs.width, TEXT_FILL * cell_height / glyphs.height)
    if scale >= 1:
        zoom = int(scale)
        return glyphs.resize((glyphs.width * zoom, glyphs.height * zoom), Image.Resampling.NEAREST)
    size = (max(1, round(glyphs.width * scale)), max(1, round(glyphs.height * scale)))
    return glyphs.resize(size, Image.Resampling.BOX)


def _check_grid_size(grid_size: int) -> None:
    if not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"grid_size must be an integer >= 2 (a word and a shape need two cells), got {grid_size!r}")


def _resolve_max_objects(grid_size: int, max_objects: int | None) -> int:
    _check_grid_size(grid_size)
    limit = grid_size**2 - 1
    if max_objects is None:
        return min(DEFAULT_MAX_OBJECTS, limit)
    if not isinstance(max_objects, int) or not 1 <= max_objects <= limit:
        raise ValueError(
            f"max_objects must be an integer in [1, {limit}] for grid_size={grid_size}, got {max_objects!r}"
        )
    return max_objects


def _check_arguments(
    num_samples: int, image_size: int, grid_size: int, question_types: Sequence[str], questions_per_scene: int
) -> list[str]:
    """Validate the generator's arguments; return the question types as a list."""
    if not isinstance(num_samples, int) or num_samples < 0:
        raise ValueError(f"num_samples must be an integer >= 0, got {num_samples!r}")
    _check_grid_size(grid_size)
    if not isinstance(image_size, int) or image_size < MIN_CELL_PIXELS * grid_size:
        raise ValueError(
            f"image_size must be an integer >= {MIN_CELL_PIXELS} * grid_size = {MIN_CELL_PIXELS * grid_size}, "
            f"got {image_size!r}"
        )
    if isinstance(question_types, str):
        question_types = [question_types]
    question_types = list(question_types)
    unknown = [name for name in question_types if name not in QUESTION_TYPES]
    if unknown or not question_types or len(set(question_types)) != len(question_types):
        raise ValueError(
            f"question_types must be distinct names from {list(QUESTION_TYPES)}, got {question_types!r}"
        )
    if not isinstance(questions_per_scene, int) or not 1 <= questions_per_scene <= len(question_types):
        raise ValueError(
            f"questions_per_scene must be an integer in [1, len(question_types) = {len(question_types)}], "
            f"got {questions_per_scene!r}"
        )
    return question_types
