"""The Triton kernels equal their pure-PyTorch definitions bit for bit (on CPU tensors through Triton's interpreter,
on CUDA tensors where a GPU is present) and compile for sm_90 and sm_80 without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is a dev dependency on Linux")  # conftest: TRITON_INTERPRET

from hm2bp.encoding import key_salt, sample_keys  # noqa: E402
from hm2bp.neuron import LIFParams, scan_core  # noqa: E402
from hm2bp.ops import triton_kernels as tk  # noqa: E402
from hm2bp.ops.torch_kernels import hashed_spikes  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _drive(rng: torch.Generator, steps: int, batch: int, neurons: int, scale: float) -> torch.Tensor:
    buf = torch.empty(steps + 1, batch, neurons)
    buf[1:] = torch.rand(steps, batch, neurons, generator=rng) * scale
    return buf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t_ref", [0, 1, 2, 3])
@pytest.mark.parametrize("lateral_w0", [0.0, 1.0])
@pytest.mark.parametrize("batch, neurons", [(1, 1), (3, 5), (2, 130)])  # 130: two programs and a masked tail
def test_scan_equals_scan_core_spike_for_spike(t_ref, lateral_w0, batch, neurons, dtype):
    if lateral_w0 and neurons > 5:
        neurons = 7  # lateral inhibition: one program holds a sample's neurons (output layers are small)
    rng = torch.Generator().manual_seed(100 * t_ref + neurons)
    params = LIFParams(threshold=0.6, t_ref=t_ref)
    steps = 24  # refractory holds reach the last steps
    buf = _drive(rng, steps, batch, neurons, scale=0.5).to(dtype)
    args = params.scan_args(lateral_w0)
    expected = scan_core(buf.clone(), *args)
    got = buf.clone().to(DEVICE)
    counts = tk.lif_scan(got, *args)
    assert torch.equal(got[:steps].cpu(), expected)
    assert torch.equal(counts.cpu(), expected.sum(0))
    assert expected.sum() > 0 and (expected.sum(0) < steps - 1).all()  # spikes and refractory gaps both occur


@pytest.mark.parametrize("lateral_w0", [0.0, 1.0])
@pytest.mark.parametrize("t_ref", [0, 2])
def test_scan_from_a_separate_drive_equals_the_in_place_scan(t_ref, lateral_w0):
    """Spikes into their own ``(T, B, N)`` tensor from currents ``(T, B, N)`` that stay as they are: the spikes and
    counts of ``scan_core`` on the ``(T + 1, B, N)`` work buffer holding the same currents one row later."""
    rng = torch.Generator().manual_seed(3 + t_ref)
    steps, batch, neurons = 20, 2, 7 if lateral_w0 else 130
    args = LIFParams(threshold=0.6, t_ref=t_ref).scan_args(lateral_w0)
    buf = _drive(rng, steps, batch, neurons, scale=0.5)
    expected = scan_core(buf.clone(), *args)
    drive = buf[1:].clone().to(DEVICE)
    spikes = torch.full((steps, batch, neurons), float("nan"), device=DEVICE)
    counts = tk.lif_scan(spikes, *args, drive=drive)
    assert torch.equal(spikes.cpu(), expected) and torch.equal(counts.cpu(), expected.sum(0))
    assert torch.equal(drive.cpu(), buf[1:]) and expected.sum() > 0


def test_scan_threshold_ties_do_not_fire_and_one_above_does():
    # Constant drives put v exactly on fire_at at some step for one neuron, one ulp above for another.
    fire_at = 0.25
    buf = torch.zeros(4, 1, 2)
    buf[1, 0, :] = torch.tensor([fire_at, torch.nextafter(torch.tensor(fire_at), torch.tensor(1.0)).item()])
    expected = scan_core(buf.clone(), fire_at, 0.0, 0.0, 2, 0.0)  # no leak: v[1] = c[1] = drive
    got = buf.clone().to(DEVICE)
    tk.lif_scan(got, fire_at, 0.0, 0.0, 2, 0.0)
    assert expected[1].tolist() == [[0.0, 1.0]] and torch.equal(got[:3].cpu(), expected)


def test_scan_degenerate_shapes_and_bad_input():
    for shape in [(1, 2, 3), (5, 0, 3), (5, 2, 0)]:
        buf = torch.ones(shape).to(DEVICE)
        counts = tk.lif_scan(buf, 0.5, 0.9, 0.8, 2, 0.0)
        assert counts.shape == shape[1:] and (buf[:1] == 0).all()
    with pytest.raises(TypeError, match=r"buf must be one of \['torch.float32', 'torch.float64'\]"):
        tk.lif_scan(torch.zeros(3, 1, 1, dtype=torch.float16), 0.5, 0.9, 0.8, 2, 0.0)
    with pytest.raises(ValueError, match="must be contiguous"):
        tk.lif_scan(torch.zeros(3, 2, 4).transpose(1, 2), 0.5, 0.9, 0.8, 2, 0.0)
    with pytest.raises(ValueError, match=r"must be \(T \+ 1, batch, neurons\)"):
        tk.lif_scan(torch.zeros(3, 4), 0.5, 0.9, 0.8, 2, 0.0)


@pytest.mark.parametrize("reset_grad", [False, True])
@pytest.mark.parametrize("lateral_w0", [0.0, 1.0])
@pytest.mark.parametrize("t_ref", [0, 2])
def test_bptt_kernels_equal_the_pure_pytorch_recursion(t_ref, lateral_w0, reset_grad):
    """The scan recording ``u`` and the reverse-time BPTT kernel on float64 rasters: spikes as the PyTorch path's
    exactly, ``u`` and ``∂L/∂I`` to 1e-12, every element of their outputs written (NaN-filled), ``∂L/∂s`` untouched;
    130 neurons without lateral inhibition: two programs and a masked tail (hm2bp.bptt has the equations)."""
    from hm2bp.ops import torch_kernels

    T, B, N = 30, 2, 7 if lateral_w0 else 130
    g = torch.Generator().manual_seed(t_ref + 3 * int(lateral_w0) + 7 * int(reset_grad))
    currents = torch.randn(T, B, N, generator=g, dtype=torch.float64) * 2.4 + 0.6
    currents[-4:, 1] += 20.0  # spikes and holds at the last steps
    grad_spikes = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    args = (0.25, *LIFParams(threshold=1.0, tau_m=16.0, tau_s=4.0, t_ref=t_ref).scan_args(lateral_w0))
    ref_spikes, ref_u = torch_kernels.bptt_forward(currents, *args)
    expected = torch_kernels.bptt_backward(grad_spikes, ref_spikes, ref_u, *args, 5.0, reset_grad)

    spikes, u = (torch.full((T, B, N), float("nan"), dtype=torch.float64, device=DEVICE) for _ in range(2))
    drive = (currents * args[0]).to(DEVICE)
    tk.lif_scan(spikes, *args[1:], drive=drive, u=u)
    gs = grad_spikes.clone().to(DEVICE)
    out = torch.full_like(u, float("nan"))
    tk.bptt_backward(gs, spikes, u, *args, 5.0, reset_grad, out=out)
    assert torch.equal(spikes.cpu(), ref_spikes) and ref_spikes.sum() > 0 and ref_spikes[-3:, 1].sum() > 0
    torch.testing.assert_close(u.cpu(), ref_u, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=1e-12)
    assert torch.equal(gs.cpu(), grad_spikes) and expected.abs().max() > 1e-3
    with pytest.raises(ValueError, match="u records the membrane of a scan from a separate drive"):
        tk.lif_scan(spikes, *args[1:], u=u)
    with pytest.raises(TypeError, match="out must be one of"):
        tk.bptt_backward(gs, spikes, u, *args, 5.0, reset_grad, out=out.float())

@pytest.mark.parametrize("epoch", [0, 3])
def test_bernoulli_equals_the_cpu_encoder_bit_for_bit(epoch):
    rng = torch.Generator().manual_seed(epoch)
    batch, n, steps = 3, 300, 6  # 300 inputs: two programs, a masked tail
    q = torch.rand(batch, n, generator=rng, dtype=torch.float64) * 0.9
    q[0, :5] = torch.tensor([0.0, 1.0, 0.5, 1e-12, 1 - 1e-12], dtype=torch.float64)
    q[1, :] = 1.0  # every step fires (after t = 0)
    indices = torch.tensor([0, 11, 2**32 + 2**31 + 5])  # the key takes an index modulo 2³²
    expected = hashed_spikes(q, steps, sample_keys(7, indices, epoch), torch.float32)
    got = torch.empty(steps, batch, n, dtype=torch.float32, device=DEVICE)
    tk.bernoulli_spikes(indices.to(DEVICE), key_salt(7, epoch), q.to(DEVICE), got)
    assert torch.equal(got.cpu(), expected)
    assert (expected[1:, 1] == 1).all() and (expected[:, 0, 0] == 0).all() and (expected[0] == 0).all()


def test_every_kernel_compiles_for_sm90_and_sm80():
    """In a fresh process without the interpreter (which replaces the kernels by Python functions); on sm_90 also
    with every integer argument 1, which the JIT passes as a plain int (a batch of one failed so on the first GPU)."""
    code = ("from hm2bp.ops import triton_kernels as tk\n"
            "for name in sorted(tk.KERNELS):\n"
            "    for cap, ones in ((90, False), (80, False), (90, True)):\n"
            "        k = tk.compile_for(name, cap, ones=ones)\n"
            "        assert f'.target sm_{cap}' in k.asm['ptx'] and len(k.asm['cubin']) > 1000, (name, cap)\n"
            "        # the TF32 split rounds y·coef before subtracting hi: no fused multiply-add may skip that\n"
            "        assert name != 'scaled_tf32_parts' or 'fma' not in k.asm['ptx'], 'fused TF32 split'\n"
            "        print(name, cap, ones, 'ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:-1] == [f"{n} {c} {o} ok" for n in sorted(tk.KERNELS)
                                             for c, o in ((90, False), (80, False), (90, True))]


def _step(kernels: str, make_net, x_pixels: torch.Tensor, labels: torch.Tensor, steps: int):
    """Encode, forward and HM2-BP backward of one batch under the backend ``kernels``: (spikes per layer,
    gradients)."""
    from hm2bp import SpikeCountLoss, backend
    from hm2bp.encoding import bernoulli_encode

    backend.set_backend(kernels)
    try:
        torch.manual_seed(0)
        net = make_net().to(DEVICE)
        pixels = x_pixels.to(DEVICE)
        x = bernoulli_encode(pixels, steps, seed=3, indices=torch.arange(len(labels), device=DEVICE),
                             rate_divisor=1.5, dtype=torch.float32)
        y = labels.to(DEVICE)
        outs = net.forward_all(x, y)
        SpikeCountLoss(6, 1, 1)(outs[-1].sum(1), y).backward()
        return [x.cpu()] + [o.detach().cpu() for o in outs], [p.grad.cpu() for p in net.parameters()]
    finally:
        backend.set_backend("auto")


@pytest.mark.parametrize("arch, shape", [("16-4", (10,)), ("3C3-P2-4", (1, 6, 6))], ids=["mlp", "cnn"])
def test_training_step_through_triton_equals_pure_pytorch(arch, shape, monkeypatch):
    """One whole step of a small MLP and a small CNN with HM2BP_OPS=triton (encoder, every scan, and the fully
    connected layers' traces and event matrices in Triton) gives the spikes of HM2BP_OPS=torch exactly and its
    gradients to float32 rounding (the Triton path contracts in the anticausal GEMM form, PyTorch here by pairs)."""
    from hm2bp import SpikingNet

    def make_net():
        return SpikingNet(arch, shape, [0.8] * len(arch.split("-")), target_count=6)

    n = 1
    for d in shape:
        n *= d
    g = torch.Generator().manual_seed(5)
    pixels = torch.randint(0, 256, (3, n), generator=g).float()
    labels = torch.tensor([0, 3, 1])
    spikes_t, grads_t = _step("torch", make_net, pixels, labels, steps=40)
    calls: list[str] = []
    kernels = ("lif_scan", "bernoulli_spikes", "pre_traces", "post_event_matrix", "post_side")
    for name in kernels:
        real = getattr(tk, name)
        monkeypatch.setattr(tk, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    spikes_x, grads_x = _step("triton", make_net, pixels, labels, steps=40)
    # every layer contracts in the anticausal form (the fused post side): no pre traces, no event matrix
    assert set(kernels) - {"pre_traces", "post_event_matrix"} <= set(calls)
    assert "pre_traces" not in calls and "post_event_matrix" not in calls
    # one post side per layer (pooling included); the output layer's serves both Λ and the contraction
    assert calls.count("post_side") == len(arch.split("-"))
    assert all(torch.equal(a, b) for a, b in zip(spikes_t, spikes_x, strict=True))
    assert all(s.sum() > 0 for s in spikes_t)
    for a, b in zip(grads_t, grads_x, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


def _kernels():
    from hm2bp.spsp import PSPKernel

    return [PSPKernel(convention="original"), PSPKernel(convention="original", window=12),
            PSPKernel(convention="exact"), PSPKernel(convention="original", window=None),
            PSPKernel(convention="original", window=9, t_ref=3), PSPKernel(convention="exact", t_ref=0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", range(6))
def test_pre_traces_and_post_event_matrix_equal_the_pure_pytorch_sides(rng, k, dtype):
    """Both sides of ``e = Aᵀ X`` (docs/algorithm.md §10): the float32 traces exactly, the event matrix to the
    rounding of its terms (its powers are the same ``torch.pow`` values; coinciding events may be added in another
    order than ``index_put_`` adds them)."""
    from conftest import refractory_trains
    from hm2bp.spsp import post_events, pre_traces

    kernel = _kernels()[k]
    steps, batch = 60, 3
    pre = refractory_trains(rng, batch, steps, 130, 0.08, t_ref=kernel.t_ref).transpose(0, 1).contiguous()
    post = refractory_trains(rng, batch, steps, 5, 0.15, t_ref=kernel.t_ref).transpose(0, 1).contiguous()
    pre[0, 0, :3] = 1  # spikes at t = 0, which the original convention drops
    pre, post = pre.to(dtype), post.to(dtype)
    got_x = tk.pre_traces(pre.to(DEVICE), kernel).cpu()
    if dtype == torch.float32:  # one rounding per multiply-add, as PyTorch's kernels: the same bits
        assert torch.equal(got_x, pre_traces(pre, kernel))
    else:  # the interpreter has no float64 fused multiply-add: within rounding
        torch.testing.assert_close(got_x, pre_traces(pre, kernel), rtol=1e-14, atol=1e-15)
    expected_a = post_events(post, kernel).dense(kernel.coeffs)
    got_a = tk.post_event_matrix(post.to(DEVICE), kernel).cpu()
    # coinciding events may cancel: compare at the rounding of the terms, not of their (tiny) sum
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(got_a, expected_a, rtol=4 * eps, atol=8 * eps * float(expected_a.abs().max()))
    assert (expected_a != 0).sum() >= 2 * post.sum() > 0  # every spike reads both traces


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", range(6))
def test_anticausal_traces_equal_their_definition_and_give_the_same_contraction(k, dtype):
    """``Y(s) = Σ_k Σ_{t ≥ s + delay} A(2t + k)·d_k^{t − s − delay}`` (``Y(0) = 0`` in the original convention),
    written as loops; and ``Σ_t A(t) X(t) = Σ_s Y(s) x(s)`` for the pre traces X of any pre raster x."""
    from conftest import refractory_trains
    from hm2bp.spsp import pre_traces

    kernel = _kernels()[k]
    rng = np.random.default_rng(k)
    T, B, n_out, n_in = 30, 3, 5, 4
    post = refractory_trains(rng, B, T, n_out, 0.25, t_ref=kernel.t_ref).transpose(0, 1).contiguous().to(dtype)
    post[:, 1, 0] = 0  # a silent neuron
    post[-kernel.t_ref - 1:, 2, :] = 0
    post[-1, 2, :] = 1  # spikes at the last step
    pre = (torch.rand(T, B, n_in, generator=torch.Generator().manual_seed(k)) < 0.3).to(dtype)
    pre[0] = 1  # spikes at t = 0 (the original convention never counts them)
    a = tk.post_event_matrix(post.to(DEVICE), kernel)
    y = tk.anticausal_traces(a, kernel).cpu()
    a = a.cpu().double()
    expected = torch.zeros(T, B, n_out, dtype=torch.float64)
    for s in range(1 if kernel.convention == "original" else 0, T):
        for t in range(s + kernel.delay, T):
            for j, d in enumerate(kernel.decays):
                expected[s] += a[2 * t + j] * d ** (t - s - kernel.delay)
    scale = float(expected.abs().max())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(y.double(), expected, rtol=0, atol=16 * eps * scale)
    causal = torch.einsum("tbi,tbj->bij", a, pre_traces(pre.double(), kernel))
    anticausal = torch.einsum("tbi,tbj->bij", y.double(), pre.double())
    torch.testing.assert_close(anticausal, causal, rtol=0, atol=64 * eps * scale * T)
    assert causal.abs().sum() > 0
    with pytest.raises(ValueError, match=r"a must be \(2T, batch, neurons\)"):
        tk.anticausal_traces(a[1:].to(DEVICE).contiguous().to(dtype), kernel)


def _filling_torch(fill: float):
    """``torch`` as :mod:`hm2bp.ops.triton_kernels` sees it, except that ``torch.empty`` fills with ``fill``."""
    import types

    proxy = types.ModuleType("torch")
    proxy.__getattr__ = lambda name: getattr(torch, name)  # PEP 562: everything else is torch's own
    proxy.empty = lambda *args, **kwargs: torch.empty(*args, **kwargs).fill_(fill)
    return proxy


@pytest.mark.parametrize("k", range(8))
def test_kernels_write_every_element_they_return(k, monkeypatch):
    """The event matrix, its anticausal traces and the scan's counts come from ``torch.empty``: they have the same
    bits over memory that held zeros as over memory that held NaN (an element a kernel leaves unwritten shows as
    NaN), for every kind of kernel, the window with t_ref = 0 and the shortest window (span 1), and T below the delay
    (Y all 0); the event matrix also equals its definition there."""
    from conftest import refractory_trains
    from hm2bp.spsp import PSPKernel, post_events

    kernels = [*_kernels(), PSPKernel(convention="original", window=4, t_ref=0),
               PSPKernel(convention="original", window=3, t_ref=2)]
    kernel = kernels[k]
    rng = np.random.default_rng(k)
    for T in (17, 2):
        post = refractory_trains(rng, 2, T, 3, 0.3, t_ref=kernel.t_ref).transpose(0, 1).contiguous().float()
        drive = torch.rand(T + 1, 2, 3, generator=torch.Generator().manual_seed(k))
        outputs = []
        for fill in (0.0, float("nan")):
            monkeypatch.setattr(tk, "torch", _filling_torch(fill))
            a = tk.post_event_matrix(post.to(DEVICE), kernel)
            y = tk.anticausal_traces(a, kernel)
            counts = tk.lif_scan(drive.clone().to(DEVICE), 0.6, 0.9, 0.8, kernel.t_ref, 0.0)
            outputs.append([a.cpu(), y.cpu(), counts.cpu()])
            monkeypatch.undo()
        for zeroed, garbage in zip(*outputs, strict=True):
            assert torch.equal(zeroed, garbage)  # NaN ≠ NaN: every element written
        expected = post_events(post, kernel).dense(kernel.coeffs)
        eps = torch.finfo(torch.float32).eps
        torch.testing.assert_close(outputs[0][0], expected, rtol=4 * eps, atol=8 * eps * float(expected.abs().max()))
        assert T < 17 or post.sum() > 0


def _pointer_offset_widths(ir: str) -> list[tuple[str, str]]:
    """``(parameter, offset type)`` of each ``tt.addptr`` in a kernel's Triton IR, the pointer traced back through
    splats and earlier ``tt.addptr`` to the kernel parameter it comes from."""
    import re

    first_operand = dict(re.findall(r"^\s*(%[\w-]+)(?::\d+)? = (?:tt\.splat|tt\.addptr|tt\.broadcast) (%[\w-]+)",
                                    ir, re.M))
    found = []
    for base, width in re.findall(r"= tt\.addptr (%[\w-]+), %[\w-]+ : [^,]+, (?:tensor<[\dx]+)?(i\d+)", ir):
        while base in first_operand:
            base = first_operand[base]
        found.append((base.lstrip("%"), width))
    return found


def test_kernel_offsets_into_batch_sized_tensors_are_64_bit():
    """A ``(2T, B, N)`` tensor passes 2³¹ elements at T = 400 from B·N ≈ 2.7·10⁶ (a paper-size CNN layer at batch
    ≈ 311): in every kernel's Triton IR as built for sm_90 (in a fresh process without the interpreter), each offset
    added to a pointer is int64, except into the small tables and scalar parameters."""
    import json
    import re

    code = ("import json\nfrom hm2bp.ops import triton_kernels as tk\n"
            "print(json.dumps({n: tk.compile_for(n, 90).asm['ttir'] for n in sorted(tk.KERNELS)}))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    small = {"params_ptr", "keys_ptr", "decay_ptr", "coef_ptr", "pow_m_ptr", "pow_s_ptr"}  # ≤ T + window + 1 long
    irs = json.loads(proc.stdout)
    assert sorted(irs) == sorted(tk.KERNELS)
    for name, ir in irs.items():
        offsets = _pointer_offset_widths(ir)
        params = set(re.findall(r"%(\w+): !tt\.ptr", ir))
        assert {p for p, _ in offsets} <= params, (name, offsets)  # every pointer traced to a parameter
        narrow = [(p, w) for p, w in offsets if w != "i64" and p not in small]
        assert narrow == [] and any(w == "i64" for _, w in offsets), (name, offsets)


@pytest.mark.parametrize("budget_samples", [1, 2])
def test_triton_contraction_in_sample_chunks_equals_one_chunk(budget_samples, monkeypatch):
    """The Triton path's contraction split into chunks of 1 or 2 samples of a batch of 3 (GPU_CHUNK_BYTES lowered to
    that) gives the gradients of one chunk: spikes equal, float32 sums reordered across chunks only."""
    from hm2bp import SpikingNet
    from hm2bp.ops import triton_path

    def make_net():
        return SpikingNet("16-4", (10,), [0.8, 0.8], target_count=6)

    pixels = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(5)).float()
    labels = torch.tensor([0, 3, 1])
    spikes_one, grads_one = _step("triton", make_net, pixels, labels, steps=40)
    per_sample = 40 * (4 * 16 + 10) * 4  # the hidden layer's bytes per sample (triton_path.linear_backward)
    monkeypatch.setattr(triton_path, "GPU_CHUNK_BYTES", budget_samples * per_sample)
    monkeypatch.setattr(triton_path, "EXPLICIT_MAX_POST", 8)  # the 16 hidden neurons take the chunked wide form
    calls: list[int] = []
    real = tk.post_side
    monkeypatch.setattr(tk, "post_side", lambda post, *a: calls.append(post.shape[1]) or real(post, *a))
    spikes_chunked, grads_chunked = _step("triton", make_net, pixels, labels, steps=40)
    # hidden layer: one post side per chunk of budget_samples samples; output layer: one for the whole batch (its
    # lateral factor keeps it, and the contraction reads it chunk by chunk)
    assert sorted(calls) == {1: [1, 1, 1, 3], 2: [1, 2, 3]}[budget_samples]
    assert all(torch.equal(a, b) for a, b in zip(spikes_one, spikes_chunked, strict=True))
    for a, b in zip(grads_one, grads_chunked, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7 * float(a.abs().max()))
