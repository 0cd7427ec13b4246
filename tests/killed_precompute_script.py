"""Run as a subprocess by a test: precomputes MaskInversion embeddings one row per batch and SIGKILLs itself during
the third row's inversion, after two rows were written to datasets' temporary cache file.

    killed_precompute_script.py CACHE_FILE
"""

import os
import signal
import sys

from delta_llava.processing import MaskInversion
from delta_llava.processing.precompute_object_embeddings import precompute_object_embeddings
from mask_inversion_setup import clip_image_processor, masks_dataset, tiny_clip


class KilledOnTheThirdImage(MaskInversion):
    calls = 0

    def __call__(self, *args, **kwargs):
        KilledOnTheThirdImage.calls += 1
        if KilledOnTheThirdImage.calls == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(*args, **kwargs)


if __name__ == "__main__":
    inverter = KilledOnTheThirdImage(tiny_clip(), iterations=1)
    precompute_object_embeddings(
        masks_dataset([2, 1, 3, 2]), inverter, clip_image_processor(), batch_size=1, cache_file_name=sys.argv[1]
    )
