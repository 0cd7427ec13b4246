"""Tests for the LLaVA JSON converter: conversion, placeholder positions, bad-row reporting and the CLI."""

import json
import logging
import os
import subprocess
import sys

import pytest
from datasets import load_from_disk
from PIL import Image

from delta_llava.training.llava_json import BAD_ROW_REASONS, convert_llava_json, main


def text(value):
    return {"type": "text", "text": value}


IMAGE = {"type": "image", "text": None}


@pytest.fixture
def image_folder(tmp_path):
    """A folder with three tiny PNGs of distinct sizes, one in a subfolder."""
    folder = tmp_path / "images"
    (folder / "coco").mkdir(parents=True)
    Image.new("RGB", (4, 4), "red").save(folder / "red.png")
    Image.new("RGB", (6, 6), "green").save(folder / "green.png")
    Image.new("L", (8, 8), 128).save(folder / "coco" / "gray.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def write_json(path, records):
    path.write_text(json.dumps(records))
    return path


def turn(role, value):
    return {"from": role, "value": value}


def qa(question, answer="Answer."):
    return [turn("human", question), turn("gpt", answer)]


GOOD_RECORDS = [
    {"id": "before", "image": "red.png", "conversations": qa("<image>\nWhat colour?", "Red")},
    {"id": "after", "image": "coco/gray.png", "conversations": qa("Describe:\n<image>", "Grey")},
    {
        "id": 7,
        "image": ["red.png", "green.png"],
        "conversations": [
            turn("system", "Be brief."),
            turn("human", "Compare <image> with <image> please."),
            turn("gpt", "Red vs green."),
            turn("human", "Which is larger?"),
            turn("gpt", "Green."),
        ],
    },
    {"id": "text-only", "conversations": [turn("human", "Hello?"), turn("gpt", "Hi.")]},
]


def test_converts_messages_images_and_ids(tmp_path, image_folder):
    dataset, report = convert_llava_json(write_json(tmp_path / "data.json", GOOD_RECORDS), image_folder)

    assert dataset.column_names == ["id", "images", "messages"]
    assert dataset["id"] == ["before", "after", "7", "text-only"]
    assert report.num_records == report.num_converted == 4 and report.bad_rows == []

    assert dataset[0]["messages"] == [
        {"role": "user", "content": [IMAGE, text("What colour?")]},
        {"role": "assistant", "content": [text("Red")]},
    ]
    assert dataset[1]["messages"][0]["content"] == [text("Describe:"), IMAGE]
    assert [message["role"] for message in dataset[2]["messages"]] == [
        "system", "user", "assistant", "user", "assistant"
    ]
    assert dataset[2]["messages"][1]["content"] == [text("Compare"), IMAGE, text("with"), IMAGE, text("please.")]
    assert dataset[3]["images"] == []

    assert [image.size for image in dataset[2]["images"]] == [(4, 4), (6, 6)]
    assert dataset[1]["images"][0].mode == "L"


def test_images_are_stored_as_paths_not_bytes(tmp_path, image_folder):
    dataset, _ = convert_llava_json(write_json(tmp_path / "data.json", GOOD_RECORDS[:1]), image_folder)
    stored = dataset.with_format("arrow")[0]["images"].to_pylist()[0][0]
    assert stored == {"bytes": None, "path": str(image_folder / "red.png")}


def test_reads_jsonl(tmp_path, image_folder):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(record) for record in GOOD_RECORDS) + "\n\n")
    dataset, _ = convert_llava_json(path, image_folder)
    assert len(dataset) == len(GOOD_RECORDS)


BAD_RECORDS = {
    "missing_image_file": {"image": "nowhere.png", "conversations": qa("<image>\nWhat?")},
    "missing_placeholder": {"image": "red.png", "conversations": qa("What is shown?")},
    "extra_placeholder": {"image": "red.png", "conversations": qa("<image> and <image>?")},
    "placeholder_without_image": {"conversations": qa("<image>\nWhat?")},
    "placeholder_in_assistant_turn": {"image": "red.png", "conversations": qa("What?", "<image>")},
    "unknown_role": {"conversations": [turn("human", "Hi"), turn("robot", "Beep")]},
    "empty_conversation": {"conversations": []},
    "turns_not_alternating": {"conversations": [turn("human", "Hi"), turn("human", "Hello?"), turn("gpt", "Hi.")]},
    "malformed_record": {"image": "red.png"},
}


