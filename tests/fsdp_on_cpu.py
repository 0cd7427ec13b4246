"""Test-only switch: run accelerate's FSDP2 path on CPU processes over gloo.

accelerate 1.15 applies an FSDP plugin only on GPU-like devices; on CPU it silently falls back to plain data
parallelism (MULTI_CPU). `force_fsdp_on_cpu()` turns the state back to FSDP when a plugin was given, so the trainer
runs exactly what it runs on GPUs: `fsdp2_prepare_model` (accelerate's wrap policy, its embedding and lm_head units,
`fully_shard`), FSDP2's all-gathers and reduce-scatters, and the FSDP branches of `Trainer.save_model` and of
checkpointing. What it does not cover of a GPU run: NCCL, mixed precision (the CPU runs are fp32), CPU offload and
`cpu_ram_efficient_loading`.
"""

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType


def force_fsdp_on_cpu() -> None:
    original_init = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        # every AcceleratorState() copies the process state's type (MULTI_CPU) back in: switch again each time
        plugin = fsdp_plugin or getattr(self, "fsdp_plugin", None)
        if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin

    AcceleratorState.__init__ = init
