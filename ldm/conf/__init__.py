"""The YAML config groups of python -m ldm.train (a package so that Hydra and the wheel find them)."""
