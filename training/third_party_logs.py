"""Third-party log lines that are false alarms for this project, silenced one by one, each with its reason.

Installed when `delta_llava.training` is imported, before bitsandbytes is (peft imports it), so a newcomer's first
run prints nothing to look up. Every other line of those loggers still gets through.
"""

import logging


class DropMessage(logging.Filter):
    """Drops the records whose message contains `text` (accelerate's loggers put "[RANK 0] " in front)."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


FALSE_ALARMS = {
    # bitsandbytes 0.50 looks for the optional `kernels` package (a faster CPU 4-bit matmul) at import; QLoRA runs
    # on GPUs, and its CPU path works without it (tests/test_training.py) — nothing for a user to do.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    # TRL 1.16's end-of-turn check looks tensor token ids up in a set of ints, which never matches, so it fails for
    # every processor that returns tensors; our template's assistant mask does cover </s> (tests/test_processor.py).
    "trl.trainer.sft_trainer": "The chat template does not include the assistant turn's end-of-turn token",
}


def silence_false_alarms() -> None:
    for logger_name, text in FALSE_ALARMS.items():
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, DropMessage) and f.text == text for f in logger.filters):
            logger.addFilter(DropMessage(text))
