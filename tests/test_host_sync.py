"""A training step on the Triton path never waits for the device: no op reads a value back on the host, on a cold or
a warm step, and a warm step makes no tensor from host data (so the step can be captured in a CUDA graph).

Without a GPU the step runs on CPU tensors through Triton's interpreter. There, ``.tolist()``, ``.numpy()`` and
``.cpu()`` reach no ATen op (on CUDA they are ``_to_copy``/``_local_scalar_dense``), so :class:`HostReads` also
watches those methods themselves; each detector is shown to fire on a planted read.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton", reason="Triton is a dev dependency on Linux")  # conftest: TRITON_INTERPRET

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# ATen ops that wait for the device (their result decides host control flow or a shape).
SYNCING = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "_unique2", "unique_consecutive",
           "unique_dim", "bincount", "masked_select", "_assert_async"}
# Tensor methods that hand values to Python: on CPU tensors they dispatch no ATen op.
HOST_METHODS = ("tolist", "numpy", "cpu", "item", "__bool__", "__int__", "__float__", "__index__")


class HostReads(TorchDispatchMode):
    """Records every ATen op (``ops``), and in ``reads`` each host read: a syncing op, a copy from a non-CPU tensor to
    the CPU, or a call of one of :data:`HOST_METHODS`; ``fresh`` counts tensors made from host data (``lift_fresh``:
    a host-to-device copy on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.reads: list[str] = []
        self._saved: dict[str, object] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        self.ops.append(name)
        if name in SYNCING:
            self.reads.append(name)
        elif name in ("_to_copy", "copy_"):
            src = args[1] if name == "copy_" else args[0]
            dst = args[0].device if name == "copy_" else kwargs.get("device") or src.device
            if torch.device(dst).type == "cpu" and src.device.type != "cpu":
                self.reads.append(f"{name} to the host")
        return func(*args, **kwargs)

    @property
    def fresh(self) -> int:
        return self.ops.count("lift_fresh")

    def __enter__(self):
        for method in HOST_METHODS:
            real = getattr(torch.Tensor, method)
            self._saved[method] = real

            def watched(tensor, *a, _real=real, _method=method, **k):
                self.reads.append(f"Tensor.{_method}")
                return _real(tensor, *a, **k)

            setattr(torch.Tensor, method, watched)
        return super().__enter__()

    def __exit__(self, *exc):
        for method, real in self._saved.items():
            setattr(torch.Tensor, method, real)
        return super().__exit__(*exc)


@pytest.mark.parametrize("plant", ["tolist", "item", "bool", "cpu"])
def test_host_reads_sees_every_kind_of_read(plant):
    x = torch.ones(3, device=DEVICE)
    read = {"tolist": lambda: x.any().tolist(), "item": lambda: x.sum().item(), "bool": lambda: bool(x.any()),
            "cpu": lambda: x.cpu()}[plant]
    with HostReads() as watch:
        (x * 2).sum()
    assert watch.reads == []
    with HostReads() as watch:
        read()
    assert watch.reads, plant


def _triton(monkeypatch) -> None:
    from hm2bp import backend

    monkeypatch.setattr(backend, "_backend", "triton")


@pytest.mark.parametrize("rule", ["hm2bp", "bptt"])
@pytest.mark.parametrize("arch, shape", [("16-4", (10,)), ("3C3-P2-4", (1, 6, 6))], ids=["mlp", "cnn"])
def test_engine_step_on_the_triton_path_never_waits_for_the_device(arch, shape, rule, monkeypatch):
    """Encode, forward (lateral inhibition, silent-target patch) and backward (HM2-BP with Λ and fallbacks, or BPTT)
    of a small MLP and CNN under HM2BP_OPS=triton read nothing back on the host, cold or warm, and once warm make no
    tensor from host data."""
    from hm2bp import SpikeCountLoss, SpikingNet
    from hm2bp.bptt import BPTTRule
    from hm2bp.encoding import bernoulli_encode

    n = 1
    for d in shape:
        n *= d
    torch.manual_seed(0)
    net = SpikingNet(arch, shape, [0.8] * len(arch.split("-")), target_count=6,
                     **({"rule": BPTTRule()} if rule == "bptt" else {})).to(DEVICE)
    pixels = torch.randint(0, 256, (3, n), generator=torch.Generator().manual_seed(5)).float().to(DEVICE)
    labels = torch.tensor([0, 3, 1], device=DEVICE)

    def step() -> None:
        x = bernoulli_encode(pixels, 40, seed=3, indices=torch.arange(3, device=DEVICE), rate_divisor=1.5,
                             dtype=torch.float32)
        outs = net.forward_all(x, labels)
        SpikeCountLoss(6, 1, 1)(outs[-1].sum(1), labels).backward()

    _triton(monkeypatch)
    with HostReads() as cold:
        step()
    with HostReads() as warm:
        step()
    assert len(cold.ops) > 50 and all(p.grad is not None for p in net.parameters())
    assert cold.reads == [] and warm.reads == []
    assert warm.fresh == 0


def _tiny_module():
    from hm2bp.app.module import HM2BPModule

    torch.manual_seed(0)
    return HM2BPModule("12-4", (10,), [0.8, 0.8], n_train=6, lr=1e-2, lr_schedule="inverse_sqrt", boosting=True,
                       targets={"desired": 6, "undesired": 1, "margin": 1})


def test_lightning_training_step_on_the_triton_path_never_waits_for_the_device(monkeypatch):
    """The LightningModule's step (boosting weights and record, epoch meter, finiteness checks) adds no host read to
    the engine's, cold or warm: sums stay on the device, checks are read every FINITE_CHECK_EVERY steps."""
    from types import SimpleNamespace

    from hm2bp.app.finite import FiniteCheck
    from hm2bp.encoding import bernoulli_encode

    module = _tiny_module().to(DEVICE)
    module.boost.to(DEVICE)
    check = FiniteCheck()
    pixels = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(5)).float().to(DEVICE)
    idx = torch.tensor([0, 4, 5], device=DEVICE)
    y = torch.tensor([0, 3, 1], device=DEVICE)
    _triton(monkeypatch)
    x = bernoulli_encode(pixels, 40, seed=3, indices=idx, rate_divisor=1.5, dtype=torch.float32)
    for step in range(2):  # the second step is warm: no tensor made from host data either
        trainer = SimpleNamespace(current_epoch=0, global_step=step)
        with HostReads() as watch:
            total = module.training_step((x, y, idx), step)
            check.on_before_backward(trainer, module, total)
            total.backward()
            check.on_after_backward(trainer, module)
            module.on_after_backward()
        assert watch.reads == [], step
        if step:
            assert watch.fresh == 0
    assert int(module.train_meter.samples) == 6
    assert [p[0] for p in check._pending] == [["training loss", "gradient in layer 0", "gradient in layer 1"]] * 2
    check.read()  # all finite: nothing raised, and the queue is empty again
    assert check._pending == []


def test_deferred_finiteness_checks_still_name_the_first_bad_step(monkeypatch):
    import lightning as L

    from hm2bp.app.finite import FiniteCheck, NonFiniteError

    module = _tiny_module()
    with torch.no_grad():
        module.net.layers[1].weight[0, 0] = float("nan")
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(6, 30, 10, generator=g) < 0.3).float()
    data = torch.utils.data.DataLoader(list(zip(x, torch.arange(6) % 4, torch.arange(6), strict=True)), batch_size=3)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="gpu" if DEVICE == "cuda" else "cpu", devices=1,
                        callbacks=[FiniteCheck()])
    _triton(monkeypatch)
    with pytest.raises(NonFiniteError, match=r"^non-finite weight in layer 1 at epoch 0, step 0$"):
        trainer.fit(module, train_dataloaders=data)
