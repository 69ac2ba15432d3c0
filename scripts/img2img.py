"""Redraw an image toward a prompt: ``python -m ldm.sample img2img`` (see ldm/sample.py).

    python scripts/img2img.py --ckpt outputs/<run>/checkpoints/last.ckpt --init-img in.png \
        --prompt "a blue square" --strength 0.75 --n_samples 4 --outdir out/
"""

import sys

from ldm.sample import main

if __name__ == "__main__":
    main(["img2img", *sys.argv[1:]])
