"""LightningModule training a spiking network (MLP or CNN) with the HM2-BP rule (automatic optimization)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import lightning as L
import torch
import torchmetrics

from hm2bp import backend
from hm2bp.app.checkpoints import MID_EPOCH_KEY, CheckpointError
from hm2bp.functional import HM2BPRule
from hm2bp.layers import SpikingNet
from hm2bp.loss import BoostingWeights, SpikeCountLoss, predict
from hm2bp.train import LR_SCHEDULES, Regularizer


class NonFiniteError(RuntimeError):
    """Raised when a loss, weight or gradient stops being finite."""


# On the Triton path (a GPU) no training step reads a value back on the host: the finiteness checks are kept on the
# device and read every this many steps (and at the epoch's end), naming the first bad step all the same.
FINITE_CHECK_EVERY = 50


def _host(value):
    """Accumulators as plain numbers (for history rows and checkpoints)."""
    if isinstance(value, list):
        return [_host(v) for v in value]
    return float(value) if isinstance(value, torch.Tensor) else value


def _world() -> int:
    """Processes of the running DDP job (1 without one)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
    """``t`` summed (``op="sum"``) or maxed (``"max"``) element-wise over the DDP processes (a copy)."""
    out = t.clone()
    if _world() > 1:
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM if op == "sum" else
                                     torch.distributed.ReduceOp.MAX)
    return out


def _merge_boosting(boost: BoostingWeights) -> None:
    """Under DDP: every process's record of the epoch (each trained its own shard), so that all apply the same
    boosting update."""
    if _world() > 1:
        boost.merge(lambda t: _all_reduce(t, "max"))


