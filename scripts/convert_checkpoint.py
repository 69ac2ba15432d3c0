"""Convert ldm stage-2 checkpoints to and from SD single files: ``python -m ldm.convert`` (ldm/convert.py).

python scripts/convert_checkpoint.py to-sd --ckpt RUN/checkpoints/last.ckpt --out model.safetensors
python scripts/convert_checkpoint.py from-sd --sd v2-1_512-ema-pruned.safetensors --arch sd2 --out sd2.ckpt
"""

from ldm.convert import main

if __name__ == "__main__":
    main()
