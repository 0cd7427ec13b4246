"""Run Python code in a fresh interpreter in which the project (`delta_llava`) cannot be imported."""

import os
import subprocess
import sys
import textwrap

BLOCK_PROJECT = """
import importlib.abc, sys
class _RefuseProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "delta_llava" or name.startswith("delta_llava."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the project must not be importable here)")
        return None
sys.meta_path.insert(0, _RefuseProject())
try:
    import delta_llava
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("delta_llava is importable in the isolated interpreter")
"""


def run_without_project(code: str, cwd: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `code` in a new `python` process (cwd `cwd`, offline Hub) where importing delta_llava fails."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=os.path.join(cwd, "hf_modules"), PYTHONPATH="")
    script = BLOCK_PROJECT + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"isolated run failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