class HM2BPModule(L.LightningModule):
    """HM2-BP training of a :class:`~hm2bp.layers.SpikingNet` (``arch`` in the paper's notation, e.g. ``800-10`` or
    ``15C5-P2-40C5-P2-300-10``, on inputs of ``input_shape``) with the authors' training rules (docs/algorithm.md §3,
    §7).

    Per epoch it records train/test accuracy and loss, per-layer firing rate and silent fraction, the lateral-clamp
    count and the number of all-silent test outputs in :attr:`history`, and logs them. The learning rate is set at
    the start of every epoch from the epoch number (``lr_schedule``: e.g. ``lr·1/√max(e, 1)``), so resumed runs follow
    the same schedule.
    """

    def __init__(self, arch: str, input_shape: Sequence[int], thresholds: Sequence[float], *, n_train: int,
                 lr: float, rule: dict | None = None, tau_m: float = 64.0, tau_s: float = 8.0, t_ref: int = 2,
                 lateral_w0: float = 1.0, init_scale: float = 1.0, conv_init_scale: float = 0.5,
                 desired: float = 35, undesired: float = 5, margin: float = 5, lr_schedule: str = "inverse_sqrt",
                 boosting: bool = True, regularizer: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {sorted(LR_SCHEDULES)}, got {lr_schedule!r}")
        self.net = SpikingNet(arch, input_shape, thresholds, tau_m=tau_m, tau_s=tau_s, t_ref=t_ref,
                              rule=HM2BPRule(**(rule or {})), lateral_w0=lateral_w0, target_count=int(desired),
                              init_scale=init_scale, conv_init_scale=conv_init_scale)
        self.loss_fn = SpikeCountLoss(desired, undesired, margin)
        self.boost = BoostingWeights(n_train) if boosting else None
        self.reg = Regularizer(**(regularizer or {"lam": 0.0}))
        classes = self.net.specs[-1].size
        # validate_args=False: the predictions are valid by construction, and the checks would read values back
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=classes, validate_args=False)
        self.test_acc = torchmetrics.Accuracy(task="multiclass", num_classes=classes, validate_args=False)
        self.history: list[dict[str, float]] = []
        self._pending: list[tuple[str, int, int, torch.Tensor]] = []  # deferred finiteness checks (Triton path)
        self._reset_activity()

    def _reset_activity(self) -> None:
        n = len(self.net.layers)
        self._act = {"rate": [0.0] * n, "silent": [0.0] * n, "samples": 0, "loss": 0.0, "test_loss": 0.0,
                     "test_samples": 0, "test_silent": 0, "seconds": 0.0}

    def forward(self, spikes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(spikes, labels)

    # -- training ---------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.boost is not None:
            self.boost.to(self.device)

    def on_train_epoch_start(self) -> None:
        if self.boost is not None:
            _merge_boosting(self.boost)
            self.boost.end_epoch()  # applies the previous epoch's record (kept in checkpoints until then)
        factor = LR_SCHEDULES[self.hparams.lr_schedule](self.current_epoch)
        for group in self.optimizers().param_groups:
            group["lr"] = self.hparams.lr * factor
        self._reset_activity()
        self.train_acc.reset()
        for layer in self.net.layers:
            layer.stats.lateral_clamped = layer.stats.lateral_evaluated = 0
        self._epoch_start = time.perf_counter()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, idx = batch
        self._deferred = not backend.host_reads_allowed(x)
        outs = self.net.forward_all(x, y)
        counts = outs[-1].sum(1)
        weights = self.boost(idx).to(counts) if self.boost is not None else None
        loss = self.loss_fn(counts, y, weights)
        total = loss
        reg = self.reg(self.net)
        if reg is not None:
            total = loss + reg
        self._check("training loss", total.detach(), batch_idx)
        pred = predict(counts.detach())
        if self.boost is not None:
            self.boost.record(idx, y, pred == y)
        self.train_acc(pred, y)
        self._accumulate(outs, len(y))
        self._act["loss"] += loss.detach().double() * len(y)
        self.log("train/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return total

    def on_after_backward(self) -> None:
        # weights first: a bad weight makes the gradients of every layer below it bad too
        for what in ("weight", "gradient"):
            for k, layer in enumerate(self.net.layers):
                w = getattr(layer, "weight", None)  # pooling layers have none
                t = w if (w is None or what == "weight") else w.grad
                if t is not None:
                    self._check(f"{what} in layer {k}", t, self.global_step)

    def _check(self, what: str, t: torch.Tensor, step: int) -> None:
        """Raise :class:`NonFiniteError` (what, epoch, step) when ``t`` holds a NaN or Inf: at once, or on the
        Triton path at the next read of the deferred checks (:data:`FINITE_CHECK_EVERY`)."""
        if getattr(self, "_deferred", False):
            self._pending.append((what, self.current_epoch, step, torch.isfinite(t).all()))
            return
        finite = torch.isfinite(t).all()
        if not bool(finite):
            value = f" {float(t)}" if t.numel() == 1 else ""
            raise NonFiniteError(f"non-finite {what}{value} at epoch {self.current_epoch}, step {step}")

    def _read_checks(self) -> None:
        """One host read for all deferred checks; raises for the first that failed."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        ok = torch.stack([p[3] for p in pending]).cpu()
        if not bool(ok.all()):
            what, epoch, step, _ = pending[int((~ok).nonzero()[0])]
            raise NonFiniteError(f"non-finite {what} at epoch {epoch}, step {step}")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if len(self._pending) >= FINITE_CHECK_EVERY * (2 * len(self.net.layers) + 1):
            self._read_checks()

    def on_train_epoch_end(self) -> None:
        self._read_checks()

    def _accumulate(self, outs: list[torch.Tensor], batch: int) -> None:
        """Per-layer firing statistics, summed on the device (read once per epoch)."""
        self._act["samples"] += batch
        for k, s in enumerate(outs):
            c = s.detach().sum(1)
            self._act["rate"][k] += c.sum(dtype=torch.float64) / s.shape[1] / s.shape[2]
            self._act["silent"][k] += (c == 0).to(torch.float64).mean(1).sum()

    # -- evaluation on the test split (the authors' per-epoch test) --------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._train_seconds = time.perf_counter() - self._epoch_start  # training part of the epoch only
        self._read_checks()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, _ = batch
        counts = self.net(x).sum(1)
        loss = self.loss_fn(counts, y)
        pred = predict(counts)
        self.test_acc(pred, y)
        self._act["test_loss"] += loss.double() * len(y)
        self._act["test_samples"] += len(y)
        self._act["test_silent"] += (counts.sum(1) == 0).sum()
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self._act["samples"] == 0:
            return
        act = self._reduced_activity()  # one read of the epoch's device sums (of all processes under DDP)
        n = act["samples"]
        row = {"epoch": self.current_epoch, "train_loss": act["loss"] / n,
               "train_acc": float(self.train_acc.compute()), "test_acc": float(self.test_acc.compute()),
               "test_loss": act["test_loss"] / max(1, act["test_samples"]),
               "test_silent_outputs": int(act["test_silent"]), "train_samples": n,
               "train_seconds": self._train_seconds,
               "lr": self.optimizers().param_groups[0]["lr"]}
        for k, layer in enumerate(self.net.layers):
            row[f"rate_layer{k}"] = act["rate"][k] / n
            row[f"silent_layer{k}"] = act["silent"][k] / n
            if layer.setup.is_output:
                row["lateral_clamped"] = act["lateral_clamped"]
        self.history.append(row)
        best = max(h["test_acc"] for h in self.history)
        logged = {f"epoch/{k}": float(v) for k, v in row.items() if k != "epoch"}
        logged["test/acc_best"] = best
        self.log_dict(logged)

    def _reduced_activity(self) -> dict:
        """The epoch's accumulators as numbers, summed over DDP processes (train seconds: this process's), with
        the output layer's lateral-clamp count as ``lateral_clamped``."""
        n = len(self.net.layers)
        act = self._act
        clamped = sum(int(layer.stats.lateral_clamped) for layer in self.net.layers if layer.setup.is_output)
        flat = [act["loss"], act["test_loss"], act["samples"], act["test_samples"], act["test_silent"], clamped,
                *act["rate"], *act["silent"]]
        values = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in flat])
        total = _all_reduce(values, "sum").tolist()
        return {"loss": total[0], "test_loss": total[1], "samples": int(total[2]), "test_samples": int(total[3]),
                "test_silent": total[4], "lateral_clamped": int(total[5]), "rate": total[6:6 + n],
                "silent": total[6 + n:6 + 2 * n], "seconds": act["seconds"]}

    # -- optimizer and checkpoint state -----------------------------------------------------------------------
    def configure_optimizers(self):
        params = list(self.net.parameters())
        # On GPUs the fused Adam: one kernel for all parameters instead of ~11 launches per step, and its step
        # counters live on the device (no host work in the step). Same update, float rounding aside.
        fused = bool(params) and all(p.is_cuda for p in params)
        return torch.optim.Adam(params, lr=self.hparams.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)

    @property
    def samples_this_epoch(self) -> int:
        """Training samples seen so far in the current epoch (a mid-epoch resume skips them)."""
        return int(self._act["samples"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._read_checks()  # never checkpoint past a non-finite value that a deferred check has not read yet
        checkpoint["hm2bp_history"] = self.history
        if self.boost is not None:
            _merge_boosting(self.boost)  # every process saves (only rank 0 writes): all call this
            checkpoint["hm2bp_boosting"] = self.boost.state_dict()
        # the current epoch's accumulators: a checkpoint written mid-epoch (MID_EPOCH_KEY) resumes them, as
        # Lightning does not call on_train_epoch_start again; after an epoch-end checkpoint the next epoch resets them.
        # One entry per DDP process: each resumes its own.
        state = {"activity": {k: _host(v) for k, v in self._act.items()},
                 "elapsed": time.perf_counter() - getattr(self, "_epoch_start", 0.0),
                 "train_acc": {k: v.detach().cpu().clone() for k, v in self.train_acc.metric_state.items()},
                 "lateral": [(int(layer.stats.lateral_clamped), layer.stats.lateral_evaluated)
                             for layer in self.net.layers]}
        states = [state]
        if _world() > 1:
            states = [None] * _world()
            torch.distributed.all_gather_object(states, state)
        checkpoint["hm2bp_epoch_state"] = states

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("hm2bp_history", []))
        if self.boost is not None and "hm2bp_boosting" in checkpoint:
            self.boost.load_state_dict(checkpoint["hm2bp_boosting"])
        states = checkpoint.get("hm2bp_epoch_state")
        if isinstance(states, dict):  # written by one process before DDP support
            states = [states]
        if states is not None and checkpoint.get(MID_EPOCH_KEY):
            if len(states) != _world():
                raise CheckpointError(f"this checkpoint was written during an epoch by {len(states)} process(es); "
                                      f"resume it with trainer.devices={len(states)} (this run has {_world()})")
            state = states[self.global_rank]
            self._act = dict(state["activity"])
            self._epoch_start = time.perf_counter() - state["elapsed"]
            for k, v in state["train_acc"].items():
                setattr(self.train_acc, k, v.to(self.device))
            self.train_acc._update_count = 1 if self._act["samples"] else 0
            for layer, (clamped, evaluated) in zip(self.net.layers, state["lateral"], strict=True):
                layer.stats.lateral_clamped, layer.stats.lateral_evaluated = clamped, evaluated


