// CPU kernel of the Bernoulli rate code (hm2bp.encoding.bernoulli_encode): the same counter-based hash, in uint32
// arithmetic (the pure-PyTorch path computes it on int32 bit patterns with wrapping multiplies and masked shifts:
// identical bits), so both paths give the same spikes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

inline uint32_t hash32(uint32_t x) {  // lowbias32
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

}  // namespace

// out[t, b, i] = 1 if hash32(keys[b] + t*N + i) / 2^32 < q[b, i] (t >= 1), else 0; row t = 0 is all zeros.
// The comparison runs on integers: h / 2^32 < q  <=>  h < ceil(q 2^32)  <=>  h <= lim = ceil(q 2^32) - 1 (q 2^32 is
// exact in double), with lim clamped to [0, 2^32 - 1] and a separate 0 for q <= 0 (or NaN), where nothing fires;
// the same spikes as the float comparison, bit for bit, in a loop that vectorises.
void bernoulli_hash_cpu(at::Tensor keys, at::Tensor q, at::Tensor out) {
  TORCH_CHECK(keys.dim() == 1 && keys.scalar_type() == at::kLong && keys.is_contiguous() && keys.device().is_cpu(),
              "keys must be a contiguous int64 (B,) CPU tensor");
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kDouble && q.is_contiguous() && q.size(0) == keys.size(0),
              "q must be a contiguous float64 (B, N) tensor");
  TORCH_CHECK(out.dim() == 3 && out.is_contiguous() && out.size(1) == q.size(0) && out.size(2) == q.size(1) &&
                  out.device().is_cpu(),
              "out must be a contiguous (T, B, N) CPU tensor");
  const int64_t T = out.size(0), B = q.size(0), N = q.size(1);
  const int64_t* key = keys.data_ptr<int64_t>();
  const double* qp = q.data_ptr<double>();
  std::vector<uint32_t> lim(B * N);
  std::vector<uint8_t> can(B * N);
  for (int64_t x = 0; x < B * N; ++x) {
    const double bound = std::ceil(qp[x] * 4294967296.0);  // h < bound
    can[x] = bound >= 1.0;  // false for q <= 0 and NaN
    lim[x] = can[x] ? static_cast<uint32_t>(std::min(bound, 4294967296.0) - 1.0) : 0u;
  }
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "bernoulli_hash_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    std::vector<scalar_t> one(B * N);
    for (int64_t x = 0; x < B * N; ++x) one[x] = can[x] ? scalar_t(1) : scalar_t(0);
    at::parallel_for(0, T, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) {
        for (int64_t b = 0; b < B; ++b) {
          scalar_t* __restrict__ row = o + (t * B + b) * N;
          if (t == 0) {
            std::fill(row, row + N, scalar_t(0));
            continue;
          }
          const uint32_t* __restrict__ lb = lim.data() + b * N;
          const scalar_t* __restrict__ ob = one.data() + b * N;
          const uint32_t base = static_cast<uint32_t>(key[b]) + static_cast<uint32_t>(t * N);
          for (int64_t i = 0; i < N; ++i) {
            row[i] = hash32(base + static_cast<uint32_t>(i)) <= lb[i] ? ob[i] : scalar_t(0);
          }
        }
      }
    });
  });
}
