"""Sample images from a trained ldm checkpoint: ``python -m ldm.sample txt2img`` (see ldm/sample.py).

    python scripts/txt2img.py --ckpt outputs/<run>/checkpoints/last.ckpt --prompt "a red circle" \
        --n_samples 8 --outdir out/
"""

import sys

from ldm.sample import main

if __name__ == "__main__":
    main(["txt2img", *sys.argv[1:]])
