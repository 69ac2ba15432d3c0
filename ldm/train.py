"""``python -m ldm.train``: the training entry point (``ldm.training.train``), kept at this name."""

from ldm.training.train import main

if __name__ == "__main__":
    main()
