"""LightningModule training a spiking network (MLP or CNN) with the HM2-BP rule: the engine's step
(:func:`hm2bp.train.step`) and epoch meter (:class:`hm2bp.metrics.EpochMeter`) under Lightning's loop."""

from __future__ import annotations

import time
from collections.abc import Sequence

import lightning as L
import torch

from hm2bp.app.checkpoints import MID_EPOCH_KEY, CheckpointError
from hm2bp.bptt import BPTTRule
from hm2bp.functional import HM2BPRule
from hm2bp.layers import SpikingNet
from hm2bp.loss import BoostingWeights, Regularizer, SpikeCountLoss
from hm2bp.metrics import EpochMeter, history_row, peak_memory_mib
from hm2bp.train import LR_SCHEDULES, make_optimizer, start_epoch, step, take_lateral_clamped


def _world() -> int:
    """Processes of the running DDP job (1 without one)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _max_over_processes(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` over the DDP processes (a copy)."""
    out = t.clone()
    if _world() > 1:
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.MAX)
    return out


def _per_process(state: dict) -> list:
    """Every DDP process's ``state`` in rank order (``[state]`` without DDP); all processes must call it."""
    if _world() == 1:
        return [state]
    states: list = [None] * _world()
    torch.distributed.all_gather_object(states, state)
    return states


