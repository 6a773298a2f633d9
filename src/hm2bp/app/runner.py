"""One training job of the experiment app: compose → validate → fit (resuming) → metrics.json + figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from hm2bp.app.config import ConfigError, model_arch, validate
from hm2bp.io import atomic_write_json
from hm2bp.metrics import metrics_complete


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read."""


def check_checkpoint(path: Path) -> Path:
    """Return ``path`` if it is a readable Lightning checkpoint, else raise a clear :class:`CheckpointError`."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "state_dict" not in state:
            raise ValueError("no state_dict inside")
    except Exception as err:
        raise CheckpointError(
            f"cannot resume from {path}: the checkpoint is corrupt or truncated ({type(err).__name__}: {err}). "
            f"Delete that file to start this run fresh, or rerun with resume=false; nothing else was touched."
        ) from err
    return path


def _wandb_logger(cfg: DictConfig, run_dir: Path, name: str):
    from lightning.pytorch.loggers import WandbLogger

    mode = cfg.logger.mode
    if mode == "online" and not _wandb_credentials():
        if not cfg.logger.fallback_offline:
            raise ConfigError("logger.mode=online but no wandb API key is configured (WANDB_API_KEY or `wandb "
                              "login`); set logger.mode=offline, or logger.fallback_offline=true to go offline "
                              "automatically")
        print("wandb: no API key found, logging offline as logger.fallback_offline=true asks", flush=True)
        mode = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    return WandbLogger(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.experiment_name,
                       name=name, save_dir=str(run_dir), mode=mode, job_type="train",
                       config=OmegaConf.to_container(cfg, resolve=True), settings={"init_timeout": 60})


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def make_loggers(cfg: DictConfig, run_dir: Path, name: str) -> list:
    from lightning.pytorch.loggers import CSVLogger

    if cfg.logger.name == "wandb" and cfg.logger.mode != "disabled":
        return [_wandb_logger(cfg, run_dir, name)]
    if cfg.logger.name == "csv":
        return [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    return []


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train one (experiment, seed) in ``run_dir`` and return its metrics (see :mod:`hm2bp.metrics`)."""
    validate(cfg)
    metrics_path = run_dir / "metrics.json"
    if metrics_complete(metrics_path):
        print(f"{metrics_path} is complete: seed {cfg.seed} of {cfg.experiment_name} is finished, skipping",
              flush=True)
        return json.loads(metrics_path.read_text())
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(check_checkpoint(last)) if (cfg.resume and last.exists()) else None

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from hm2bp.app.data import SpikeData
    from hm2bp.app.figures import learning_curves, spike_raster
    from hm2bp.app.module import HM2BPModule
    from hm2bp.train import summarize

    tr = cfg.trainer
    if tr.num_threads:
        torch.set_num_threads(int(tr.num_threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    augment = cfg.dataset.get("augment", None)
    data = SpikeData(cfg.dataset.name, cfg.data_dir, cfg.dataset.steps, tr.batch_size, cfg.seed,
                     cfg.dataset.get("fixed_trains", True), cfg.dataset.get("download", False),
                     cfg.dataset.get("options", None), None if augment is None else OmegaConf.to_container(augment))
    data.setup()  # loads the files now: a missing or corrupt file fails here, before any training
    model_cfg = cfg.model
    module = HM2BPModule(
        model_arch(model_cfg), data.info.shape, list(model_cfg.thresholds), n_train=data.n_train, lr=tr.lr,
        rule=OmegaConf.to_container(model_cfg.rule), tau_m=model_cfg.tau_m, tau_s=model_cfg.tau_s,
        t_ref=model_cfg.t_ref, lateral_w0=model_cfg.lateral_w0, init_scale=model_cfg.init_scale,
        conv_init_scale=model_cfg.conv_init_scale, desired=model_cfg.targets.desired,
        undesired=model_cfg.targets.undesired, margin=model_cfg.targets.margin, lr_schedule=tr.lr_schedule,
        boosting=tr.boosting, regularizer=OmegaConf.to_container(tr.regularizer))
    name = f"{cfg.experiment_name}-seed{cfg.seed}"
    loggers = make_loggers(cfg, run_dir, name)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_epochs=1)
    limits = {k: tr[k] for k in ("limit_train_batches", "limit_val_batches") if tr[k] is not None}
    trainer = L.Trainer(max_epochs=tr.max_epochs, accelerator=tr.accelerator, devices=tr.devices, logger=loggers,
                        callbacks=[checkpoint], enable_progress_bar=tr.progress_bar, num_sanity_val_steps=0,
                        deterministic=tr.deterministic, default_root_dir=str(run_dir), enable_model_summary=False,
                        log_every_n_steps=1,
                        **limits)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)

    metrics = {"experiment": cfg.experiment_name, "dataset": cfg.dataset.name, "model": model_cfg.name,
               "seed": int(cfg.seed), **summarize(module.history),
               "test_silent_outputs": module.history[-1]["test_silent_outputs"],
               "lateral_clamped_last_epoch": module.history[-1].get("lateral_clamped", 0)}
    atomic_write_json(run_dir / "history.json", module.history)
    figs = [learning_curves(module.history, run_dir / "learning_curves.png", name)]
    spikes, label = data.example(0)
    module.eval()
    with torch.no_grad():
        outs = module.net.forward_all(spikes)
    names = ["input"] + [f"layer {k + 1}" for k in range(len(outs))]
    figs.append(spike_raster([spikes[0]] + [o[0] for o in outs], names, run_dir / "raster.png",
                             f"{name}: test sample 0 (label {label})"))
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            for fig in figs:
                lg.log_image(fig.stem, [str(fig)])
            lg.experiment.summary.update({k: v for k, v in metrics.items() if isinstance(v, int | float)})
            lg.experiment.finish()
    atomic_write_json(metrics_path, metrics)  # last: its presence marks the seed finished
    return metrics
