"""Re-save a Delta-LLaVA checkpoint with this version's remote code, e.g. to serve one saved by an earlier version.

A checkpoint carries the modeling and processing code of the version that saved it, and `trust_remote_code` runs
that copy. Checkpoints saved before serving existed cannot be served by vLLM (their processor keeps one budget per
batch and their projector reads linear weights that vLLM repacks). This loads the weights with the installed
project's classes and writes them again with its code, the processor included (now also told which budgets the
model allows). Nothing in the weights changes.

    delta-llava-resave OLD_CHECKPOINT NEW_FOLDER
"""

import argparse
import tempfile
from pathlib import Path

from delta_llava.modeling_delta_llava import DeltaLlavaForConditionalGeneration
from delta_llava.processing import DeltaLlavaProcessor

from .export import move_into_place


def resave_checkpoint(source: str | Path, destination: str | Path) -> Path:
    """Writes `source`'s weights, config and processor (if it has one) with the current code into `destination`
    (replaced only once the new folder is whole); returns `destination`."""
    source, destination = Path(source), Path(destination)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} has no config.json: give the folder of a saved Delta-LLaVA checkpoint.")
    if destination.resolve() == source.resolve():
        raise ValueError("Give a new destination folder: the source is read while the copy is written.")
    model = DeltaLlavaForConditionalGeneration.from_pretrained(source)  # the installed classes, not the folder's code
    processor = None
    if (source / "processor_config.json").is_file():
        processor = DeltaLlavaProcessor.from_pretrained(source)
        processor.allowed_visual_token_counts = model.config.allowed_visual_token_counts()
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-", dir=destination.parent))
    model.save_pretrained(staging)
    if processor is not None:
        processor.save_pretrained(staging)
    move_into_place(staging, destination)
    return destination


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()), formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("source", help="folder of the checkpoint to re-save")
    parser.add_argument("destination", help="new folder for the re-saved checkpoint (replaced if it exists)")
    args = parser.parse_args(argv)
    print(f"re-saved into {resave_checkpoint(args.source, args.destination)}")


if __name__ == "__main__":
    main()
