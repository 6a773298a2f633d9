import pytest
import torch

from hm2bp.data.static import Encoder, StaticSplit
from hm2bp.encoding import bernoulli_encode


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    """The encoder's hash, written out again here (int64 holding [0, 2³²))."""
    m = 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & m
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def _literal_spikes(pixels: torch.Tensor, steps: int, seed: int, indices: torch.Tensor) -> torch.Tensor:
    """docs/algorithm.md §2 from its definition: spike at t ≥ 1 iff hash(key + t·N + i)/2³² < p/(5.5·255), with
    key = hash(hash(index ⊕ hash(seed·0x9E3779B1 mod 2³²))) (fixed trains: epoch 0)."""
    m = 0xFFFFFFFF
    salt = int(_lowbias32(torch.tensor((seed * 0x9E3779B1) & m)))
    keys = _lowbias32(_lowbias32(indices.to(torch.int64) ^ salt))
    n = pixels.shape[1]
    cell = torch.arange(steps * n, dtype=torch.int64).view(1, steps, n)
    u = _lowbias32((cell + keys.view(-1, 1, 1)) & m).to(torch.float64) / 2.0**32
    spikes = u < (pixels.to(torch.float64) / (5.5 * 255)).unsqueeze(1)
    spikes[:, 0] = False
    return spikes


def test_rate_and_no_spike_at_t0():
    pixels = torch.tensor([[0.0, 127.5, 255.0]]).repeat(200, 1)
    spikes = bernoulli_encode(pixels, 400, seed=3, indices=torch.arange(200))
    assert spikes.shape == (200, 400, 3)
    assert spikes[:, 0].sum() == 0
    assert spikes[..., 0].sum() == 0  # zero pixels never spike
    # The hash is deterministic, so the trains are compared exactly with the definition: a statistical tolerance
    # would admit a wrong rate divisor (5.3 instead of 5.5 is within 0.005 of the rate).
    wrong = int((spikes.bool() != _literal_spikes(pixels, 400, 3, torch.arange(200))).sum())
    assert wrong == 0, f"{wrong} of {spikes.numel()} spikes differ from the definition"
    rate = spikes[:, 1:].mean((0, 1))
    assert abs(rate[2].item() - 1 / 5.5) < 0.005  # q = 255/(5.5·255) (docs/algorithm.md §2)
    assert abs(rate[1].item() - 0.5 / 5.5) < 0.005


def test_fixed_trains_are_a_function_of_the_keys():
    pixels = torch.full((4, 10), 200.0)
    idx = torch.tensor([7, 3, 9, 1])
    a = bernoulli_encode(pixels, 50, seed=1, indices=idx, epoch=0)
    b = bernoulli_encode(pixels[[1, 0]], 50, seed=1, indices=idx[[1, 0]], epoch=5)  # order, batch, epoch: no effect
    assert torch.equal(a[[1, 0]], b)
    assert not torch.equal(a, bernoulli_encode(pixels, 50, seed=2, indices=idx))
    fresh = bernoulli_encode(pixels, 50, seed=1, indices=idx, epoch=1, fixed=False)
    assert not torch.equal(a, fresh)


def test_cached_split_equals_hashed_split():
    pixels = torch.rand(30, 12) * 255
    labels = torch.randint(0, 3, (30,))
    enc = Encoder(steps=40, seed=4)
    cached = StaticSplit(pixels, labels, enc, key_offset=100)
    uncached = StaticSplit(pixels, labels, enc, key_offset=100, cache_bytes=0)
    idx = torch.tensor([5, 0, 29])
    assert torch.equal(cached.spikes(idx, 3), uncached.spikes(idx, 3))


@pytest.mark.parametrize("kwargs, message", [
    (dict(pixels=torch.zeros(2, 3, 4)), "batch, inputs"),
    (dict(steps=0), "steps"),
    (dict(pixels=torch.full((2, 3), 300.0)), "lie in"),
])
def test_bad_encoder_input(kwargs, message):
    args = dict(pixels=torch.zeros(2, 3), steps=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        bernoulli_encode(args["pixels"], args["steps"], seed=0, indices=torch.arange(2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_encoder_equals_pure_pytorch(dtype, ops_backend):
    """The C++ encoder draws from the same hash: identical spikes for fixed and per-epoch trains."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (37, 50), generator=g).to(torch.float32)
    pixels[:, :3] = 255  # the largest rate
    pixels[:, 3:6] = 0  # silent inputs
    idx = torch.arange(100, 137)
    trains = {}
    for backend in ("torch", "compiled"):
        ops_backend(backend)
        trains[backend] = [bernoulli_encode(pixels, 301, seed=3, indices=idx, epoch=e, fixed=f, dtype=dtype)
                           for e, f in ((0, True), (4, False))]
    for a, b in zip(trains["torch"], trains["compiled"], strict=True):
        assert b.dtype == dtype and torch.equal(a, b)
        assert a[:, :, :3].mean() > 0.15 and a[:, :, 3:6].sum() == 0 and a[:, 0].sum() == 0


def test_encoder_op_schema_and_fake_implementation(ops_backend):
    ops_backend("compiled")
    keys = torch.tensor([5, 2**32 - 1], dtype=torch.int64)
    torch.library.opcheck(torch.ops.hm2bp.bernoulli_hash_.default,
                          (keys, torch.rand(2, 3, dtype=torch.float64), torch.empty(7, 2, 3)),
                          test_utils=("test_schema", "test_faketensor"))


def test_encoder_op_refuses_bad_tensors(ops_backend):
    ops_backend("compiled")
    keys, q, out = torch.zeros(2, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.float64), torch.empty(4, 2, 3)
    for args, message in (((keys.int(), q, out), "keys must be a contiguous int64"),
                          ((keys, q.float(), out), "q must be a contiguous float64"),
                          ((keys, q, torch.empty(4, 2, 5)), "out must be a contiguous \\(T, B, N\\)")):
        with pytest.raises(RuntimeError, match=message):
            torch.ops.hm2bp.bernoulli_hash_(*args)


def test_compiled_hash_thresholds_at_the_edges(ops_backend):
    """The C++ op compares integers (h ≤ ⌈q·2³²⌉ − 1): the same spikes as the definition ``u < q`` of
    :func:`hashed_uniform` at q = 0, the smallest q, q between representable uniforms, q = 1, q > 1 and q < 0."""
    from hm2bp.encoding import hashed_uniform, sample_keys

    ops_backend("compiled")
    idx = torch.arange(3)
    u = hashed_uniform(5, idx, 2, 30, 8)
    q = torch.tensor([0.0, 2.0**-40, 0.5, 1.0, 1.5, -0.1, 1 - 2.0**-33, 0.25 + 2.0**-34], dtype=torch.float64)
    q = q.expand(3, 8).clone()
    q[1, 2] = float(u[7, 1, 2])  # exactly on a uniform: u < q is false there
    q[2, 3] = float(u[9, 2, 3]) + 2.0**-33  # just above one: true
    out = torch.empty(30, 3, 8)
    torch.ops.hm2bp.bernoulli_hash_(sample_keys(5, idx, 2), q, out)
    expected = (u < q).float()
    expected[0] = 0
    assert torch.equal(out, expected)
    assert out[7, 1, 2] == 0 and out[9, 2, 3] == 1 and out[1:, :2, 3].all() and out[1:, :, 4].all()
    assert not out[:, :, 0].any() and not out[:, :, 5].any()
