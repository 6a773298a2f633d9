"""Figures of a run: learning curves and a spike raster of one test sample per layer (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def learning_curves(history: list[dict[str, float]], path: Path, title: str = "") -> Path:
    """Train/test accuracy and loss per epoch."""
    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], label="train")
    ax_acc.plot(epochs, [100 * h["test_acc"] for h in history], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_acc.legend()
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="count loss", title="loss", yscale="log")
    ax_loss.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def spike_raster(trains: list[torch.Tensor], names: list[str], path: Path, title: str = "") -> Path:
    """One panel per layer: spike times of each neuron for a single sample (``trains[k]`` is ``(T, N_k)``)."""
    fig, axes = plt.subplots(len(trains), 1, figsize=(8, 1.6 + 1.4 * len(trains)), sharex=True)
    for ax, train, name in zip(axes, trains, names, strict=True):
        t, n = train.nonzero(as_tuple=True)
        ax.scatter(t.numpy(), n.numpy(), s=1.5, marker="|", color="black")
        ax.set(ylabel=f"{name}\nneuron", ylim=(-0.5, train.shape[1] - 0.5))
    axes[-1].set_xlabel("time step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
