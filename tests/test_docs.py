"""README.md and docs/: every fenced block is marked runnable or says why not, the runnable ones run as written
(offline, on a tiny checkpoint where the quick start leaves its own), and every relative link resolves."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_projector_sizes, tiny_vision_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from servable_checkpoint import write_random_checkpoint  # noqa: E402

PAGES = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"^\s*<!-- doc-test: (run|skip \((?P<reason>.+)\)) -->$")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def fenced_blocks(page: Path) -> list[dict]:
    """Each fenced block of a page: its language, code, first line number and the marker line above it (or None)."""
    lines = page.read_text().split("\n")
    blocks, opened = [], None
    for number, line in enumerate(lines):
        if not line.lstrip().startswith("```"):
            continue
        if opened is None:
            above = next((lines[i] for i in range(number - 1, -1, -1) if lines[i].strip()), "")
            indent = len(line) - len(line.lstrip())
            opened = {"language": line.strip()[3:], "start": number + 1, "marker": MARKER.match(above), "indent": indent}
        else:
            code = "\n".join(text[opened["indent"] :] for text in lines[opened["start"] : number])
            blocks.append({**opened, "code": code, "where": f"{page.relative_to(REPO)}:{opened['start']}"})
            opened = None
    assert opened is None, f"{page}: a fenced block is never closed"
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
RUNNABLE = [block for block in ALL_BLOCKS if block["marker"] and block["marker"].group(1) == "run"]


def test_every_block_is_marked_runnable_or_says_why_not():
    unmarked = [block["where"] for block in ALL_BLOCKS if block["marker"] is None]
    assert not unmarked, f"blocks without a `<!-- doc-test: run -->` or `<!-- doc-test: skip (reason) -->` line: {unmarked}"
    assert len(RUNNABLE) >= 3


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder where the quick start has left its checkpoint (here a tiny random one)."""
    root = tmp_path_factory.mktemp("docs")
    write_random_checkpoint(root / "outputs" / "quickstart" / "checkpoint", vision_config=tiny_vision_config(),
                            num_visual_tokens=16, **tiny_projector_sizes())  # fmt: skip
    return root


@pytest.mark.parametrize("block", RUNNABLE, ids=[block["where"] for block in RUNNABLE])
def test_runnable_blocks_run_as_written(block, workspace):
    runner = {"python": [sys.executable, "-c"], "bash": ["bash", "-euo", "pipefail", "-c"]}[block["language"]]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run([*runner, block["code"]], cwd=workspace, capture_output=True, text=True, timeout=600, env=environment)
    assert run.returncode == 0, f"{block['where']} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings (outside fenced blocks)."""
    anchors, fence = set(), False
    for line in page.read_text().split("\n"):
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and re.match(r"^#{1,6} ", line):
            text = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for match in LINK.finditer(text):
            target = match.group("target")
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path) if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
