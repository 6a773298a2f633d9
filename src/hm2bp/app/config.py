"""Checks of a composed run configuration, before any work starts (the error names the key and the value)."""

from __future__ import annotations

from omegaconf import DictConfig

from hm2bp.app import identity  # noqa: F401  registers ${hm2bp_fingerprint:}, which hydra.run.dir uses
from hm2bp.app.schema import BPTT, REGULARIZER, RULE
from hm2bp.arch import ArchError, arch_from_sizes, parse_arch
from hm2bp.augment import Augmentation
from hm2bp.backend import STRATEGIES
from hm2bp.bptt import BPTTRule
from hm2bp.data.order import SHUFFLES
from hm2bp.data.registry import DATASETS
from hm2bp.functional import HM2BPRule
from hm2bp.loss import Regularizer
from hm2bp.train import LR_SCHEDULES


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key, the value and what is allowed."""


def _positive(key: str, value: object, integer: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok or isinstance(value, bool) or not value > 0:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key} must be {kind} > 0, got {value!r}")


def _engine(section: str, cls: type, values: DictConfig, defaults: dict) -> None:
    """The engine's own checks of ``cls(**values)``: its messages name the setting (``rule.convention=…``), which
    sits in the config under ``section``'s parent."""
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]} is not a setting of {cls.__name__}; valid keys: {list(defaults)}")
    prefix = section.rsplit(".", 1)[0] + "."
    try:
        cls(**values)
    except ValueError as err:
        raise ConfigError(f"{prefix}{err}") from err


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for values that would fail later (or silently train the wrong thing)."""
    ds, model, tr = cfg.dataset, cfg.model, cfg.trainer
    if ds.name not in DATASETS:
        raise ConfigError(f"dataset.name={ds.name!r} is unknown; valid choices: {sorted(DATASETS)}")
    info = DATASETS[ds.name]
    _positive("dataset.steps", ds.steps, integer=True)
    arch, sizes = model.get("arch"), model.get("sizes")
    if (arch is None) == (sizes is None):
        raise ConfigError("set exactly one of model.sizes (an MLP, e.g. [784, 800, 10]) and model.arch (the paper's "
                          f"notation, e.g. '15C5-P2-40C5-P2-300-10'); got sizes={sizes}, arch={arch!r}")
    if sizes is not None:
        sizes = list(sizes)
        if len(sizes) < 2 or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise ConfigError(f"model.sizes must list at least two positive layer sizes, got {sizes}")
        if sizes[0] != info.n_inputs:
            raise ConfigError(f"model.sizes[0]={sizes[0]} does not match dataset {ds.name!r}, which has "
                              f"{info.n_inputs} inputs")
    try:
        specs = parse_arch(model_arch(model), info.shape)
    except ArchError as err:
        raise ConfigError(f"model.arch={arch!r} does not fit dataset {ds.name!r} (input shape {info.shape}): "
                          f"{err}") from err
    if specs[-1].size != info.n_classes:
        key = "model.sizes[-1]" if sizes is not None else "model.arch's output layer"
        raise ConfigError(f"{key}={specs[-1].size} does not match dataset {ds.name!r}, which has "
                          f"{info.n_classes} classes")
    if len(model.thresholds) != len(specs):
        raise ConfigError(f"model.thresholds needs one value per layer ({len(specs)}), "
                          f"got {list(model.thresholds)}")
    for k, th in enumerate(model.thresholds):
        _positive(f"model.thresholds[{k}]", th)
    for key in ("tau_m", "tau_s", "init_scale", "conv_init_scale"):
        _positive(f"model.{key}", model[key])
    _engine("model.rule", HM2BPRule, model.rule, RULE)
    if model.get("bptt") is not None:
        _engine("model.bptt", BPTTRule, model.bptt, BPTT)
    _engine("trainer.regularizer", Regularizer, tr.regularizer, REGULARIZER)
    augment = ds.get("augment")
    if augment is not None:
        if info.kind != "static" or len(info.shape) != 3:
            raise ConfigError(f"dataset.augment applies to image datasets only, not {ds.name!r}")
        try:
            Augmentation(**augment)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"dataset.augment={dict(augment)} is invalid: {err}") from err
    if tr.get("contraction", "auto") not in STRATEGIES:
        raise ConfigError(f"trainer.contraction={tr.contraction!r}; valid choices: {list(STRATEGIES)}")
    t = model.targets
    if not (0 <= t.undesired < t.desired) or t.margin < 0:
        raise ConfigError(f"model.targets needs 0 <= undesired < desired and margin >= 0, got {dict(t)}")
    if ds.steps // t.desired <= model.t_ref and model.rule.silent_target_patch and model.get("bptt") is None:
        raise ConfigError(f"dataset.steps={ds.steps} is too short for model.targets.desired={t.desired}: the "
                          "silent-target patch needs steps // desired > t_ref")
    _positive("trainer.lr", tr.lr)
    _positive("trainer.batch_size", tr.batch_size, integer=True)
    _positive("trainer.max_epochs", tr.max_epochs, integer=True)
    if tr.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"trainer.lr_schedule={tr.lr_schedule!r}; valid choices: {sorted(LR_SCHEDULES)}")
    if tr.shuffle not in SHUFFLES:
        raise ConfigError(f"trainer.shuffle={tr.shuffle!r}; valid choices: {list(SHUFFLES)}")
    if cfg.resume not in (True, False, "auto"):
        raise ConfigError(f"resume={cfg.resume!r}; valid choices: [true, false, 'auto']")
    workers = tr.get("num_workers", 0)
    if not (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0):
        raise ConfigError(f"trainer.num_workers must be an integer >= 0, got {workers!r}")
    minutes = tr.get("checkpoint_every_minutes")
    if minutes is not None:
        _positive("trainer.checkpoint_every_minutes", minutes)
    if cfg.logger.name not in ("wandb", "csv", "none"):
        raise ConfigError(f"logger.name={cfg.logger.name!r}; valid choices: ['wandb', 'csv', 'none']")
    if cfg.logger.name == "wandb" and cfg.logger.mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.mode={cfg.logger.mode!r}; valid choices: ['online', 'offline', 'disabled']")


def model_arch(model: DictConfig) -> str:
    """The model's layers in the paper's notation: ``model.arch``, or ``model.sizes`` of an MLP."""
    return str(model.arch) if model.get("arch") is not None else arch_from_sizes(list(model.sizes))
