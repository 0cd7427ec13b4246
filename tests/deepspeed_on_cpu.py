"""Test-only switch: run accelerate's DeepSpeed path on CPU processes (deepspeed with `DS_ACCELERATOR=cpu`).

accelerate 1.15 finds no distributed backend for a DeepSpeed launch on a machine without GPUs: PartialState keeps
`num_processes = 1` while DeepSpeed joins both processes, so transformers sizes the global batch for one process and
DeepSpeed's batch check fails. `force_deepspeed_on_cpu()` gives that launch the gloo backend, so the state counts every
process and the trainer runs its DeepSpeed code path: `deepspeed.initialize` with ZeRO-3 partitioning, the engine's
backward and step, DeepSpeed checkpoints and the 16-bit consolidated save. What it does not cover of a GPU run: NCCL,
bf16 mixed precision, offload, and `zero3_init_flag` partitioning at construction on devices.
"""

import os

from accelerate.state import PartialState
from accelerate.utils import DistributedType


def force_deepspeed_on_cpu() -> None:
    original = PartialState._prepare_backend

    def prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        chosen, distributed_type = original(self, cpu, sagemaker_dp, backend)
        launched = int(os.environ.get("LOCAL_RANK", -1)) != -1
        if chosen is None and launched and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            return "gloo", DistributedType.MULTI_CPU
        return chosen, distributed_type

    PartialState._prepare_backend = prepare_backend
