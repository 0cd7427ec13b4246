"""`accelerate launch` of a test script in two CPU processes (gloo), on a free port."""

import os
import socket
import subprocess
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
ACCELERATE_CONFIGS = TESTS_DIR.parent / "training" / "accelerate_configs"


def free_port() -> int:
    """A TCP port nothing listens on now, for the launcher's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(config_name: str, script: str, *args: str, extra_flags: tuple[str, ...] = (), env: dict | None = None) -> None:
    """Runs `tests/<script> args...` under `training/accelerate_configs/<config_name>` (CPU processes; `env` adds to
    or, with None values, removes from the environment); fails with its stderr."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config_name),
        "--main_process_port", str(free_port()), *extra_flags, str(TESTS_DIR / script), *args,
    ]  # fmt: skip
    settings = dict(os.environ, ACCELERATE_USE_CPU="true", PYTHONPATH=str(TESTS_DIR), OMP_NUM_THREADS="1")
    settings.update(env or {})
    settings = {key: value for key, value in settings.items() if value is not None}
    result = subprocess.run(command, env=settings, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
