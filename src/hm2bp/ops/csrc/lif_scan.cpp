// CPU kernel of the fused LIF scan (docs/algorithm.md §1): neurons in parallel, a loop over time per chunk of neurons.
// The arithmetic mirrors the pure-PyTorch path op for op (fused multiply-adds where PyTorch's vectorised
// add-with-alpha uses them), so both give the same spikes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "madd.h"

namespace {

template <typename scalar_t>
void scan_chunk(scalar_t* buf, int64_t T, int64_t stride, int64_t begin, int64_t len, scalar_t fire_at,
                scalar_t dm, scalar_t ds, int64_t t_ref) {
  std::vector<scalar_t> c(len, 0), v(len, 0), ref(len, 0);
  scalar_t* cp = c.data();
  scalar_t* vp = v.data();
  scalar_t* rp = ref.data();
  const scalar_t hold = static_cast<scalar_t>(t_ref);
  scalar_t* row0 = buf + begin;
  for (int64_t i = 0; i < len; ++i) row0[i] = 0;  // no spike at t = 0
  for (int64_t t = 1; t < T; ++t) {
    scalar_t* row = buf + t * stride + begin;
    for (int64_t i = 0; i < len; ++i) {
      cp[i] = madd(cp[i], ds, row[i]);  // c <- c(1 - 1/tau_s) + I[t-1]/tau_s
      row[i] = lif_step(cp[i], vp[i], rp[i], dm, fire_at, hold);
    }
  }
}

template <typename scalar_t>
void scan_lateral_sample(scalar_t* buf, int64_t T, int64_t stride, int64_t b, int64_t N, scalar_t fire_at,
                         scalar_t dm, scalar_t ds, int64_t t_ref, scalar_t lateral) {
  std::vector<scalar_t> c(N, 0), v(N, 0), prev(N, 0);
  std::vector<int64_t> ref(N, 0);
  scalar_t* row0 = buf + b * N;
  for (int64_t i = 0; i < N; ++i) row0[i] = 0;
  for (int64_t t = 1; t < T; ++t) {
    scalar_t* row = buf + t * stride + b * N;
    scalar_t total = 0;
    for (int64_t i = 0; i < N; ++i) total += prev[i];
    for (int64_t i = 0; i < N; ++i) {
      c[i] = madd(c[i], ds, row[i]);
      c[i] = madd(-lateral, total - prev[i], c[i]);  // -w0/tau_s per other neuron that fired at t-1
      v[i] = madd(v[i], dm, c[i]);
      if (ref[i] > 0) {
        v[i] = 0;
        ref[i] -= 1;
      }
      const bool fire = v[i] > fire_at;
      if (fire) {
        v[i] = 0;
        ref[i] = t_ref;
      }
      row[i] = fire ? scalar_t(1) : scalar_t(0);
    }
    for (int64_t i = 0; i < N; ++i) prev[i] = row[i];
  }
}

}  // namespace

void lif_scan_cpu(at::Tensor buf, double fire_at, double decay_m, double decay_s, int64_t t_ref,
                  double lateral) {
  TORCH_CHECK(buf.dim() == 3 && buf.is_contiguous(), "buf must be a contiguous (T + 1, B, N) tensor");
  TORCH_CHECK(buf.device().is_cpu(), "lif_scan_cpu needs a CPU tensor");
  const int64_t T = buf.size(0) - 1, B = buf.size(1), N = buf.size(2);
  if (T <= 0) return;
  AT_DISPATCH_FLOATING_TYPES(buf.scalar_type(), "lif_scan_cpu", [&] {
    scalar_t* data = buf.data_ptr<scalar_t>();
    const scalar_t fa = static_cast<scalar_t>(fire_at), dm = static_cast<scalar_t>(decay_m),
                   ds = static_cast<scalar_t>(decay_s), lat = static_cast<scalar_t>(lateral);
    if (lateral == 0.0) {
      at::parallel_for(0, B * N, 2048, [&](int64_t begin, int64_t end) {
        scan_chunk<scalar_t>(data, T, B * N, begin, end - begin, fa, dm, ds, t_ref);
      });
    } else {
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          scan_lateral_sample<scalar_t>(data, T, B * N, b, N, fa, dm, ds, t_ref, lat);
        }
      });
    }
  });
}
