"""keep_freed_memory: freed blocks are reused without new page faults, and training computes the same weights.

Each case runs in its own interpreter: the malloc settings are process-wide and cannot be undone.
"""

import json
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt settings exist on glibc only"
)

FAULTS_ON_REALLOCATION = """
import json, resource, sys, torch
from delta_llava.training.freed_memory import keep_freed_memory

def faults_while_reallocating() -> int:
    torch.ones(16 << 20)  # 64 MiB, above glibc's largest automatic mmap threshold (32 MiB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(16 << 20)  # allocated, touched, freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_while_reallocating()
taken = keep_freed_memory()
print(json.dumps({"taken": taken, "default": default, "kept": faults_while_reallocating()}))
"""

TRAIN_A_FEW_STEPS = """
import hashlib, json, sys, torch
from delta_llava.training.freed_memory import keep_freed_memory

if sys.argv[1] == "keep":
    keep_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.SiLU(), torch.nn.Linear(1024, 8))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
for step in range(10):
    inputs = torch.randn(64 * (step % 3 + 1), 256)  # sizes change per step, as with elastic budgets
    loss = model(inputs).logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
weights = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
print(json.dumps({"digest": hashlib.sha256(weights).hexdigest()}))
"""


def run_python(code: str, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_page_faults():
    faults = run_python(FAULTS_ON_REALLOCATION)
    assert faults["taken"]
    assert faults["default"] > 5 * 10_000  # each 64 MiB block is 16,384 fresh pages by default
    assert faults["kept"] < faults["default"] / 20


def test_training_computes_bit_identical_weights():
    assert run_python(TRAIN_A_FEW_STEPS, "keep") == run_python(TRAIN_A_FEW_STEPS, "default")
