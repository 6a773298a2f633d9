"""The app's defaults are the engine's: Hydra config nodes read from the engine's signatures and dataclasses.

``conf/model/base_mlp.yaml``, ``conf/trainer/default.yaml`` and ``conf/rule/bptt.yaml`` pull these nodes in
through their defaults lists (``/engine/<name>@<package>``), so a setting's default lives in the engine alone: a new
:class:`HM2BPRule` field appears in every config (and its fingerprint) without touching a YAML file. Importing this
module registers them (idempotent); every composing entry point imports it through :mod:`hm2bp.app.config`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import fields

from hydra.core.config_store import ConfigStore

from hm2bp.bptt import BPTTRule
from hm2bp.functional import HM2BPRule
from hm2bp.layers import SpikingNet
from hm2bp.loss import Regularizer, SpikeCountLoss
from hm2bp.train import LR_SCHEDULES, fit


def keyword_defaults(fn: Callable, skip: frozenset[str] = frozenset()) -> dict:
    """``{name: default}`` of ``fn``'s keyword parameters that have a default, minus ``skip``."""
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.default is not inspect.Parameter.empty and p.name not in skip}


def _schedule_name(schedule: Callable[[int], float]) -> str:
    return next(name for name, fn in LR_SCHEDULES.items() if fn is schedule)


# model.<key>: the network's neuron and initialisation (rule and target_count come from model.rule/model.targets)
NET = keyword_defaults(SpikingNet.__init__, frozenset({"rule", "target_count"}))
TARGETS = keyword_defaults(SpikeCountLoss.__init__)  # model.targets
RULE = {f.name: f.default for f in fields(HM2BPRule)}  # model.rule
BPTT = {f.name: f.default for f in fields(BPTTRule)}  # model.bptt (rule=bptt)
REGULARIZER = {f.name: f.default for f in fields(Regularizer)}  # trainer.regularizer
_fit = keyword_defaults(fit)
TRAINING = {"lr_schedule": _schedule_name(_fit["schedule"]), "boosting": _fit["boosting"],
            "shuffle": _fit["shuffle"]}  # trainer.<key>

NODES = {"net": NET, "targets": TARGETS, "rule": RULE, "bptt": BPTT, "regularizer": REGULARIZER,
         "training": TRAINING}


def register() -> None:
    """Store :data:`NODES` as ``engine/<name>`` in Hydra's config store."""
    store = ConfigStore.instance()
    for name, node in NODES.items():
        store.store(group="engine", name=name, node=dict(node))


register()
