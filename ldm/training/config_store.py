"""The config dataclasses registered in Hydra's ConfigStore, and composition for scripts and tests.

``ldm/conf/config.yaml`` starts its defaults list with ``train_schema``, and each group file is
merged onto its group's schema, so every key is checked against ``ldm.config`` when composed.
``python -m ldm.bench`` composes the same file with ``BenchRunConfig`` (the training config and a
``bench`` section) registered as ``train_schema``: one defaults list serves both commands.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from ldm.config import (
    CONF_DIR,
    AutoencoderConfig,
    ConditionerConfig,
    DataConfig,
    LoggerConfig,
    SamplerConfig,
    TrainConfig,
    TrainerConfig,
    UNetConfig,
)

GROUP_SCHEMAS = {
    "autoencoder": AutoencoderConfig,
    "denoiser": UNetConfig,
    "conditioner": ConditionerConfig,
    "sampler": SamplerConfig,
    "data": DataConfig,
    "trainer": TrainerConfig,
    "logger": LoggerConfig,
}
"""The dataclass that checks each config group's YAML files."""


def register_configs(root: type[TrainConfig] = TrainConfig) -> None:
    """Register the schemas so that config.yaml and the group files are checked against them;
    `root` is the schema of the whole config (TrainConfig, or a subclass that adds sections)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=root)
    for group, node in GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"{group}_schema", node=node)


def compose_config(
    overrides: list[str] | tuple[str, ...] = (), root: type[TrainConfig] = TrainConfig
) -> TrainConfig:
    """The training config that ``python -m ldm.train OVERRIDES`` runs with (for scripts and tests);
    with `root` BenchRunConfig, the config of ``python -m ldm.bench OVERRIDES``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    register_configs(root)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))
