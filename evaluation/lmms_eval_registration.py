"""What the `lmms_eval.models` entry point returns: lmms-eval finds `--model delta_llava` through it.

Kept apart from the model class so lmms-eval's start-up (which loads every entry point) imports nothing heavy.
"""

from lmms_eval.models.registry_v2 import ModelManifest


def model_manifest() -> ModelManifest:
    """`delta_llava` as a chat model (lmms-eval's current protocol), implemented by `DeltaLlavaLmms`."""
    return ModelManifest(
        model_id="delta_llava", chat_class_path="delta_llava.evaluation.lmms_eval_model.DeltaLlavaLmms"
    )
