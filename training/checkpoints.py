"""Whole checkpoints: a `checkpoint-N/` folder counts only once its completion record is written, after every file
of every process; resuming picks or accepts only such folders, with their optimizer, scheduler and RNG states."""

import json
import os
import re
from pathlib import Path

COMPLETE_RECORD = "checkpoint_complete.json"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
# What a resume restores besides the weights: (what it is, file-name patterns any of which will do).
TRAINING_STATE = (
    ("trainer state", ("trainer_state.json",)),
    ("optimizer state", ("optimizer.pt", "optimizer_0", "global_step*")),  # plain, FSDP, DeepSpeed
    ("scheduler state", ("scheduler.pt", "global_step*")),
    ("RNG state", ("rng_state.pth", "rng_state_*.pth")),
)


def mark_complete(folder: str | Path, global_step: int) -> None:
    """Writes the completion record last, atomically (a temporary file, then a rename)."""
    folder = Path(folder)
    files = sorted(path.name for path in folder.iterdir())
    temporary = folder / f".{COMPLETE_RECORD}.tmp"
    temporary.write_text(json.dumps({"global_step": global_step, "files": files}, indent=1) + "\n")
    os.replace(temporary, folder / COMPLETE_RECORD)


def is_complete(folder: str | Path) -> bool:
    try:
        json.loads((Path(folder) / COMPLETE_RECORD).read_text())
    except (OSError, ValueError):
        return False
    return True


def checkpoints_by_step(run_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` folders of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in run_dir.iterdir() if (match := CHECKPOINT_NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def last_complete(run_dir: str | Path) -> Path | None:
    complete = [path for path in checkpoints_by_step(run_dir) if is_complete(path)]
    return complete[-1] if complete else None


def missing_training_state(folder: Path) -> list[str]:
    return [what for what, patterns in TRAINING_STATE if not any(any(folder.glob(p)) for p in patterns)]


def resolve_resume_checkpoint(requested: str | bool | None, output_dir: str, allow_missing_state: bool = False) -> str | None:
    """
    `--resume_from_checkpoint` as the trainer should get it: None (start fresh), or the path of a complete
    checkpoint. `true` means the newest complete one in `output_dir`. An incomplete checkpoint, or one without its
    optimizer, scheduler or RNG state (unless `allow_missing_state`), is refused with a ValueError that names the
    last complete checkpoint.
    """
    if requested in (None, False) or str(requested).lower() in ("false", ""):
        return None
    if requested is True or str(requested).lower() == "true":
        folder = last_complete(output_dir)
        if folder is None:
            raise ValueError(
                f"--resume_from_checkpoint true: {output_dir} holds no complete checkpoint (a folder counts once its "
                f"{COMPLETE_RECORD} is written). Start without --resume_from_checkpoint, or give a checkpoint's path."
            )
    else:
        folder = Path(requested)
        if not folder.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {folder} is not a folder.")
        if not is_complete(folder):
            newest = last_complete(folder.parent)
            fallback = f"the last complete one is {newest}" if newest else f"{folder.parent} holds no complete one"
            raise ValueError(
                f"--resume_from_checkpoint {folder} is incomplete (no {COMPLETE_RECORD}: its save was interrupted); "
                f"{fallback}. Resume from that (or pass --resume_from_checkpoint true)."
            )
    missing = missing_training_state(folder)
    if missing and not allow_missing_state:
        raise ValueError(
            f"Checkpoint {folder} has no {', '.join(missing)}: resuming would restart them silently and the run would "
            "differ from an uninterrupted one. Pass --resume_without_training_state true to resume the weights anyway."
        )
    return str(folder)
