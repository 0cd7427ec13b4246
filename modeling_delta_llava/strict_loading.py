"""Loading a Delta-LLaVA checkpoint for export or for more training: every weight must come from the files.

`from_pretrained` only logs missing or unexpected weights (and initialises the missing ones at random); a checkpoint
that lacks a projector tensor, holds another projector type or was cut short must be refused instead.
"""

from pathlib import Path

from safetensors import SafetensorError

from .modeling_delta_llava import DeltaLlavaForConditionalGeneration


def load_checkpoint_strictly(path: str | Path, **kwargs) -> DeltaLlavaForConditionalGeneration:
    """`DeltaLlavaForConditionalGeneration.from_pretrained(path, **kwargs)`, refusing (ValueError) a checkpoint whose
    weight files cannot be read or do not hold exactly the model's weights, naming the folder and the keys."""
    try:
        model, info = DeltaLlavaForConditionalGeneration.from_pretrained(path, output_loading_info=True, **kwargs)
    except (OSError, RuntimeError, ValueError, SafetensorError) as error:
        if isinstance(error, FileNotFoundError) and not Path(path).exists():
            raise
        raise ValueError(
            f"Could not read the weights of {path} ({type(error).__name__}: {error}). A truncated or partly written "
            "file reads like this: save or download the checkpoint again."
        ) from error
    problems = {
        "missing (would be random)": info.get("missing_keys") or [],
        "unexpected (not in this model)": info.get("unexpected_keys") or [],
        "of another shape": [str(key) for key in info.get("mismatched_keys") or []],
    }
    found = {kind: sorted(keys) for kind, keys in problems.items() if keys}
    if found:
        details = "; ".join(f"{len(keys)} {kind}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                            for kind, keys in found.items())  # fmt: skip
        raise ValueError(
            f"The weights in {path} do not match its config.json ({details}). Was it saved by another projector type "
            "or layout, or cut short? Re-save it from the model that trained it."
        )
    return model
