"""Typed configuration for every config group: plain dataclasses, one description per field.

The training layer registers them in Hydra's ConfigStore (``ldm.training.config_store``), so the
YAML files under ``ldm/conf/`` are merged onto them and a misspelt or unknown key is rejected
when the config is composed, before anything is built. Nothing here imports Hydra: the core
builds its networks from these dataclasses alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

CONF_DIR = Path(__file__).resolve().parent / "conf"
"""The YAML config groups, shipped inside the package (``python -m ldm.train``'s config path)."""
ARCHITECTURE = {"architecture": True}
"""Field metadata: the field describes a network (a checkpoint's value wins over the config's)."""


def architecture_fields(config_class: type) -> tuple[str, ...]:
    """Names of the fields of a config dataclass that describe the network, not its training."""
    return tuple(f.name for f in dataclasses.fields(config_class) if f.metadata.get("architecture"))


@dataclass
class AutoencoderConfig:
    """KL-regularised autoencoder (the SD/LDM first stage) and how stage 1 trains it.

    Fields marked ``ARCHITECTURE`` describe the network; a trained autoencoder brings its own
    (``architecture_fields``), the others are training settings.
    """

    embed_dim: int = field(default=4, metadata=ARCHITECTURE)
    """Channels of the latent z (SD: 4)."""
    z_channels: int = field(default=4, metadata=ARCHITECTURE)
    """Channels at the encoder output, before quant_conv."""
    resolution: int = field(default=256, metadata=ARCHITECTURE)
    """Image side the network is built for (sets which levels get attention)."""
    in_channels: int = field(default=3, metadata=ARCHITECTURE)
    """Image channels in."""
    out_channels: int = field(default=3, metadata=ARCHITECTURE)
    """Image channels out."""
    ch: int = field(default=128, metadata=ARCHITECTURE)
    """Base channel count of the encoder and decoder."""
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4], metadata=ARCHITECTURE)
    """Channel multiplier per level; len - 1 downsamplings, so f = 2 ** (len - 1)."""
    num_res_blocks: int = field(default=2, metadata=ARCHITECTURE)
    """Residual blocks per level."""
    attn_resolutions: list[int] = field(default_factory=list, metadata=ARCHITECTURE)
    """Feature-map sides at which to add self-attention (the mid block always has one)."""
    dropout: float = field(default=0.0, metadata=ARCHITECTURE)
    """Dropout in the residual blocks."""
    norm_groups: int = field(default=32, metadata=ARCHITECTURE)
    """GroupNorm groups (SD: 32; weights load whatever the value; tiny networks want fewer)."""
    reconstruction: str = "l1"
    """Reconstruction distance: l1 (LDM) or l2."""
    clipped_loss: bool = False
    """Measure the reconstruction loss on the output clipped to [-1, 1], as every decoded image is:
    beyond a pixel at black or full intensity the decoder is free, so it can overshoot flat black and
    pure colours instead of approaching them with faint noise (which costs SSIM on black backgrounds;
    the shapes upscaler uses it). False: LDM's loss."""
    kl_weight: float = 1e-6
    """Weight of the KL term against the reconstruction loss."""
    perceptual_weight: float = 1.0
    """Weight of the LPIPS perceptual term (used only where its weights are found locally)."""
    perceptual_weights: Optional[str] = None
    """File with the LPIPS heads (lin0..lin4) and optionally VGG-16 features (.safetensors or torch)."""
    vgg_weights: Optional[str] = None
    """torchvision VGG-16 state dict (null: the torch hub cache's vgg16-397923af.pth, if present)."""
    disc_weight: float = 0.5
    """Weight of the adversarial term (times the adaptive weight); 0 turns the discriminator off."""
    disc_start: int = 50_001
    """Optimizer step from which the discriminator trains and the adversarial term applies."""
    disc_factor: float = 1.0
    """Factor on both adversarial losses once started (LDM's disc_factor)."""
    disc_loss: str = "hinge"
    """Discriminator loss: hinge or vanilla (non-saturating softplus)."""
    disc_num_layers: int = 3
    """Stride-2 convolutions of the PatchGAN discriminator (pix2pix's n_layers)."""
    disc_channels: int = 64
    """Channels of the discriminator's first layer (pix2pix's ndf)."""
    disc_norm: str = "batch"
    """Normalisation in the discriminator: batch (BatchNorm) or actnorm."""
    gradient_clip_val: Optional[float] = None
    """Gradient-norm clip of both stage-1 optimizers (null: trainer.gradient_clip_val)."""
    latent_stats_batches: int = 8
    """Validation batches whose latents give the stored scale factor and channel statistics (0: none)."""
    fid_inception_weights: Optional[str] = None
    """torch-fidelity's Inception weights file for validation rFID (null: rFID is skipped)."""
    learning_rate: float = 4.5e-6
    """Adam learning rate for stage 1."""
    lr_schedule: str = "constant"
    """Stage 1's learning rate: constant (LDM), or a cosine decay to zero at max_steps (the autoencoder's
    optimizer; the discriminator's stays constant): Adam at a constant rate leaves its reconstructions
    noisy, which the low rates at the end smooth out."""
    max_steps: int = 50_000
    """Optimizer steps of stage 1."""
    batch_size: Optional[int] = None
    """Per-device batch size of stage 1 (null: data.batch_size)."""
    ckpt_path: Optional[str] = None
    """A trained autoencoder (this project's stage-1 checkpoint): stage 1 is skipped and it is used frozen."""


