"""ldm/cli.py: a user error is one `error:` line and exit status 2; LDM_FULL_ERROR=1 shows the traceback."""

from __future__ import annotations

import pytest
from PIL import UnidentifiedImageError

from ldm.cli import USER_ERROR_EXIT_CODE, error_line, run_command, user_errors
from ldm.weights.io import WeightsError


def failing(error: BaseException):
    def command(argv: list[str] | None) -> None:
        raise error

    return command


def test_error_line_is_one_line_with_the_message():
    assert error_line(ValueError("--n_iter must be >= 1, got 0")) == "error: --n_iter must be >= 1, got 0"
    assert error_line(ValueError("first\n  second\n\nthird")) == "error: first second third"
    assert error_line(FileNotFoundError()) == "error: FileNotFoundError"
    assert error_line(ValueError("bad"), "set X=1") == "error: bad (set X=1)"


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError("checkpoint not found: /x.ckpt"),
        ValueError("--scale must be >= 0, got -1.0"),
        WeightsError("/x.ckpt is not a readable checkpoint:\ntruncated"),
        UnidentifiedImageError("cannot identify image file '/x.png'"),
    ],
)
def test_user_errors_exit_2_with_one_line(error, capsys, monkeypatch):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_command(failing(error), [])
    assert exit_.value.code == USER_ERROR_EXIT_CODE == 2
    captured = capsys.readouterr()
    assert captured.err == error_line(error) + "\n" and captured.out == ""


def test_full_error_variable_reraises(monkeypatch):
    monkeypatch.setenv("LDM_FULL_ERROR", "1")
    with pytest.raises(ValueError, match="bad value"):
        run_command(failing(ValueError("bad value")), [])
    monkeypatch.setenv("LDM_FULL_ERROR", "0")  # only 1 asks for it
    with pytest.raises(SystemExit):
        run_command(failing(ValueError("bad value")), [])


def test_other_variables_report_and_hint(monkeypatch):
    lines = []
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        with user_errors(("HYDRA_FULL_ERROR",), lines.append, "set HYDRA_FULL_ERROR=1 for the traceback"):
            raise FileNotFoundError("diffusion.init_from not found: x")
    assert exit_.value.code == 2
    assert lines == ["error: diffusion.init_from not found: x (set HYDRA_FULL_ERROR=1 for the traceback)"]
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(FileNotFoundError):
        with user_errors(("HYDRA_FULL_ERROR",), lines.append):
            raise FileNotFoundError("x")
    assert len(lines) == 1


def test_bugs_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("LDM_FULL_ERROR", raising=False)
    with pytest.raises(KeyError):
        run_command(failing(KeyError("a bug, not a user error")), [])
    with pytest.raises(RuntimeError):
        run_command(failing(RuntimeError("a bug, not a user error")), [])


def test_success_returns_normally(monkeypatch):
    calls = []
    assert run_command(calls.append, ["--flag"]) is None
    assert calls == [["--flag"]]


def test_every_console_script_is_a_command_main():
    import importlib
    import inspect

    from tests.conftest import ROOT

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {
        "ldm-train",
        "ldm-sample",
        "ldm-convert",
        "ldm-eval",
        "ldm-make-shards",
        "ldm-cache-latents",
        "ldm-bench",
    }
    for name, target in scripts.items():
        module, function = target.split(":")
        main = getattr(importlib.import_module(module), function)
        assert callable(main), name
        if name not in ("ldm-train", "ldm-bench"):  # Hydra's composition parses sys.argv itself
            assert list(inspect.signature(main).parameters) == ["argv"], name
