"""One training job of the experiment app: compose → validate → fit (resuming) → metrics.json + figures.

A run is identified by the fingerprint of its resolved config (:mod:`hm2bp.app.identity`): a complete
``metrics.json`` of the same fingerprint means the run is finished and is skipped; one of another fingerprint is
refused (never overwritten); ``checkpoints/last.ckpt`` is resumed only when it has the same fingerprint.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from hm2bp import backend
from hm2bp.app.checkpoints import WANDB_ID_KEY, ForeignCheckpoint, RunCheckpoint, check_resumable, move_aside
from hm2bp.app.cli import quiet_library_noise
from hm2bp.app.config import ConfigError, model_arch, validate
from hm2bp.app.identity import fingerprint, run_config
from hm2bp.app.schema import NET
from hm2bp.io import atomic_write_json
from hm2bp.metrics import differences, metrics_complete, rule_of


def _wandb_logger(cfg: DictConfig, run_dir: Path, name: str, group: str, run_id: str | None):
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
    # id + resume="allow": a resumed training continues its wandb run instead of opening a second one
    logger = WandbLogger(project=cfg.logger.project, entity=cfg.logger.entity, group=group, id=run_id,
                         resume="allow", name=name, save_dir=str(run_dir), mode=mode, job_type="train",
                         config=OmegaConf.to_container(cfg, resolve=True), settings={"init_timeout": 60})
    # Lightning 2.6 always passes anonymous=None to wandb.init, which current wandb warns about; we never set it
    logger._wandb_init.pop("anonymous", None)
    return logger


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def uses_wandb(cfg: DictConfig) -> bool:
    """Whether ``cfg.logger`` logs to wandb (online or offline)."""
    return cfg.logger.name == "wandb" and cfg.logger.mode != "disabled"


def wandb_run_id(previous: str | None) -> str:
    """The wandb run id to log to: ``previous``, the one the resumed checkpoint recorded, so all launches of one
    training are one wandb run; a new one for a training that starts over (its steps would clash with the old
    run's)."""
    if previous:
        return previous
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # as wandb's own ids


def make_loggers(cfg: DictConfig, run_dir: Path, name: str, group: str, wandb_id: str | None = None) -> list:
    """The loggers ``cfg.logger`` asks for; wandb runs of one config (``group``: its seeds) are grouped, and a wandb
    run continues the run ``wandb_id`` (:func:`wandb_run_id`) or, for None, is a new one."""
    from lightning.pytorch.loggers import CSVLogger

    if uses_wandb(cfg):
        return [_wandb_logger(cfg, run_dir, name, group, wandb_id)]
    if cfg.logger.name == "csv":
        return [CSVLogger(save_dir=str(run_dir), name="csv", version="")]
    return []


def device_encoding(tr: DictConfig) -> bool:
    """``trainer.device_encoding``, or when null: whether training runs on a GPU (``accelerator`` gpu/cuda, or auto
    with CUDA available)."""
    if tr.get("device_encoding") is not None:
        return bool(tr.device_encoding)
    return tr.accelerator in ("gpu", "cuda") or (tr.accelerator == "auto" and torch.cuda.is_available())


def finished_metrics(metrics_path: Path, fp: str, config: dict) -> dict | None:
    """The finished run's metrics if ``metrics_path`` is complete with fingerprint ``fp``; None if there is none.

    A complete file of another config is refused with the differing keys: finished results are never overwritten.
    """
    if not metrics_complete(metrics_path):
        return None
    done = json.loads(metrics_path.read_text())
    if done["fingerprint"] == fp:
        return done
    diff = differences(done.get("config", {}), config)
    raise ConfigError(f"{metrics_path} holds the finished results of another config (fingerprint "
                      f"{done['fingerprint']}, this run {fp}; differing keys: {'; '.join(diff)}); they are never "
                      f"overwritten: choose another output folder")


def resume_path(last: Path, resume: bool | str, fp: str, config: dict) -> tuple[Path | None, dict]:
    """The checkpoint to resume (``last`` if it exists and belongs to this config) and its contents (``{}`` for
    none), after ``resume``'s rule: ``true`` refuses a checkpoint of another config, ``false`` moves any old one
    aside, ``"auto"`` moves aside only one of another config. A moved checkpoint is named in the log."""
    if not last.exists():
        return None, {}
    if resume is not False:
        try:
            state = check_resumable(last, fp, config)
        except ForeignCheckpoint:
            if resume != "auto":
                raise
        else:
            print(f"resuming from {last} (saved {'during' if state.get('hm2bp_mid_epoch') else 'at the end of'} "
                  f"epoch {state.get('epoch')})", flush=True)
            return last, state
    moved = move_aside(last)
    why = "resume=false" if resume is False else "resume=auto: it belongs to another config"
    print(f"{why}: moved the old checkpoint {last} aside to {moved}; starting over", flush=True)
    return None, {}


def build_module(cfg: DictConfig, input_shape: tuple[int, ...], n_train: int):
    """The :class:`~hm2bp.app.module.HM2BPModule` that ``cfg`` describes, for ``n_train`` training samples."""
    from hm2bp.app.module import HM2BPModule

    model, tr = cfg.model, cfg.trainer
    return HM2BPModule(model_arch(model), input_shape, list(model.thresholds), n_train=n_train, lr=tr.lr,
                       lr_schedule=tr.lr_schedule, boosting=tr.boosting, neuron={k: model[k] for k in NET},
                       targets=OmegaConf.to_container(model.targets), rule=OmegaConf.to_container(model.rule),
                       bptt=None if model.get("bptt") is None else OmegaConf.to_container(model.bptt),
                       regularizer=OmegaConf.to_container(tr.regularizer))


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train one (config, seed) in ``run_dir`` and return its metrics (see :mod:`hm2bp.metrics`)."""
    validate(cfg)
    config = run_config(cfg)
    fp = fingerprint(config)
    metrics_path = run_dir / "metrics.json"
    done = finished_metrics(metrics_path, fp, config)
    if done is not None:
        print(f"{metrics_path} is complete: seed {cfg.seed} of {cfg.experiment_name} ({fp}) is finished, skipping",
              flush=True)
        return done
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    ckpt_path, resumed = resume_path(last, cfg.resume, fp, config)
    previous_wandb_id = resumed.get(WANDB_ID_KEY)
    del resumed  # the weights inside: Lightning reads the checkpoint itself

    import lightning as L

    from hm2bp.app.data import SpikeData
    from hm2bp.app.figures import learning_curves, spike_raster
    from hm2bp.app.finite import FiniteCheck
    from hm2bp.metrics import summarize

    quiet_library_noise()
    tr = cfg.trainer
    if tr.num_threads:
        torch.set_num_threads(int(tr.num_threads))
    backend.set_strategy(tr.get("contraction", "auto"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    augment = cfg.dataset.get("augment", None)
    data = SpikeData(cfg.dataset.name, cfg.data_dir, cfg.dataset.steps, tr.batch_size, cfg.seed,
                     cfg.dataset.get("fixed_trains", True), cfg.dataset.get("download", False),
                     cfg.dataset.get("options", None), None if augment is None else OmegaConf.to_container(augment),
                     device_encoding=device_encoding(tr), num_workers=int(tr.get("num_workers") or 0),
                     pin_memory=bool(tr.get("pin_memory", False)), shuffle=tr.shuffle,
                     url=cfg.dataset.get("url"))
    data.setup()  # loads the files now: a missing or corrupt file fails here, before any training
    module = build_module(cfg, data.info.shape, data.n_train)
    name = f"{cfg.experiment_name}-seed{cfg.seed}"
    # kept through launches without wandb too, so a later wandb launch still continues the same run
    wandb_id = wandb_run_id(previous_wandb_id) if uses_wandb(cfg) else previous_wandb_id
    loggers = make_loggers(cfg, run_dir, name, f"{cfg.dataset.name}-{cfg.model.name}-{fp}", wandb_id)
    checkpoint = RunCheckpoint(last, fp, config, tr.get("checkpoint_every_minutes"), wandb_id=wandb_id)
    limits = {k: tr[k] for k in ("limit_train_batches", "limit_val_batches") if tr[k] is not None}
    # use_distributed_sampler=False: under DDP our samplers shard the seeded order themselves (SpikeData)
    trainer = L.Trainer(max_epochs=tr.max_epochs, accelerator=tr.accelerator, devices=tr.devices,
                        strategy=tr.get("strategy", "auto"), num_nodes=int(tr.get("num_nodes", 1)),
                        use_distributed_sampler=False, logger=loggers, callbacks=[checkpoint, FiniteCheck()],
                        enable_checkpointing=False, enable_progress_bar=tr.progress_bar, num_sanity_val_steps=0,
                        deterministic=tr.deterministic, default_root_dir=str(run_dir), enable_model_summary=False,
                        log_every_n_steps=1,
                        **limits)
    with checkpoint.handling_signals():
        try:
            trainer.fit(module, datamodule=data, ckpt_path=None if ckpt_path is None else str(ckpt_path))
        except torch.OutOfMemoryError as err:
            smaller = max(1, int(tr.batch_size) // 2)
            raise ConfigError(f"out of {tr.accelerator} memory at trainer.batch_size={tr.batch_size} "
                              f"({str(err).splitlines()[0]}); lower it, e.g. trainer.batch_size={smaller} (another "
                              f"config: it trains in its own run dir)") from err

    if not trainer.is_global_zero:  # under DDP only the first process writes the run's files
        return {}
    metrics = {"experiment": cfg.experiment_name, "dataset": cfg.dataset.name, "model": cfg.model.name,
               "rule": rule_of(config), "seed": int(cfg.seed), "fingerprint": fp, **summarize(module.history),
               "test_silent_outputs": module.history[-1]["test_silent_outputs"],
               "lateral_clamped_last_epoch": module.history[-1]["lateral_clamped"], "config": config}
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