@dataclass
class UNetConfig:
    """The latent U-Net with cross-attention (SD 2.x layout)."""

    in_channels: int = 4
    """Channels in: the latent's plus concat_channels (SD x4 upscaler: 4 + 3 = 7, SD inpainting: 4 + 5)."""
    out_channels: int = 4
    """Latent channels out."""
    model_channels: int = 320
    """Base channel count."""
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    """Channel multiplier per level."""
    num_res_blocks: int = 2
    """Residual blocks per level."""
    attention_resolutions: list[int] = field(default_factory=lambda: [4, 2, 1])
    """Downsampling factors (1, 2, 4, ...) at which spatial transformers are added."""
    num_head_channels: int = 64
    """Channels per attention head (SD 2); used when num_heads is -1."""
    num_heads: int = -1
    """Attention heads per transformer (SD 1: 8); -1 derives them from num_head_channels."""
    transformer_depth: int = 1
    """Transformer blocks per spatial transformer."""
    context_dim: int = 1024
    """Width of the text tokens attended to (must match the conditioner)."""
    use_linear_in_transformer: bool = True
    """Linear (SD 2) instead of 1x1-conv (SD 1) projections in and out of the transformer."""
    dropout: float = 0.0
    """Dropout in residual blocks."""
    use_checkpoint: bool = False
    """Gradient checkpointing of residual and transformer blocks."""
    attention_backend: str = "sdpa"
    """Attention implementation: sdpa, xformers or math."""
    concat_channels: int = 0
    """Of in_channels, how many are image conditioning concatenated to the latent (LDM's concat
    conditioning; see image_conditioning): 3 low-resolution RGB (SD x4), 1 mask + 4 masked-image latent
    channels (SD inpainting); 0 for text-to-image."""
    num_classes: Optional[int] = None
    """Size of a class-label embedding added to the timestep embedding (SD x4 upscaler: 1000, for the
    noise level of its low-resolution input); null: none."""
    disable_self_attentions: Optional[list[bool]] = None
    """Per level: the transformers' first attention attends to the context instead of the feature map
    (SD x4 upscaler: [true, true, true, false]); null: self-attention at every level."""
    guidance_embed_dim: int = 0
    """Sinusoidal features of the guidance scale w fed to an MLP added to the time embedding (a
    guidance-distilled student, Meng et al. 2023; stage=distill sets it, 0 there: model_channels); 0: none."""
    position_embedding: bool = False
    """Add a fixed 2D sine-cosine embedding of each pixel's place to the tokens of every spatial
    transformer (as DiT's do); SD's U-Nets have none. Parameter-free, so the weights keep SD's layout,
    but neither LDM's nor diffusers' configs can state it (an export writes no config)."""


