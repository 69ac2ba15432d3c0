"""``python -m ldm.bench``: the benchmark entry point (``ldm.training.bench``)."""

from ldm.training.bench import main

if __name__ == "__main__":
    main()
