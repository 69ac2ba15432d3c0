"""Upscale an image with a super-resolution checkpoint: ``python -m ldm.sample upscale`` (see ldm/sample.py).

    python scripts/upscale.py --ckpt outputs/<shapes_sr run>/checkpoints/last.ckpt --init-img small.png \
        --prompt "a red circle" --noise-level 20 --n_samples 4 --outdir out/
"""

import sys

from ldm.sample import main

if __name__ == "__main__":
    main(["upscale", *sys.argv[1:]])