@pytest.mark.parametrize("reason", sorted(BAD_RECORDS))
def test_bad_row_skipped_and_reported(tmp_path, image_folder, reason, caplog):
    records = [GOOD_RECORDS[0], {"id": f"bad-{reason}", **BAD_RECORDS[reason]}, GOOD_RECORDS[3]]
    with caplog.at_level(logging.WARNING):
        dataset, report = convert_llava_json(write_json(tmp_path / "data.json", records), image_folder, "skip")

    assert dataset["id"] == ["before", "text-only"]
    assert (report.num_records, report.num_converted) == (3, 2)
    assert [(row.id, row.reason) for row in report.bad_rows] == [(f"bad-{reason}", reason)]
    assert report.reason_counts == {reason: 1}
    assert f"bad-{reason}" in caplog.text and reason in caplog.text


@pytest.mark.parametrize("reason", sorted(BAD_RECORDS))
def test_bad_row_raises_with_id(tmp_path, image_folder, reason):
    records = [GOOD_RECORDS[0], {"id": f"bad-{reason}", **BAD_RECORDS[reason]}]
    with pytest.raises(ValueError, match=f"(?s){reason}.*bad-{reason}.*on_bad_row='skip'"):
        convert_llava_json(write_json(tmp_path / "data.json", records), image_folder, "raise")


def test_turn_order_rules(tmp_path, image_folder):
    conversations = {
        "ends-with-user": [turn("human", "Hi"), turn("gpt", "Hi."), turn("human", "And?")],
        "starts-with-assistant": [turn("gpt", "Hi."), turn("human", "Hi")],
        "late-system": [turn("human", "Hi"), turn("system", "Be brief."), turn("gpt", "Hi.")],
        "only-system": [turn("system", "Be brief.")],
    }
    records = [{"id": row_id, "conversations": turns} for row_id, turns in conversations.items()]
    records.append({"id": "ok", "conversations": qa("Hi")})
    _, report = convert_llava_json(write_json(tmp_path / "data.json", records), image_folder, "skip")
    assert report.ids_for("turns_not_alternating") == list(conversations)


def test_two_placeholders_for_one_image_reports_counts(tmp_path, image_folder):
    records = [{"id": "twice", "image": "red.png", "conversations": qa("<image>\n<image>\nSame?")}, GOOD_RECORDS[0]]
    _, report = convert_llava_json(write_json(tmp_path / "data.json", records), image_folder, "skip")
    assert report.bad_rows[0].detail == "2 `<image>` but 1 image(s)"


def test_raise_lists_every_bad_id_and_count(tmp_path, image_folder):
    records = [
        {"id": "gone-1", **BAD_RECORDS["missing_image_file"]},
        {"id": "gone-2", **BAD_RECORDS["missing_image_file"]},
        {"id": "no-tag", **BAD_RECORDS["missing_placeholder"]},
        GOOD_RECORDS[0],
    ]
    with pytest.raises(ValueError) as error:
        convert_llava_json(write_json(tmp_path / "data.json", records), image_folder)
    message = str(error.value)
    assert "3 bad record(s)" in message
    assert "missing_image_file (2)" in message and "missing_placeholder (1)" in message
    assert all(row_id in message for row_id in ("gone-1", "gone-2", "no-tag"))


def test_summary_truncates_long_id_lists(tmp_path, image_folder):
    records = [{"id": f"gone-{index}", **BAD_RECORDS["missing_image_file"]} for index in range(8)]
    records.append(GOOD_RECORDS[0])
    _, report = convert_llava_json(write_json(tmp_path / "data.json", records), image_folder, "skip")
    summary = report.summary(max_ids=3)
    assert "gone-2" in summary and "gone-3" not in summary and "and 5 more" in summary
    assert report.to_dict()["reason_counts"] == {"missing_image_file": 8}


def test_rows_without_id_are_reported_by_position(tmp_path, image_folder):
    records = [GOOD_RECORDS[0], BAD_RECORDS["missing_placeholder"]]
    _, report = convert_llava_json(write_json(tmp_path / "data.json", records), image_folder, "skip")
    assert report.bad_rows[0].id == "#1"


