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
    """Raise :class:`NonFiniteError` ("non-finite <what> at epoch E, step S", S the global step) when the training
    objective, a layer's weight or its gradient holds a NaN or Inf: at once where host reads are allowed, else at the
    next read of the deferred checks (:data:`FINITE_CHECK_EVERY`). Weights are checked before gradients: a bad weight
    makes the gradients of every layer below it bad too. Expects ``pl_module.net`` (a
    :class:`~hm2bp.layers.SpikingNet`)."""

    def __init__(self, every: int = FINITE_CHECK_EVERY) -> None:
        self.every = every
        self._pending: list[tuple[str, int, int, torch.Tensor]] = []
        self._steps = 0
        self._deferred = False

    def _check(self, what: str, t: torch.Tensor, trainer: L.Trainer) -> None:
        finite = torch.isfinite(t).all()
        if self._deferred:
            self._pending.append((what, trainer.current_epoch, trainer.global_step, finite))
        elif not bool(finite):
            value = f" {float(t)}" if t.numel() == 1 else ""
            raise NonFiniteError(f"non-finite {what}{value} at epoch {trainer.current_epoch}, "
                                 f"step {trainer.global_step}")

    def read(self) -> None:
        """One host read for all deferred checks; raises for the first that failed."""
        self._steps = 0
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        ok = torch.stack([p[3] for p in pending]).cpu()
        if not bool(ok.all()):
            what, epoch, step, _ = pending[int((~ok).nonzero()[0])]
            raise NonFiniteError(f"non-finite {what} at epoch {epoch}, step {step}")

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._deferred = not backend.host_reads_allowed(loss)
        self._check("training loss", loss.detach(), trainer)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = [(k, layer.weight) for k, layer in enumerate(pl_module.net.layers) if hasattr(layer, "weight")]
        for k, w in layers:
            self._check(f"weight in layer {k}", w, trainer)
        for k, w in layers:
            if w.grad is not None:
                self._check(f"gradient in layer {k}", w.grad, trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        self._steps += 1
        if self._steps >= self.every:
            self.read()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.read()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.read()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.read()  # never checkpoint past a non-finite value that a deferred check has not read yet
