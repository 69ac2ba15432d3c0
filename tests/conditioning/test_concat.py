"""ldm/conditioning/concat.py: image conditioning concatenated to the U-Net's input, through the objective,
every sampler and classifier-free guidance.

The reference for the typed path is the same U-Net wrapped by hand in a module that concatenates a
fixed image itself (LDM's DiffusionWrapper written out), driven with plain text contexts through the
unchanged text-to-image code: both must compute the same numbers.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldm.conditioning.concat import Conditioning, ImageConditioning, call_network, guidance_batch
from ldm.denoiser import UNetModel
from ldm.diffusion.objective import DiffusionObjective
from ldm.diffusion.parametrization import DiscreteDenoiser, preconditioning
from ldm.diffusion.schedules import alphas_cumprod_from_betas, make_betas
from ldm.samplers import SAMPLERS
from ldm.samplers.guidance import CFGDenoiser
from ldm.samplers.noise import per_sample_generators
from ldm.samplers.sigmas import get_sigmas
from tests.conftest import assert_float32_close

B, LATENT, IMAGE, SIDE, TOKENS, WIDTH = 2, 4, 3, 8, 5, 16


def concat_unet(seed: int = 0, guidance_embed_dim: int = 0) -> UNetModel:
    """An SD-x4-like tiny U-Net: 4 latent + 3 image channels in, a class embedding, every weight random;
    with `guidance_embed_dim`, a guidance-distilled student's w input too."""
    torch.manual_seed(seed)
    unet = UNetModel(
        in_channels=LATENT + IMAGE, out_channels=LATENT, model_channels=32, channel_mult=[1, 2],
        num_res_blocks=1, attention_resolutions=[2], num_head_channels=16, num_heads=-1,
        transformer_depth=1, context_dim=WIDTH, use_linear_in_transformer=True, num_classes=1000,
        disable_self_attentions=[False, True], guidance_embed_dim=guidance_embed_dim,
    )  # fmt: skip
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    return unet.eval()


class ConcatByHand(nn.Module):
    """network(cat(x, image), t, context, class_labels) for a fixed image, repeated to x's batch."""

    def __init__(self, network: nn.Module, image: ImageConditioning):
        super().__init__()
        self.network, self.image = network, image

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        times = x.shape[0] // self.image.concat.shape[0]  # 2 under batched guidance
        concat = self.image.concat.repeat(times, 1, 1, 1)
        return self.network(
            torch.cat([x, concat], dim=1), t, context, class_labels=self.image.class_labels.repeat(times)
        )


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    image = ImageConditioning(torch.randn(B, IMAGE, SIDE, SIDE, generator=g), torch.tensor([3, 250]))
    return {
        "image": image,
        "text": torch.randn(B, TOKENS, WIDTH, generator=g),
        "uncond": torch.randn(B, TOKENS, WIDTH, generator=g),
        "x": torch.randn(B, LATENT, SIDE, SIDE, generator=g),
    }


def alphas_cumprod() -> torch.Tensor:
    return alphas_cumprod_from_betas(make_betas("scaled_linear", 1000, 0.00085, 0.012))


class Recorder(nn.Module):
    def forward(self, x, t, context, **kwargs):
        self.seen = (x, t, context, kwargs)
        return x[:, :LATENT]


def test_the_image_follows_the_latent_channels_and_the_label_is_passed(inputs):
    network, x, t = Recorder(), inputs["x"], torch.tensor([10, 20])
    call_network(network, x, t, Conditioning(inputs["text"], inputs["image"]))
    seen_x, seen_t, seen_context, kwargs = network.seen
    assert torch.equal(seen_x, torch.cat([x, inputs["image"].concat], dim=1))
    assert seen_t is t and seen_context is inputs["text"]
    assert torch.equal(kwargs["class_labels"], torch.tensor([3, 250]))
    call_network(network, x, t, inputs["text"])  # a tensor is text alone: the call text-to-image makes
    assert network.seen[0] is x and network.seen[3] == {}


def test_a_guidance_distilled_network_gets_w_beside_the_image_and_its_label(inputs):
    network, x, t, w = Recorder(), inputs["x"], torch.tensor([10, 20]), torch.tensor([2.0, 7.5])
    call_network(network, x, t, Conditioning(inputs["text"], inputs["image"]), guidance=w)
    seen_x, _, _, kwargs = network.seen
    assert torch.equal(seen_x, torch.cat([x, inputs["image"].concat], dim=1))
    assert kwargs.keys() == {"class_labels", "guidance"} and kwargs["guidance"] is w
    call_network(network, x, t, inputs["text"], guidance=w)
    assert network.seen[0] is x and network.seen[3] == {"guidance": w}
    # Through the denoiser wrapper: EDM's D = c_skip x + c_out F(cat(c_in x, image), t, text, label, w).
    denoiser = DiscreteDenoiser(concat_unet(guidance_embed_dim=16), alphas_cumprod(), "v")
    unet, sigma = denoiser.diffusion_model, torch.tensor([2.5, 0.3])
    cond = Conditioning(inputs["text"], inputs["image"])
    c_skip, c_out, c_in = (c[:, None, None, None] for c in preconditioning(sigma, "v"))
    with torch.no_grad():
        torch.nn.init.normal_(unet.guidance_embed[2].weight, std=0.1)  # w changes the output
        got = denoiser(x, sigma, cond, guidance=w)
        by_hand = c_skip * x + c_out * unet(
            torch.cat([c_in * x, inputs["image"].concat], dim=1), denoiser.sigma_to_t(sigma), inputs["text"],
            class_labels=inputs["image"].class_labels, guidance=w,
        )  # fmt: skip
        other_w = denoiser(x, sigma, cond, guidance=w.flip(0))
    assert_float32_close(got, by_hand)
    assert (other_w - got).abs().mean() > 1e-3 * got.abs().mean()