@dataclass
class ConditionerConfig:
    """open_clip text encoder (frozen unless trainable) whose per-token states feed cross-attention."""

    arch: str = "ViT-H-14"
    """open_clip model name, or 'custom' for the text tower described by the fields below."""
    pretrained: Optional[str] = "laion2b_s32b_b79k"
    """open_clip pretrained tag (from the local cache), a local weights file, or null for random weights."""
    layer: str = "penultimate"
    """Which hidden states to return: penultimate (SD 2) or last."""
    context_length: int = 77
    """Tokens per caption."""
    width: int = 1024
    """custom arch: transformer width."""
    heads: int = 16
    """custom arch: attention heads."""
    layers: int = 24
    """custom arch: transformer layers."""
    init_seed: int = 0
    """Seed for random initialisation (pretrained: null)."""
    causal: bool = True
    """Causal self-attention, as CLIP's text towers (a token sees only the tokens before it). false
    (custom arch only): every token sees the whole caption, padding excluded, as a T5/BERT encoder."""
    caption_dropout: float = 0.1
    """Probability that a training caption is replaced by the empty prompt (for classifier-free guidance)."""
    trainable: bool = False
    """Train the text encoder together with the U-Net (default: frozen, as SD)."""
    learning_rate: Optional[float] = None
    """AdamW learning rate of a trainable text encoder (null: diffusion.learning_rate)."""


