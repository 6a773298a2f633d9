"""The app's training speed against the library loop's, before and after a change, in one run:
``python bench/app_vs_fit.py``.

For each job, each source tree (the working tree and ``--baseline``, exported with ``git archive``) trains the same
config twice, each in its own process: through the app (``python src/run.py … logger=none
trainer.progress_bar=false``) and through :func:`hm2bp.train.fit` (same network, data, encoder, loss, regulariser,
schedule and threads, read from the same composed config). Both time the training passes alone
(``train_seconds`` of the history); the rate is over the epochs after the first (which pays the warm-up). Jobs:

* ``digits``: the default job (``python src/run.py``: 64-800-10 on scikit-learn digits, 20 epochs);
* ``mnist5k``: ``experiment=mnist5k_mlp`` (784-800-10, T = 400, batch 64) for ``--epochs`` epochs.

Writes bench/results/app_vs_fit.json and the ``app-vs-fit`` section of BENCHMARKS.md. Run it alone on the machine:
these are wall-clock rates.

    python bench/app_vs_fit.py [--baseline edf026d] [--epochs 3]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

JOBS = {"digits": [], "mnist5k": ["experiment=mnist5k_mlp"]}
BASELINE = "edf026d"  # before the app and fit shared one step


def fit_job(tree: Path, overrides: list[str]) -> list[dict]:
    """``fit`` on the config the app would compose from ``overrides`` in ``tree`` (run inside that tree)."""
    import torch
    from hydra import compose, initialize_config_dir

    import hm2bp.app.config as app_config  # registers what the tree's configs compose
    from hm2bp.data.registry import get_dataset
    from hm2bp.functional import HM2BPRule
    from hm2bp.layers import SpikingNet
    from hm2bp.loss import SpikeCountLoss
    from hm2bp.train import LR_SCHEDULES, fit

    try:  # where the baseline tree kept them
        from hm2bp.data.static import Encoder, StaticSplit
        from hm2bp.loss import Regularizer
    except ImportError:
        from hm2bp.train import Encoder, Regularizer, StaticSplit

    with initialize_config_dir(config_dir=str(tree / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    ds, model, tr = cfg.dataset, cfg.model, cfg.trainer
    torch.set_num_threads(int(tr.num_threads))
    torch.use_deterministic_algorithms(bool(tr.deterministic))
    torch.manual_seed(int(cfg.seed))
    info = get_dataset(ds.name)
    x_tr, y_tr, x_te, y_te = info.load(Path(cfg.data_dir), False)
    train = StaticSplit(x_tr, y_tr, Encoder(ds.steps, seed=cfg.seed, fixed=ds.fixed_trains))
    test = StaticSplit(x_te, y_te, Encoder(ds.steps, seed=cfg.seed), key_offset=len(x_tr))
    net = SpikingNet(app_config.model_arch(model), info.shape, list(model.thresholds), tau_m=model.tau_m,
                     tau_s=model.tau_s, t_ref=model.t_ref, rule=HM2BPRule(**model.rule), lateral_w0=model.lateral_w0,
                     target_count=int(model.targets.desired), init_scale=model.init_scale,
                     conv_init_scale=model.conv_init_scale)
    extra = {"shuffle": tr.shuffle} if "shuffle" in inspect.signature(fit).parameters else {}
    return fit(net, train, test, epochs=tr.max_epochs, batch_size=tr.batch_size, lr=tr.lr, seed=cfg.seed,
               boosting=tr.boosting, regularizer=Regularizer(**tr.regularizer), loss_fn=SpikeCountLoss(**model.targets),
               schedule=LR_SCHEDULES[tr.lr_schedule], **extra)


def _overrides(name: str, epochs: int) -> list[str]:
    return [*JOBS[name], f"trainer.max_epochs={epochs}"] if name == "mnist5k" else []


def _rate(history: list[dict]) -> float:
    timed = history[1:]
    return sum(h["train_samples"] for h in timed) / sum(h["train_seconds"] for h in timed)


def run_job(tree: Path, how: str, name: str, epochs: int, out: Path, extensions: Path) -> dict:
    """One process of ``tree`` training job ``name`` through ``how`` ("app" or "fit"): its history's rate."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(tree / "src"),
           "HM2BP_EXTENSIONS_DIR": str(extensions)}
    overrides = _overrides(name, epochs)
    if how == "app":
        cmd = [sys.executable, str(tree / "src" / "run.py"), *overrides, "logger=none", "trainer.progress_bar=false",
               f"hydra.run.dir={out}"]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--fit-job", str(tree), str(out), *overrides]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{how} {name} from {tree} failed:\n{proc.stderr[-3000:]}")
    history = json.loads((out / "history.json").read_text())
    return {"samples_per_second": _rate(history), "epoch_seconds": [h["train_seconds"] for h in history],
            "test_acc": history[-1]["test_acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=BASELINE, help="git revision to compare with (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=3, help="mnist5k epochs (all but the first are timed)")
    ap.add_argument("--fit-job", nargs="+", metavar=("TREE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fit_job:  # the fit side, in its own process and tree
        tree, out, *overrides = args.fit_job
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "history.json").write_text(json.dumps(fit_job(Path(tree), overrides)))
        return

    from common import RESULTS, ROOT, export_tree, machine, short_rev, update_section
    from hm2bp.io import atomic_write_json

    rev = short_rev(args.baseline)
    results: dict = {"before": {}, "after": {}}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": export_tree(rev, Path(tmp) / "before"), "after": ROOT}
        for name in JOBS:
            for which, tree in trees.items():
                results[which][name] = {how: run_job(tree, how, name, args.epochs, Path(tmp) / f"{which}-{name}-{how}",
                                                     Path(tmp) / f"extensions-{which}") for how in ("fit", "app")}
                print(which, name, json.dumps(results[which][name]), flush=True)
    m = machine()
    atomic_write_json(RESULTS / "app_vs_fit.json", {"benchmark": "app_vs_fit", "baseline": rev,
                                                    "epochs": args.epochs, "machine": m, "results": results})
    rows = []
    for name, what in (("digits", "default job `python src/run.py` (64-800-10, 20 epochs)"),
                       ("mnist5k", f"`experiment=mnist5k_mlp` (784-800-10), {args.epochs} epochs")):
        cells = []
        for which in ("before", "after"):
            r = results[which][name]
            cells += [f"{r['fit']['samples_per_second']:.0f}", f"{r['app']['samples_per_second']:.0f}",
                      f"**{r['app']['samples_per_second'] / r['fit']['samples_per_second']:.3f}**"]
        rows.append(f"| {what} | {' | '.join(cells)} |")
    update_section("app-vs-fit", f"""## The app against the library loop (same run)

`python bench/app_vs_fit.py` — one config trained by the app (`python src/run.py … logger=none
trainer.progress_bar=false`) and by `hm2bp.train.fit`, each in its own process, from two source trees: `{rev}`
(before the app and `fit` shared one step and one meter) and the working tree. Training samples per second over the
epochs after the first (each side's own `train_seconds`); {m['threads']} threads ({m['cpu_capability']}), torch
{m['torch']}.

| job | before: fit | before: app | app / fit | after: fit | after: app | app / fit |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}""")


if __name__ == "__main__":
    main()
