"""Experiment app entry point (Hydra): ``python src/run.py [group=option ...] [key=value ...]``.

Examples:
    python src/run.py                                   # HM2-BP 64-800-10 on scikit-learn digits (offline)
    python src/run.py -m seed=0,1,2,3,4 dataset=digits  # five seeds; finished seeds are skipped on rerun
    python src/run.py -m trainer.lr=0.01,0.001          # two settings: two run dirs (one per fingerprint)
    python src/run.py -m seed=0,1 hydra/launcher=joblib # seeds in parallel
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hm2bp.app.cli import one_line_hydra_errors, user_errors, where_the_files_are
from hm2bp.app.config import ConfigError, validate
from hm2bp.app.identity import record_command
from hm2bp.app.runner import run


def _first_process() -> bool:
    """False in the other processes of a data-parallel run (they rerun this command with a rank set), which
    would only repeat the first one's output."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    with user_errors():  # one `error: …` line and a non-zero exit for errors users cause
        if hydra_cfg.mode == RunMode.MULTIRUN and cfg.trainer.get("strategy") == "ddp" and \
                "SLURM_JOB_ID" not in os.environ:
            raise ConfigError("trainer=ddp cannot run inside a local multirun (-m): Lightning starts its other "
                              "processes by rerunning the command line; run one job at a time, or use "
                              "hydra/launcher=slurm (docs/ddp.md)")
        validate(cfg)  # a command that fails its checks is not recorded as one that used the folder
        if _first_process():
            commands = record_command(run_dir, cfg.seed, cfg.experiment_name, list(hydra_cfg.overrides.task))
            print(f"run dir: {run_dir}" + (f" (the commands that used it: {commands})" if commands else ""),
                  flush=True)
        metrics = run(cfg, run_dir)
    if not metrics:  # a DDP process other than the first: that one reports
        return float("nan")
    last10 = f", mean of last 10 {metrics['last10_test_acc']:.4f}" if metrics["epochs"] >= 10 else ""
    print(f"{cfg.experiment_name} seed {cfg.seed}: final test acc {metrics['test_acc']:.4f}, "
          f"best {metrics['best_test_acc']:.4f} (epoch {metrics['best_epoch']}){last10}", flush=True)
    print(where_the_files_are(run_dir), flush=True)
    return float(metrics["test_acc"])


if __name__ == "__main__":
    one_line_hydra_errors()
    main()