@dataclass
class DiffusionConfig:
    """The diffusion objective on latents and how stage 2 trains the U-Net."""

    num_timesteps: int = 1000
    """Training timesteps of the discrete schedule."""
    beta_schedule: str = "scaled_linear"
    """Beta schedule: linear, scaled_linear or cosine (Nichol & Dhariwal 2021)."""
    linear_start: float = 0.00085
    """First beta (linear and scaled_linear)."""
    linear_end: float = 0.012
    """Last beta (linear and scaled_linear)."""
    cosine_s: float = 0.008
    """Offset s of the cosine schedule (Nichol & Dhariwal 2021, Eq. 17)."""
    zero_terminal_snr: bool = False
    """Rescale the schedule so that the last timestep is pure noise (Lin et al. 2024, Algorithm 1); needs v or x0."""
    parameterization: str = "eps"
    """What the U-Net predicts: eps, v (Salimans & Ho 2022) or x0."""
    loss_weighting: str = "uniform"
    """Per-timestep loss weight: uniform, or min_snr (min-SNR-gamma, Hang et al. 2023)."""
    min_snr_gamma: float = 5.0
    """gamma of min-SNR weighting: the loss, measured on x0, is weighted by min(SNR, gamma)."""
    offset_noise: float = 0.0
    """Offset-noise strength: adds strength * N(0, 1) per sample and channel to the noise (0: off)."""
    ema: bool = False
    """Keep an exponential moving average of the U-Net's weights, used for validation and sampling."""
    ema_decay: float = 0.9999
    """EMA decay once warmed up."""
    ema_warmup: str = "ldm"
    """EMA decay warm-up: ldm (min(decay, (1 + n) / (10 + n))), power (1 - (1 + n) ** -ema_power) or none."""
    ema_power: float = 0.6667
    """Exponent of the power warm-up (2/3 suits runs of ~1M steps, 3/4 shorter ones)."""
    init_from: Optional[str] = None
    """Initial weights: an SD single-file checkpoint (.safetensors/.ckpt) or an ldm stage-2 checkpoint."""
    scale_factor: Optional[float] = None
    """Latent scale; null computes 1/std of latents from the training data (LDM's scale_by_std)."""
    scale_batches: int = 8
    """Batches used to estimate the scale factor (or the channel statistics)."""
    latent_normalization: str = "scale"
    """scale: latents times scale_factor (LDM, SD); channel: (z - mean_c) / std_c for each latent channel,
    from stage 1's stored statistics (else estimated), folded into the autoencoder on export."""
    learning_rate: float = 1e-4
    """AdamW learning rate of the U-Net."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    lr_schedule: str = "constant"
    """Learning rate after warm-up: constant, or cosine decay to zero at max_steps."""
    max_steps: int = 100_000
    """Optimizer steps of stage 2."""
    batch_size: Optional[int] = None
    """Per-device batch size of stage 2 (null: data.batch_size)."""


IMAGE_CONDITIONING_TASKS = ("none", "super_resolution", "inpainting")
"""What ``image_conditioning.task`` may name."""


@dataclass
class ImageConditioningConfig:
    """The image a model is conditioned on besides the text, concatenated to the U-Net's input.

    none: text-to-image. super_resolution (SD x4 upscaler; Saharia et al. 2022, SR3): the image
    downsampled by ``upscale``, noise-augmented at a random level that the U-Net is told (Ho et al.
    2022, cascaded diffusion's conditioning augmentation), as 3 channels at the latent's size.
    inpainting (SD inpainting): a mask (1 = redraw) and the latent of the image with the masked
    pixels set to 0, 1 + latent channels; trained on random masks.
    """

    task: str = "none"
    """none, super_resolution or inpainting."""
    upscale: int = 4
    """super_resolution: output side / input side; must equal the autoencoder's factor (SD x4: 4)."""
    max_noise_level: int = 350
    """super_resolution: training noise levels of the low-resolution input lie in [0, max) (SD x4: 350)."""
    noise_level: int = 20
    """super_resolution: the noise level sampling adds to the low-resolution input (SD x4's default: 20)."""
    mask_full: float = 0.25
    """inpainting: share of training masks covering the whole image (text-to-image; SD inpainting: 25%)."""
    mask_empty: float = 0.1
    """inpainting: share of training masks that cover nothing (the image is to be kept as it is)."""
    mask_strokes: float = 0.5
    """inpainting: of the other masks, the share drawn as thick strokes (LaMa's); the rest: rectangles."""
    mask_to_cells: bool = True
    """inpainting: widen every mask (training and sampling) to whole latent cells, so that a cell with
    any pixel to redraw is redrawn whole; false: SD's nearest-neighbour resize of the mask, which marks
    a cell kept by its top-left pixel even where others are blanked (ldm/conditioning/inpainting.py)."""
    border_weight: float = 1.0
    """inpainting: weight of the loss on the kept latent cells that touch the mask (its 8 neighbours of
    each masked cell), the rest weighing 1 (1: SD's plain mean). Those few cells must agree with what
    is drawn next to them, or the decoder carries the new content across the mask's edge."""


@dataclass
class SamplerConfig:
    """How images are drawn from a trained model."""

    name: str = "ddim"
    """Sampler function, from ldm.samplers.SAMPLERS: ddpm, ddim, plms, euler, euler_ancestral, heun, dpmpp_2m, dpmpp_2m_sde, unipc."""
    steps: int = 50
    """Denoising steps."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale (1 = no guidance)."""
    guidance_rescale: float = 0.0
    """Guidance rescale phi in [0, 1] (Lin et al. 2024, Eq. 15-16; 0 = plain guidance, they use 0.7)."""
    guidance_interval: Optional[list[float]] = None
    """[low, high]: classifier-free guidance only at noise levels low < sigma <= high, the conditional
    prediction alone elsewhere (Kynkaanniemi et al. 2024; sigma as in Karras et al., SD's range is
    0.03-14.6); null: guidance at every step."""
    eta: Optional[float] = None
    """Noise scale of ddim, euler_ancestral and dpmpp_2m_sde (0 = deterministic); null: the sampler's default (ddim 0, the others 1)."""
    schedule: str = "discrete"
    """Sigma schedule: discrete (the model's own timesteps, by spacing), karras (rho 7) or exponential."""
    spacing: str = "trailing"
    """Which training timesteps the discrete schedule visits: trailing, leading or linspace."""


@dataclass
class DistillConfig:
    """stage=distill: progressive distillation of a stage-2 checkpoint (diffusion.init_from) into few-step
    students (Salimans & Ho 2022), after guided distillation (Meng et al. 2023) when guidance is on."""

    start_steps: int = 64
    """Sampler steps of the first round's teacher (and the timesteps of guided distillation); each round
    halves them."""
    end_steps: int = 4
    """Sampler steps of the last student; start_steps / end_steps must be a power of two."""
    steps_per_round: int = 2000
    """Optimizer steps of each halving round."""
    guidance: bool = True
    """Distil classifier-free guidance: the student takes the scale w as an input (one network call per
    sampling step) and learns the teacher's guided output for w drawn from guidance_range."""
    guidance_range: list[float] = field(default_factory=lambda: [1.0, 8.0])
    """[low, high]: the guidance scales w drawn uniformly per sample (guidance: true)."""
    guidance_steps: int = 2000
    """Optimizer steps of stage 1, guided distillation on start_steps' timesteps (0: straight to the
    rounds)."""
    parameterization: str = "v"
    """What the students predict: v or x0 (bounded at low SNR, as Salimans & Ho recommend for few
    steps), or eps."""
    loss_weighting: str = "truncated_snr"
    """truncated_snr: max(SNR, 1) on the x error (Salimans & Ho 2022); uniform: the MSE of the
    students' output."""


@dataclass
class DataFiltersConfig:
    """Bounds on a sample's json metadata (img2dataset/LAION keys) and caption; null: no bound."""

    min_width: Optional[int] = None
    """Minimum original width (original_width, else width)."""
    min_height: Optional[int] = None
    """Minimum original height (original_height, else height)."""
    min_aspect: Optional[float] = None
    """Minimum width / height."""
    max_aspect: Optional[float] = None
    """Maximum width / height."""
    min_aesthetic: Optional[float] = None
    """Minimum aesthetic score (aesthetic or AESTHETIC_SCORE)."""
    max_watermark: Optional[float] = None
    """Maximum watermark probability (pwatermark)."""
    max_unsafe: Optional[float] = None
    """Maximum unsafe probability (punsafe)."""
    min_caption_length: Optional[int] = None
    """Minimum caption length in characters."""
    max_caption_length: Optional[int] = None
    """Maximum caption length in characters."""


@dataclass
class ComposeTaskMix:
    """Relative weights of the kinds of scene in the compose world (data=shapes_compose)."""

    single: float = 0.2
    """One object: "a red circle"."""
    count: float = 0.2
    """Two or three objects of one colour and shape: "three blue squares"."""
    pair: float = 0.25
    """Two different objects: "a red circle and a blue square"."""
    relation: float = 0.35
    """Two different objects, one left of, right of, above or below the other: "a red circle above a
    blue square"."""


@dataclass
class ComposeConfig:
    """The compose world (data=shapes_compose): scenes of one to three shapes (ldm/data/compose.py)."""

    held_out: list[str] = field(
        default_factory=lambda: ["red triangle", "green circle", "blue square", "yellow triangle"]
    )
    """Colour-shape pairs ("red triangle") that no training image or caption shows; the compose
    evaluator reports them apart. The default takes one pair of each shape and a fourth triangle,
    from four colours, so every colour and every shape is still seen with others."""
    task_mix: ComposeTaskMix = field(default_factory=lambda: ComposeTaskMix())
    """How often each kind of scene is drawn."""
    size_words: float = 0.5
    """Fraction of captions that name each object's size ("a small red circle ...")."""
    relation_same_color: Optional[float] = None
    """Share of relation scenes whose two objects have one colour ("a red circle above a red square");
    null: as drawn (about one in seven). Where the colours differ, each object's colour shows where it
    is as soon as its blob does, so the model never needs the relation word to tell them apart; where
    they are alike, only the word says which shape goes where."""
    relation_sides: bool = False
    """Relation scenes put each object on its own side of the image's midline across the relation's
    axis ("a A to the left of a B": A's centre in the left half, B's in the right), each centre at
    least 0.15 of the image side from the midline. A stereotyped layout, as photographs frame two
    subjects: where an object goes then depends on the relation word and the object's place in the
    caption alone, not on where the other object happens to be."""


@dataclass
class DataConfig:
    """Where training images and captions come from (webdataset shards)."""

    name: str = "shapes"
    """Data set: shapes (built-in synthetic set, generated on first use), shapes_compose (built-in scenes
    of one to three shapes with counting, pair and position captions) or webdataset (your shards)."""
    train_shards: Optional[str] = None
    """webdataset: training shards, a brace pattern ('/data/{000000..000999}.tar'), '::'-joined patterns, or @file."""
    val_shards: Optional[str] = None
    """webdataset: a fixed, separate set of validation shards (same forms)."""
    caption_key: str = "txt"
    """Which sample member holds the caption."""
    root: str = "data/shapes"
    """Folder where the shapes shards are written and read."""
    resolution: int = 32
    """Image side in pixels."""
    seed: int = 0
    """Seed of the synthetic set (the same seed always gives the same images)."""
    num_train: int = 20_000
    """Training images in the synthetic set."""
    num_val: int = 512
    """Validation images in the synthetic set."""
    samples_per_shard: int = 1_000
    """Images per tar shard when writing the synthetic set."""
    compose: ComposeConfig = field(default_factory=lambda: ComposeConfig())
    """data=shapes_compose: held-out colour-shape pairs, mix of scene kinds, size words."""
    batch_size: int = 32
    """Batch size per device."""
    num_workers: int = 1
    """DataLoader worker processes."""
    prefetch_factor: int = 2
    """Batches each DataLoader worker prepares ahead of the training step."""
    pin_memory: bool = True
    """Training on CUDA: batches in page-locked host memory, so their copies to the GPU overlap compute."""
    shuffle_buffer: int = 1_000
    """Samples held in the streaming shuffle buffer."""
    crop: str = "center"
    """Training crop after resizing the short side: center or random (validation is always centred)."""
    flip: bool = False
    """Random horizontal flips in training."""
    jpeg_draft: bool = True
    """Decode JPEGs at a reduced DCT scale (1/2, 1/4, 1/8) when the short side stays >= resolution
    (libjpeg-turbo through simplejpeg; PIL's draft mode where simplejpeg cannot decode the file)."""
    filters: DataFiltersConfig = field(default_factory=lambda: DataFiltersConfig())
    """Bounds on json metadata and captions; samples outside are skipped (and counted as filtered)."""
    max_skip_fraction: float = 0.5
    """Stop the run when more than this fraction of the samples read so far were corrupt."""
    resampled: bool = False
    """Draw shards with replacement, a fixed number of batches per epoch on every rank (multi-node)."""
    batches_per_epoch: int = 1000
    """Resampled mode: batches per epoch on each rank."""
    train_weights: Optional[list[float]] = None
    """Resampled mode: relative weights of the '::'-separated sources of train_shards (their shares of
    the shard draws, so of the samples when shards hold alike numbers of samples)."""
    cached_latents: bool = False
    """The shards hold latents cached by python -m ldm.data.cache_latents (stage=diffusion only; the encoder is skipped)."""
    cached_text: bool = False
    """With cached_latents: the shards also hold the text encoder's per-token states of each caption
    (python -m ldm.data.cache_latents --text), and the text encoder is skipped too (it still embeds the empty
    prompt of caption dropout, once, and the sample grids' prompts). Needs a frozen text encoder."""


@dataclass
class TrainerConfig:
    """Arguments passed to the Lightning Trainer of both stages."""

    accelerator: str = "auto"
    """cpu, gpu or auto."""
    devices: Any = "auto"
    """Devices (processes) per node."""
    num_nodes: int = 1
    """Nodes."""
    strategy: str = "auto"
    """auto (DDP when there is more than one process), ddp, or fsdp (U-Net blocks sharded; see fsdp_sharding)."""
    fsdp_sharding: str = "full"
    """fsdp: full (parameters, gradients and optimizer state sharded) or grad_op (gradients and optimizer state)."""
    accumulate_grad_batches: int = 1
    """Stage 2: batches whose gradients are summed before each optimizer step (stage 1 steps every batch)."""
    precision: str = "auto"
    """Lightning precision string; auto: bf16-mixed where CUDA supports bf16, else 32-true."""
    log_every_n_steps: int = 25
    """Logging interval in steps."""
    val_check_interval: Optional[int] = None
    """Validate every N training steps (null: at the end of each stage)."""
    limit_val_batches: int = 4
    """Validation batches per validation run."""
    sample_every_n_steps: int = 0
    """Log a sample grid every N diffusion steps (0: only at the end)."""
    sample_prompts: list[str] = field(default_factory=lambda: ["a photograph of an astronaut riding a horse"])
    """Prompts of the training sample grids (one row each)."""
    checkpoint_every_n_steps: int = 1000
    """Write <stage dir>/checkpoints/step-NNNNNNNN.ckpt (and link last.ckpt to it) every N steps; always at the end."""
    checkpoint_every_n_minutes: Optional[float] = None
    """Also write one every T minutes of training (null: by steps only); and always on SIGTERM/SIGUSR1."""
    keep_last: int = 1
    """How many step-NNNNNNNN.ckpt files to keep (the newest; last.ckpt links the newest)."""
    max_bad_steps: int = 10
    """Stop the run after this many optimizer steps in a row skipped for non-finite gradients."""
    enable_progress_bar: bool = True
    """Show Lightning's progress bar."""
    throughput_window: int = 50
    """Log train/device/samples_per_sec, batches_per_sec, flops_per_sec (and MFU on known GPUs) as
    rolling averages over this many batches (0: off)."""
    gradient_clip_val: Optional[float] = 1.0
    """Clip gradients to this norm (null: no clipping)."""
    compile: bool = False
    """torch.compile (TorchInductor, CPU or GPU) the network that trains: the autoencoder's encoder and
    decoder in stage 1, the U-Net in stage 2; in place, so checkpoint keys are unchanged. The first
    steps compile (a minute or more); results agree with eager ones to float32 rounding. On a CPU it
    did not pay for training (measured, one thread: shapes preset level, SD 2 at 16x16 latents slower
    than eager); meant for GPUs."""
    channels_last: bool = False
    """Keep the training network's weights and activations in channels-last (NHWC) memory, which
    convolution kernels often prefer (oneDNN on CPU, cuDNN with tensor cores); results agree to
    float32 rounding."""


@dataclass
class LoggerConfig:
    """Where metrics and images go."""

    kind: str = "csv"
    """csv, wandb (one run per stage; offline without an API key) or tensorboard."""
    project: str = "ldm"
    """W&B project."""
    name: Optional[str] = None
    """Run name (default: the run directory's name)."""
    offline: bool = False
    """W&B offline mode (forced when no API key is found: upload later with wandb sync)."""


@dataclass
class TrainConfig:
    """The root config of ``python -m ldm.train``."""

    stage: str = "all"
    """all (autoencoder then diffusion), autoencoder, diffusion, or distill (of a trained stage 2,
    diffusion.init_from)."""
    resume: Optional[str] = None
    """A stage-1 or stage-2 checkpoint of an earlier run to continue: weights, optimizers, step, EMA,
    and the data stream where it stopped (architecture from the checkpoint); or auto: the newest
    checkpoint of this run directory, or a fresh start when it has none."""
    seed: int = 0
    """Global seed."""
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    denoiser: UNetConfig = field(default_factory=UNetConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    image_conditioning: ImageConditioningConfig = field(default_factory=ImageConditioningConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)


BENCH_PARTS = ("train", "sample", "autoencoder", "data")
"""What ``python -m ldm.bench`` can measure (``bench.parts``)."""


@dataclass
class BenchConfig:
    """What ``python -m ldm.bench`` measures for the configured model, where and how."""

    device: str = "auto"
    """cpu, cuda, or auto (cuda when available)."""
    precision: str = "32"
    """32 (float32), bf16 or fp16: autocast in that dtype on the device (the peak matmul in it too)."""
    resolution: Optional[int] = None
    """Image side in pixels (latents: resolution / the autoencoder's factor); null: data.resolution."""
    batch_sizes: Optional[list[int]] = None
    """Batch sizes, each measured; null: [diffusion.batch_size or data.batch_size]."""
    parts: Optional[list[str]] = None
    """Any of train, sample, autoencoder, data; null: all, data only where it is local (shapes, or
    webdataset shards that are files on this machine)."""
    samplers: list[str] = field(default_factory=lambda: ["ddim"])
    """Presets of conf/sampler timed with classifier-free guidance."""
    sample_steps: int = 10
    """Sampler steps per timed sampling run (it/s = steps / the run's seconds)."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale of the sampling runs (conditional and unconditional batched)."""
    compile: bool = False
    """Wrap the U-Net and the autoencoder's encoder and decoder in torch.compile."""
    cuda_graphs: bool = False
    """Sampling on CUDA only (bench.parts=[sample]): the U-Net compiled in reduce-overhead mode, each call
    replayed as a CUDA graph (one launch instead of one per kernel), as ``--cuda-graphs`` samples."""
    channels_last: bool = False
    """Networks and their inputs in channels-last memory."""
    attention: Optional[str] = None
    """sdpa, xformers or math (sets denoiser.attention_backend); null: the denoiser's."""
    rounds: int = 5
    """Timed rounds per measurement (medians are reported)."""
    warmup: int = 2
    """Untimed runs before the rounds."""
    peak_size: Optional[int] = None
    """Side n of the n x n matmul that measures the peak FLOP/s; null: 8192 on CUDA, 2048 on CPU."""
    compare: str = "none"
    """none, or diffusers: the same networks and weights in diffusers, checked to agree, timed beside ours."""
    compare_optimizer: bool = True
    """With compare=diffusers: the compared training step includes each side's AdamW update. false: forward,
    loss and backward only, gradients freed after each step (for networks whose two sets of AdamW moments do
    not fit in memory side by side, e.g. SD 2's U-Net on 24 GB; benchmarks/bench_optimizer.py times the
    optimizers alone)."""
    out: Optional[str] = None
    """The JSON report; null: <hydra run dir>/bench.json."""
    ckpt: Optional[str] = None
    """A stage-2 checkpoint whose networks and weights to time (null: the config's, random seeded weights)."""


@dataclass
class BenchRunConfig(TrainConfig):
    """The root config of ``python -m ldm.bench``: the training config and the ``bench`` section."""

    bench: BenchConfig = field(default_factory=BenchConfig)
