"""The app's defaults are the engine's: the composed default config holds exactly the engine's settings and values."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hm2bp.app.schema import NET, REGULARIZER, RULE, TARGETS, TRAINING
from hm2bp.functional import HM2BPRule
from hm2bp.layers import SpikingNet
from hm2bp.loss import Regularizer, SpikeCountLoss

CONF = Path(__file__).resolve().parent.parent / "conf"


def _default_config():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config"), resolve=True)


def test_the_default_config_carries_the_engine_defaults():
    cfg = _default_config()
    model, trainer = cfg["model"], cfg["trainer"]
    assert model["rule"] == {f.name: getattr(HM2BPRule(), f.name) for f in fields(HM2BPRule)}
    assert model["targets"] == {"desired": SpikeCountLoss().desired, "undesired": SpikeCountLoss().undesired,
                                "margin": SpikeCountLoss().margin}
    assert trainer["regularizer"] == {f.name: getattr(Regularizer(), f.name) for f in fields(Regularizer)}
    net = SpikingNet("800-10", (64,), [10.0, 8.0])
    hidden, out = net.layers
    assert {k: model[k] for k in NET} == {
        "tau_m": hidden.setup.lif.tau_m, "tau_s": hidden.setup.lif.tau_s, "t_ref": hidden.setup.lif.t_ref,
        "lateral_w0": out.setup.lateral_w0, "init_scale": hidden.init_scale,
        "conv_init_scale": SpikingNet("2C3-10", (1, 4, 4), [1.0, 1.0]).layers[0].init_scale}
    assert {k: trainer[k] for k in TRAINING} == {"lr_schedule": "inverse_sqrt", "boosting": True,
                                                  "shuffle": "permutation"}
    # the nodes cover every engine setting: a new HM2BPRule field reaches every config without a YAML edit
    assert set(RULE) == {f.name for f in fields(HM2BPRule)} and set(REGULARIZER) == {"lam", "beta", "limit"}
    assert set(TARGETS) == {"desired", "undesired", "margin"}
