"""The library loop (:func:`hm2bp.train.fit`) and the app (:mod:`hm2bp.app.runner`) train with one step and one
meter: for the same seed and settings they write the same history, number for number."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from conftest import trained
from hm2bp.app.runner import run
from hm2bp.data.digits import load_digits_split
from hm2bp.data.static import Encoder, StaticSplit
from hm2bp.layers import SpikingNet
from hm2bp.loss import Regularizer
from hm2bp.train import fit

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_fit_and_the_app_write_the_same_digits_history(tmp_path):
    """The default job (digits, 64-800-10, batch 64, lr 1e-2, λ 10) for 2 epochs, against ``fit`` built from the
    engine's defaults alone: every history value equal except the wall-clock seconds."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["trainer.max_epochs=2", "logger=none",
                                                       "trainer.progress_bar=false", f"output_root={tmp_path}"])
    run(cfg, tmp_path / "app")
    app = json.loads((tmp_path / "app" / "history.json").read_text())

    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = load_digits_split()
    train = StaticSplit(x_tr, y_tr, Encoder(400, seed=0))
    test = StaticSplit(x_te, y_te, Encoder(400, seed=0), key_offset=len(x_tr))
    net = SpikingNet("800-10", (64,), [10.0, 8.0])
    engine = fit(net, train, test, epochs=2, batch_size=64, lr=0.01, seed=0, regularizer=Regularizer())

    assert len(app) == 2 and app[1]["lr"] == 0.01 and app[0]["lateral_clamped"] >= 0
    assert trained(app) == trained(engine)
