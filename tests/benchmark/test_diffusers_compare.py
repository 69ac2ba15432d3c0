"""ldm/benchmark/diffusers_compare.py: diffusers' networks from our SD export agree with ours (or the run
stops), and ours and theirs are timed in alternating rounds."""

from __future__ import annotations

import sys

import pytest
import torch

from ldm.benchmark import timing
from ldm.benchmark.diffusers_compare import (
    AGREEMENT_TOLERANCE,
    DisagreementError,
    agreement_errors,
    check_agreement,
    compare_training,
    diffusers_networks,
    export_for_diffusers,
    import_diffusers,
    paired,
)
from tests.benchmark.conftest import debug_bench

pytest.importorskip("diffusers")


@pytest.fixture
def compared(monkeypatch):
    """(settings, our networks, diffusers' networks) of the debug preset, 32 px, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, settings, networks = debug_bench("bench.compare=diffusers")
    return settings, networks, diffusers_networks(networks)


def test_diffusers_agrees_with_ours_on_every_network(compared):
    settings, networks, theirs = compared
    errors = agreement_errors(networks, theirs, settings)
    assert set(errors) == {"unet", "decode", "encode"}
    assert all(error < AGREEMENT_TOLERANCE for error in errors.values())
    m = check_agreement(errors)
    assert m.metrics["unet"].value == errors["unet"] and m.metrics["unet"].unit == "relative error"
    # The weights really are ours: diffusers' output layer holds our U-Net's random (not zero) weights.
    assert torch.equal(theirs.unet.conv_out.weight, networks.unet.out[2].weight)
    assert networks.unet.out[2].weight.abs().sum() > 0


@pytest.mark.parametrize("where", ["unet", "vae"])
def test_a_perturbed_diffusers_weight_stops_the_run(compared, where):
    settings, networks, theirs = compared
    with torch.no_grad():
        if where == "unet":
            theirs.unet.conv_in.weight[0, 0, 0, 0] += 0.01  # one of its 1,152 weights (std 0.17)
        else:
            theirs.vae.decoder.conv_out.bias[0] += 0.01
    errors = agreement_errors(networks, theirs, settings)
    failing = {"unet"} if where == "unet" else {"decode"}
    assert {name for name, e in errors.items() if e >= AGREEMENT_TOLERANCE} == failing
    with pytest.raises(DisagreementError, match=f"relative errors {sorted(failing)[0]} .* tolerance 0.0001"):
        check_agreement(errors)


def test_nan_is_a_disagreement():
    with pytest.raises(DisagreementError, match="unet nan"):
        check_agreement({"unet": float("nan"), "decode": 0.0})


def test_networks_diffusers_cannot_state_are_refused(tmp_path):
    # Attention at the autoencoder's 16 px level: diffusers' single-file conversion drops it.
    _, _, networks = debug_bench("autoencoder.attn_resolutions=[16]")
    with pytest.raises(
        ValueError, match=r"diffusers cannot build these networks: autoencoder.attn_resolutions=\[16\]"
    ):
        export_for_diffusers(networks, tmp_path / "model.safetensors")


def test_missing_diffusers_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(
        ValueError, match=r"bench.compare=diffusers needs the diffusers package: pip install 'ldm\[bench\]'"
    ):
        import_diffusers()


def test_paired_rounds_alternate_and_give_the_ratio(squares_clock):
    _, settings, _ = debug_bench("bench.rounds=2", "bench.warmup=1")
    squares_clock(timing)
    order = []
    cases = {"ours": lambda: order.append("ours"), "theirs": lambda: order.append("theirs")}
    m = paired("vae decode", 4, cases, 4, "images/s", settings)
    assert order == ["ours", "theirs"] * 3
    # Timed rounds on the squares clock: ours 1 and 9 s, theirs 5 and 13 s: medians 5 and 9.
    assert (m.metrics["ours_seconds"].value, m.metrics["theirs_seconds"].value) == (5, 9)
    assert m.metrics["ours"].value == 4 / 5 and m.metrics["theirs"].value == 4 / 9
    assert m.metrics["ratio"].value == 9 / 5 and m.metrics["ratio"].unit == "ours/theirs"


@pytest.mark.parametrize("with_optimizer, case", [(True, "unet step"), (False, "unet forward+backward")])
def test_the_training_comparison_can_leave_out_the_optimizer(monkeypatch, with_optimizer, case):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, settings, networks = debug_bench(
        "bench.compare=diffusers",
        f"bench.compare_optimizer={str(with_optimizer).lower()}",
        "bench.rounds=1",
        "bench.warmup=0",
    )
    theirs = diffusers_networks(networks)
    before = [p.detach().clone() for p in theirs.unet.parameters()]
    m = compare_training(networks, theirs, settings, 2)
    assert m.case == case
    assert ("no optimizer" in m.notes) != with_optimizer
    changed = sum(not torch.equal(a, b) for a, b in zip(theirs.unet.parameters(), before))
    assert (changed > 0) == with_optimizer
    assert all(p.grad is None for p in theirs.unet.parameters()) != with_optimizer
