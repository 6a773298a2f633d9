"""Prepare an experiment's dataset: fetch (when the config allows), verify, preprocess, and write a manifest.

    python -m hm2bp.app.prepare <experiment> --out MANIFEST.json [key=value ...]

Composes ``conf/`` with ``experiment=<experiment>`` and the given Hydra overrides (the same ones the training run
gets), calls the dataset's registered loader exactly as a training run does (so missing or corrupt files fail with
the loader's message, and speech / N-MNIST caches are built), and writes a small JSON manifest: the dataset, its
shape facts and a SHA-256 fingerprint of the loaded arrays. The DVC ``prepare`` stage runs this; training stages
depend on the manifest, so they rerun only when the data they would see changed. Nothing here trains.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from hm2bp.app.config import ConfigError, validate
from hm2bp.data.idx import DatasetFileError
from hm2bp.data.registry import DatasetInfo, get_dataset
from hm2bp.io import atomic_write_json

CONF = Path(__file__).resolve().parents[3] / "conf"


def compose_experiment(experiment: str, overrides: list[str]) -> DictConfig:
    """The run configuration ``python src/run.py experiment=<experiment> <overrides>`` would train with."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])


def load_splits(info: DatasetInfo, cfg: DictConfig) -> tuple[list[torch.Tensor], int, int]:
    """Call the registered loader as :class:`hm2bp.app.data.SpikeData` does; return the loaded arrays (train and
    test), and the train and test sizes."""
    ds = cfg.dataset
    data_dir, download = Path(cfg.data_dir), bool(ds.get("download", False))
    if info.kind == "events":
        options = OmegaConf.to_container(ds.options) if ds.get("options") else {}
        train, test = info.load(data_dir, download, steps=ds.steps, **options)
        arrays = [a for s in (train, test) for a in (s.times, s.channels, s.offsets, s.labels)]
        return arrays, len(train), len(test)
    url = ds.get("url")  # mnist and emnist only: where download fetches from
    x_tr, y_tr, x_te, y_te = info.load(data_dir, download, **({} if url is None else {"url": url}))
    return [x_tr, y_tr, x_te, y_te], len(y_tr), len(y_te)


def fingerprint(arrays: list[torch.Tensor]) -> str:
    """SHA-256 over the dtype, shape and bytes of every array, in order."""
    h = hashlib.sha256()
    for a in arrays:
        arr = np.ascontiguousarray(a.numpy() if isinstance(a, torch.Tensor) else a)
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def prepare(experiment: str, overrides: list[str]) -> dict:
    """Load (and so verify and cache) the dataset of ``experiment``; return its manifest."""
    cfg = compose_experiment(experiment, overrides)
    validate(cfg)
    info = get_dataset(cfg.dataset.name)
    arrays, n_train, n_test = load_splits(info, cfg)
    return {"experiment": experiment, "dataset": info.name, "data_dir": str(cfg.data_dir), "kind": info.kind,
            "steps": int(cfg.dataset.steps), "n_inputs": info.n_inputs, "n_classes": info.n_classes,
            "n_train": n_train, "n_test": n_test, "sha256": fingerprint(arrays)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hm2bp.app.prepare", description=__doc__.splitlines()[0])
    ap.add_argument("experiment", help="a preset in conf/experiment/ (e.g. mnist_mlp)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as given to src/run.py (e.g. data_dir=data)")
    ap.add_argument("--out", type=Path, required=True, help="where the JSON manifest goes")
    args = ap.parse_intermixed_args(argv)
    try:
        manifest = prepare(args.experiment, args.overrides)
    except (DatasetFileError, ConfigError) as err:
        print(f"prepare {args.experiment}: {err}", file=sys.stderr, flush=True)
        return 1
    atomic_write_json(args.out, manifest)
    print(f"prepare {args.experiment}: {manifest['dataset']} verified, {manifest['n_train']} train / "
          f"{manifest['n_test']} test samples, sha256 {manifest['sha256'][:12]} → {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
