import pytest
import torch

from ldm.diffusion.ema import ExponentialMovingAverage, ema_decay


def test_ema_follows_a_hand_computation():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    ema = ExponentialMovingAverage(net, decay=0.9, warmup="ldm")
    expected = net.weight.detach().clone()
    for n in range(1, 6):
        with torch.no_grad():
            net.weight.add_(torch.randn_like(net.weight))
        decay = min(0.9, (1 + n) / (10 + n))  # LDM's warm-up: 2/11, 3/12, ..., then 0.9 from n = 80
        expected = decay * expected + (1 - decay) * net.weight.detach()
        assert ema.update(net) == pytest.approx(decay)
        torch.testing.assert_close(ema.module.weight, expected, rtol=1e-6, atol=1e-7)
    assert int(ema.num_updates) == 5
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_warmups():
    assert ema_decay(1, 0.9999, "ldm") == pytest.approx(2 / 11)
    assert ema_decay(10_000, 0.9999, "ldm") == pytest.approx(10_001 / 10_010)
    assert ema_decay(100_000, 0.9999, "ldm") == 0.9999  # (1 + n) / (10 + n) passes 0.9999 at n = 89,991
    assert ema_decay(1, 0.9999, "power", 2 / 3) == 0.0  # the first update copies the weights
    assert ema_decay(8, 0.9999, "power", 2 / 3) == pytest.approx(1 - 8 ** (-2 / 3))  # = 0.75
    assert ema_decay(1, 0.99, "none") == 0.99
    with pytest.raises(ValueError, match="unknown ema_warmup 'linear'; available: ldm, power, none"):
        ema_decay(1, 0.99, "linear")


def test_average_weights_swaps_in_and_restores_and_reset():
    net = torch.nn.Linear(2, 2)
    ema = ExponentialMovingAverage(net, decay=0.5, warmup="none")
    original = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)  # average = original + 0.5
    with ema.average_weights(net):
        torch.testing.assert_close(net.weight, original + 0.5)
    torch.testing.assert_close(net.weight, original + 1.0)
    ema.reset(net)
    torch.testing.assert_close(ema.module.weight, original + 1.0)
    assert int(ema.num_updates) == 0
    assert set(ema.state_dict()) == {"module.weight", "module.bias", "num_updates"}