def test_a_concat_of_another_size_is_refused(inputs):
    wrong = Conditioning(inputs["text"], ImageConditioning(torch.zeros(B, IMAGE, 4, 4)))
    with pytest.raises(ValueError, match=r"does not match the latent \(2, 4, 8, 8\) in batch and size"):
        call_network(Recorder(), inputs["x"], torch.tensor([1, 2]), wrong)


def test_guidance_batches_drop_the_text_only(inputs):
    image, text, uncond = inputs["image"], inputs["text"], inputs["uncond"]
    batched = guidance_batch(uncond, Conditioning(text, image))
    assert torch.equal(batched.context, torch.cat([uncond, text]))
    assert torch.equal(batched.image.concat, torch.cat([image.concat, image.concat]))
    assert torch.equal(batched.image.class_labels, torch.tensor([3, 250, 3, 250]))
    other = ImageConditioning(torch.zeros_like(image.concat), torch.tensor([0, 0]))  # each branch its own
    own = guidance_batch(Conditioning(uncond, other), Conditioning(text, image))
    assert torch.equal(own.image.concat, torch.cat([other.concat, image.concat]))
    assert torch.equal(own.image.class_labels, torch.tensor([0, 0, 3, 250]))
    assert torch.equal(guidance_batch(uncond, text), torch.cat([uncond, text]))


def test_guided_denoiser_is_the_guidance_formula_with_the_image_in_both_branches(inputs):
    denoiser = DiscreteDenoiser(concat_unet(), alphas_cumprod())
    x, sigma, scale = inputs["x"], torch.tensor([2.5, 0.3]), 4.0
    cond, uncond = (
        Conditioning(inputs["text"], inputs["image"]),
        Conditioning(inputs["uncond"], inputs["image"]),
    )
    with torch.no_grad():
        guided = CFGDenoiser(denoiser, scale)(x, sigma, cond, inputs["uncond"])
        d_cond, d_uncond = denoiser(x, sigma, cond), denoiser(x, sigma, uncond)
        other_image = denoiser(x, sigma, Conditioning(inputs["text"], ImageConditioning(
            torch.zeros_like(inputs["image"].concat), inputs["image"].class_labels)))  # fmt: skip
        other_label = denoiser(x, sigma, Conditioning(inputs["text"], ImageConditioning(
            inputs["image"].concat, torch.tensor([900, 40]))))  # fmt: skip
    assert_float32_close(guided, d_uncond + scale * (d_cond - d_uncond))
    # The image and its label both change the prediction: the test above cannot pass without them.
    assert (other_image - d_cond).abs().mean() > 1e-3 * d_cond.abs().mean()
    assert (other_label - d_cond).abs().mean() > 1e-3 * d_cond.abs().mean()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_with_guidance_samples_what_the_hand_concatenated_network_samples(inputs, name):
    unet = concat_unet()
    typed = CFGDenoiser(DiscreteDenoiser(unet, alphas_cumprod()), 3.0)
    by_hand = CFGDenoiser(DiscreteDenoiser(ConcatByHand(unet, inputs["image"]), alphas_cumprod()), 3.0)
    sigmas = get_sigmas(typed.denoiser.sigmas, 4, "discrete", "trailing")
    x = inputs["x"] * (sigmas[0] ** 2 + 1).sqrt()
    sample = SAMPLERS[name]
    with torch.no_grad():
        ours = sample(
            typed,
            x,
            sigmas,
            extra_args={
                "context": Conditioning(inputs["text"], inputs["image"]),
                "uncond_context": inputs["uncond"],
            },
            generator=per_sample_generators([5, 6]),
        )
        reference = sample(
            by_hand,
            x,
            sigmas,
            extra_args={"context": inputs["text"], "uncond_context": inputs["uncond"]},
            generator=per_sample_generators([5, 6]),
        )
    assert torch.isfinite(ours).all()
    assert_float32_close(ours, reference)


def test_the_objective_trains_on_the_concatenated_input(inputs):
    unet = concat_unet()
    objective = DiffusionObjective(alphas_cumprod(), "v")
    z0 = inputs["x"]
    ours = objective(unet, z0, Conditioning(inputs["text"], inputs["image"]), per_sample_generators([1, 2]))
    reference = objective(
        ConcatByHand(unet, inputs["image"]), z0, inputs["text"], per_sample_generators([1, 2])
    )
    assert ours.item() > 0
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
