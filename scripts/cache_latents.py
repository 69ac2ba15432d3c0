"""Encode image shards once into latent shards for stage 2: ``python -m ldm.data.cache_latents``.

    python scripts/cache_latents.py --ckpt RUN/autoencoder/checkpoints/last.ckpt --data shapes \
        --resolution 64 --out data/shapes-latents-64
"""

from ldm.data.cache_latents import main

if __name__ == "__main__":
    main()
