"""The config dataclasses registered in Hydra's ConfigStore, and composition for scripts and tests.

``ldm/conf/config.yaml`` starts its defaults list with ``train_schema``, and each group file is
merged onto its group's schema, so every key is checked against ``ldm.config`` when composed.
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


def register_configs() -> None:
    """Register the schemas so that config.yaml and the group files are checked against them."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, node in GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"{group}_schema", node=node)


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The training config that ``python -m ldm.train OVERRIDES`` runs with (for scripts and tests)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=list(overrides)))
