"""Redraw the masked part of an image with an inpainting checkpoint: ``python -m ldm.sample inpaint``.

    python scripts/inpaint.py --ckpt outputs/<shapes_inpaint run>/checkpoints/last.ckpt --init-img in.png \
        --mask mask.png --prompt "a blue square" --n_samples 4 --outdir out/

The mask is as large as the image: white (>= 50% grey) is redrawn, black is kept (see ldm/sample.py).
"""

import sys

from ldm.sample import main

if __name__ == "__main__":
    main(["inpaint", *sys.argv[1:]])