def test_images_are_verified_by_default_and_a_truncated_jpeg_is_a_bad_row(tmp_path, image_folder):
    Image.new("RGB", (64, 48), "blue").save(image_folder / "whole.jpg", quality=90)
    (image_folder / "truncated.jpg").write_bytes((image_folder / "whole.jpg").read_bytes()[:300])
    records = [
        {"id": "broken", "image": "broken.png", "conversations": qa("<image>\nWhat?")},
        {"id": "cut", "image": "truncated.jpg", "conversations": qa("<image>\nWhat?")},
        {"id": "fine", "image": "whole.jpg", "conversations": qa("<image>\nWhat?")},
    ]
    path = write_json(tmp_path / "data.json", records)
    _, report = convert_llava_json(path, image_folder, "skip")
    assert [(row.id, row.reason) for row in report.bad_rows] == [("broken", "unreadable_image"), ("cut", "unreadable_image")]
    assert "truncated.jpg" in report.bad_rows[1].detail
    assert convert_llava_json(path, image_folder, "skip", verify_images=False)[1].bad_rows == []


def test_image_paths_must_stay_inside_the_image_folder(tmp_path, image_folder):
    secret = tmp_path / "secret"
    secret.mkdir()
    Image.new("RGB", (4, 4), "black").save(secret / "creds.png")
    (image_folder / "link.png").symlink_to(secret / "creds.png")
    (image_folder / "inside_link.png").symlink_to(image_folder / "red.png")
    escapes = {"dotdot": "../secret/creds.png", "absolute": str(secret / "creds.png"), "symlink": "link.png"}
    records = [{"id": name, "image": image, "conversations": qa("<image>\nWhat?")} for name, image in escapes.items()]
    records.append({"id": "ok", "image": "inside_link.png", "conversations": qa("<image>\nWhat?")})
    dataset, report = convert_llava_json(write_json(tmp_path / "data.json", records), image_folder, "skip")
    assert [(row.id, row.reason) for row in report.bad_rows] == [(name, "image_outside_folder") for name in escapes]
    assert dataset["id"] == ["ok"]


def test_every_reason_is_documented():
    assert set(BAD_RECORDS) | {"unreadable_image", "image_outside_folder"} == set(BAD_ROW_REASONS)


def test_invalid_arguments_and_inputs(tmp_path, image_folder):
    path = write_json(tmp_path / "data.json", GOOD_RECORDS)
    with pytest.raises(ValueError, match="on_bad_row must be 'skip' or 'raise'"):
        convert_llava_json(path, image_folder, "ignore")
    with pytest.raises(FileNotFoundError, match="image_folder"):
        convert_llava_json(path, tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="json_path"):
        convert_llava_json(tmp_path / "missing.json", image_folder)
    with pytest.raises(ValueError, match="JSON list"):
        convert_llava_json(write_json(tmp_path / "object.json", {"id": 1}), image_folder)
    (tmp_path / "lines.json").write_text('{"id": 1}\n{"id": 2}\n')
    with pytest.raises(ValueError, match=r"\.jsonl"):
        convert_llava_json(tmp_path / "lines.json", image_folder)
    all_bad = write_json(tmp_path / "bad.json", [BAD_RECORDS["empty_conversation"]])
    with pytest.raises(ValueError, match="No usable records"):
        convert_llava_json(all_bad, image_folder, "skip")


def run_cli(*args):
    command = [sys.executable, "-m", "delta_llava.training.llava_json", *map(str, args)]
    environment = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)


def test_cli_saves_dataset_and_report(tmp_path, image_folder):
    records = [*GOOD_RECORDS, {"id": "bad-one", **BAD_RECORDS["missing_placeholder"]}]
    json_path = write_json(tmp_path / "data.json", records)
    output_dir = tmp_path / "converted"

    result = run_cli("--json_path", json_path, "--image_folder", image_folder, "--output_dir", output_dir,
                     "--on_bad_row", "skip")
    assert result.returncode == 0, result.stderr
    assert "4 converted, 1 bad" in result.stdout and "bad-one" in result.stdout

    dataset = load_from_disk(str(output_dir))
    assert dataset["id"] == ["before", "after", "7", "text-only"]
    assert dataset[2]["images"][1].size == (6, 6)
    saved_report = json.loads((output_dir / "llava_conversion_report.json").read_text())
    assert saved_report["reason_counts"] == {"missing_placeholder": 1}



def test_cli_refuses_bad_rows_by_default(tmp_path, image_folder):
    records = [GOOD_RECORDS[0], {"id": "bad-one", **BAD_RECORDS["extra_placeholder"]}]
    json_path = write_json(tmp_path / "data.json", records)
    arguments = ["--json_path", json_path, "--image_folder", image_folder, "--output_dir", tmp_path / "out"]
    with pytest.raises(SystemExit, match="(?s)bad-one.*--on_bad_row skip"):
        main([str(argument) for argument in arguments])
    assert not (tmp_path / "out").exists()
