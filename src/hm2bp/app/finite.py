"""A Lightning callback that stops training at the first loss, weight or gradient that is not finite."""

from __future__ import annotations

import lightning as L
import torch

from hm2bp import backend

# On the Triton path (a GPU) no training step reads a value back on the host: the checks are kept on the device and
# read every this many steps (and at the epoch's end and before any checkpoint), naming the first bad step all the
# same.
FINITE_CHECK_EVERY = 50


class NonFiniteError(RuntimeError):
    """Raised when a loss, weight or gradient stops being finite."""


class FiniteCheck(L.Callback):
    """Raise :class:`NonFiniteError` ("non-finite <what> at epoch E, step S", S the global step) when a layer's
    weight is not finite as training starts (or resumes), or a step's objective or a layer's gradient is not. The
    gradients are checked before the optimizer uses them, and Adam keeps finite weights finite under finite gradients,
    so every later weight is covered too.

    Each check is a sum (a sum is non-finite exactly when a value is, or when it overflows, which no usable gradient
    does), and a step's sums are stacked: one host read per step where host reads are allowed; on the Triton path
    they stay on the device and are read every :data:`FINITE_CHECK_EVERY` steps, at the end of training epochs and
    before any checkpoint, still naming the first bad value. Expects ``pl_module.net`` (a
    :class:`~hm2bp.layers.SpikingNet`).
    """

    def __init__(self, every: int = FINITE_CHECK_EVERY) -> None:
        self.every = every
        self._pending: list[tuple[list[str], int, int, torch.Tensor]] = []  # (what, epoch, step, sums)
        self._loss: torch.Tensor | None = None

    def _test(self, what: list[str], sums: list[torch.Tensor], trainer: L.Trainer) -> None:
        values = torch.stack([v.reshape(()).to(torch.float64) for v in sums])
        self._pending.append((what, trainer.current_epoch, trainer.global_step, values))
        if backend.host_reads_allowed(values) or len(self._pending) >= self.every:
            self.read()

    def read(self) -> None:
        """One host read for all pending checks; raises for the first value that is not finite."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = torch.cat([p[3] for p in pending]).cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if not len(bad):
            return
        first, offset = int(bad[0]), 0
        for what, epoch, step, _ in pending:
            if first < offset + len(what):
                name = what[first - offset]
                value = f" {float(values[first])}" if name == "training loss" else ""  # a sum says nothing
                raise NonFiniteError(f"non-finite {name}{value} at epoch {epoch}, step {step}")
            offset += len(what)

    @staticmethod
    def _weights(pl_module: L.LightningModule) -> list[tuple[int, torch.Tensor]]:
        return [(k, layer.weight) for k, layer in enumerate(pl_module.net.layers) if hasattr(layer, "weight")]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = self._weights(pl_module)
        self._test([f"weight in layer {k}" for k, _ in weights], [w.detach().sum(dtype=torch.float64)
                                                                   for _, w in weights], trainer)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        grads = [(k, w.grad) for k, w in self._weights(pl_module) if w.grad is not None]
        loss, self._loss = self._loss, None
        self._test(["training loss", *(f"gradient in layer {k}" for k, _ in grads)],
                   [loss, *(g.sum(dtype=torch.float64) for _, g in grads)], trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.read()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.read()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.read()  # never checkpoint past a non-finite value that a deferred check has not read yet