class HM2BPModule(L.LightningModule):
    """HM2-BP training of a :class:`~hm2bp.layers.SpikingNet` (``arch`` in the paper's notation, e.g. ``800-10`` or
    ``15C5-P2-40C5-P2-300-10``, on inputs of ``input_shape``) with the authors' training rules (docs/algorithm.md §3,
    §7).

    ``neuron`` (SpikingNet's keyword arguments: tau_m, tau_s, t_ref, lateral_w0, init_scale, conv_init_scale),
    ``targets`` (:class:`~hm2bp.loss.SpikeCountLoss`), ``rule`` (:class:`~hm2bp.functional.HM2BPRule`), ``bptt``
    (:class:`~hm2bp.bptt.BPTTRule`: given, the network learns by BPTT instead of ``rule``) and ``regularizer``
    (:class:`~hm2bp.loss.Regularizer`; None: none) are passed to the engine, whose defaults fill what they leave
    out. Per epoch it appends :func:`~hm2bp.metrics.history_row` to :attr:`history` and logs it. The
    learning rate is set at the start of every epoch from the epoch number (``lr_schedule``, a name in
    :data:`~hm2bp.train.LR_SCHEDULES`), so resumed runs follow the same schedule.
    """

    def __init__(self, arch: str, input_shape: Sequence[int], thresholds: Sequence[float], *, n_train: int,
                 lr: float, lr_schedule: str, boosting: bool, neuron: dict | None = None, targets: dict | None = None,
                 rule: dict | None = None, bptt: dict | None = None, regularizer: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {sorted(LR_SCHEDULES)}, got {lr_schedule!r}")
        self.loss_fn = SpikeCountLoss(**(targets or {}))
        learning = HM2BPRule(**(rule or {})) if bptt is None else BPTTRule(**bptt)
        self.net = SpikingNet(arch, input_shape, thresholds, rule=learning, target_count=int(self.loss_fn.desired),
                              **(neuron or {}))
        self.boost = BoostingWeights(n_train) if boosting else None
        self.reg = None if regularizer is None else Regularizer(**regularizer)
        fan_outs = [spec.fan_out() for spec in self.net.specs]
        self.train_meter = EpochMeter(len(self.net.layers), fan_outs)
        self.test_meter = EpochMeter(len(self.net.layers), fan_outs)
        self.history: list[dict[str, float]] = []
        self._step: tuple | None = None  # the current training step's result, metered after its backward

    def forward(self, spikes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(spikes, labels)

    # -- training ---------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.boost is not None:
            self.boost.to(self.device)

    def on_train_epoch_start(self) -> None:
        if self.boost is not None and _world() > 1:
            # every process's record of the epoch (each trained its own shard): all apply the same update
            self.boost.merge(_max_over_processes)
        start_epoch(self.optimizers(), self.hparams.lr, LR_SCHEDULES[self.hparams.lr_schedule], self.current_epoch,
                    self.boost)
        self.train_meter.reset()
        take_lateral_clamped(self.net)
        self._epoch_start = time.perf_counter()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, idx = batch
        result = step(self.net, x, y, self.loss_fn, train=True, indices=idx, boosting=self.boost,
                      regularizer=self.reg)
        self._step = (result, x, y)
        return result.objective

    def on_after_backward(self) -> None:
        # metered here, not at the batch's end: callbacks (the mid-epoch checkpoint) run before the module's
        # on_train_batch_end, and the Λ-clamp hits are counted by this backward
        if self._step is not None:
            result, x, y = self._step
            self.train_meter.update(result.outs, result.loss, result.pred, y, take_lateral_clamped(self.net),
                                    inputs=x)
            self._step = None

    # -- evaluation on the test split (the authors' per-epoch test) --------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._train_seconds = time.perf_counter() - self._epoch_start  # training part of the epoch only
        self.test_meter.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, _ = batch
        result = step(self.net, x, y, self.loss_fn, train=False)
        self.test_meter.update(result.outs, result.loss, result.pred, y, inputs=x)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        train = self.train_meter.compute()  # summed over the DDP processes (train seconds: this process's)
        if train["samples"] == 0:
            return
        row = history_row(self.current_epoch, train, self.test_meter.compute(), self._train_seconds,
                          self.optimizers().param_groups[0]["lr"], peak_memory_mib(self.device))
        self.history.append(row)
        logged = {f"epoch/{k}": float(v) for k, v in row.items() if k != "epoch"}
        logged["test/acc_best"] = max(h["test_acc"] for h in self.history)
        self.log_dict(logged)
        self.log_dict({"train/acc": row["train_acc"], "test/acc": row["test_acc"]}, prog_bar=True)

    # -- optimizer and checkpoint state -----------------------------------------------------------------------
    def configure_optimizers(self):
        return make_optimizer(self.net.parameters(), self.hparams.lr)

    @property
    def samples_this_epoch(self) -> int:
        """Training samples this process has seen so far in the current epoch (a mid-epoch resume skips them)."""
        return int(self.train_meter.samples)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["hm2bp_history"] = self.history
        if self.boost is not None:
            if _world() > 1:  # every process saves (only rank 0 writes): all call this
                self.boost.merge(_max_over_processes)
            checkpoint["hm2bp_boosting"] = self.boost.state_dict()
        # the current epoch's meter: a checkpoint written mid-epoch (MID_EPOCH_KEY) resumes it, as Lightning does not
        # call on_train_epoch_start again; after an epoch-end checkpoint the next epoch resets it. One entry per DDP
        # process: each resumes its own.
        checkpoint["hm2bp_epoch_state"] = _per_process({
            "meter": {k: v.detach().cpu().clone() for k, v in self.train_meter.metric_state.items()},
            "elapsed": time.perf_counter() - getattr(self, "_epoch_start", 0.0)})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint["hm2bp_history"])
        if self.boost is not None:
            self.boost.load_state_dict(checkpoint["hm2bp_boosting"])
        if not checkpoint.get(MID_EPOCH_KEY):
            return
        states = checkpoint["hm2bp_epoch_state"]
        if len(states) != _world():
            raise CheckpointError(f"this checkpoint was written during an epoch by {len(states)} process(es); "
                                  f"resume it with trainer.devices={len(states)} (this run has {_world()})")
        state = states[self.global_rank]
        for k, v in state["meter"].items():
            setattr(self.train_meter, k, v.to(self.device))
        self.train_meter._update_count = 1  # torchmetrics warns on compute() before any update
        self._epoch_start = time.perf_counter() - state["elapsed"]
