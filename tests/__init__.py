"""The test suite (a package, so that `tests.conftest` resolves here even where another distribution
installs a top-level `tests` package, as torch-fidelity 0.4 does)."""
