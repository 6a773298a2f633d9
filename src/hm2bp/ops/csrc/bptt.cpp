// CPU kernels of BPTT through the LIF scan (hm2bp/bptt.py has the equations): a forward scan that also records the
// membrane before the refractory hold (u), and the reverse-time recursion of its gradient. Neurons in parallel (a
// sample's neurons together under lateral inhibition), a loop over time per chunk, as in lif_scan.cpp; the forward
// gives lif_scan.cpp's spikes exactly.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "madd.h"

namespace {

template <typename scalar_t>
void record_chunk(const scalar_t* cur, scalar_t inv_tau, scalar_t* s, scalar_t* u, int64_t T, int64_t stride,
                  int64_t begin, int64_t len, scalar_t fire_at, scalar_t dm, scalar_t ds, int64_t t_ref) {
  std::vector<scalar_t> c(len, 0), v(len, 0), ref(len, 0);  // ref: the refractory counter, as in lif_scan.cpp
  const scalar_t hold = static_cast<scalar_t>(t_ref);
  for (int64_t i = 0; i < len; ++i) s[begin + i] = u[begin + i] = 0;  // no spike at t = 0
  for (int64_t t = 1; t < T; ++t) {
    const int64_t o = t * stride + begin;
    for (int64_t i = 0; i < len; ++i) {
      c[i] = madd(c[i], ds, cur[o - stride + i] * inv_tau);  // drive I[t-1]/tau_s, rounded as lif_scan's
      const scalar_t ui = madd(v[i], dm, c[i]);
      u[o + i] = ui;
      const bool held = ref[i] > scalar_t(0);
      const scalar_t vh = held ? scalar_t(0) : ui;
      const bool fire = vh > fire_at;
      ref[i] = fire ? hold : (held ? ref[i] - scalar_t(1) : ref[i]);
      // v_t = v̂_t: with t_ref >= 1 the hold resets it from the next step on (hm2bp/bptt.py), which leaves every
      // spike as lif_step's (a neuron that fired is held next step whatever v was); without t_ref, reset now
      v[i] = (t_ref == 0 && fire) ? scalar_t(0) : vh;
      s[o + i] = fire ? scalar_t(1) : scalar_t(0);
    }
  }
}

template <typename scalar_t>
void record_lateral_sample(const scalar_t* cur, scalar_t inv_tau, scalar_t* s, scalar_t* u, int64_t T, int64_t stride,
                           int64_t b, int64_t N, scalar_t fire_at, scalar_t dm, scalar_t ds, int64_t t_ref,
                           scalar_t lateral) {
  std::vector<scalar_t> c(N, 0), v(N, 0), prev(N, 0);
  std::vector<int64_t> ref(N, 0);
  for (int64_t i = 0; i < N; ++i) s[b * N + i] = u[b * N + i] = 0;
  for (int64_t t = 1; t < T; ++t) {
    const int64_t o = t * stride + b * N;
    scalar_t total = 0;
    for (int64_t i = 0; i < N; ++i) total += prev[i];
    for (int64_t i = 0; i < N; ++i) {  // the arithmetic of lif_scan.cpp's scan_lateral_sample
      c[i] = madd(c[i], ds, cur[o - stride + i] * inv_tau);
      c[i] = madd(-lateral, total - prev[i], c[i]);
      v[i] = madd(v[i], dm, c[i]);
      u[o + i] = v[i];
      if (ref[i] > 0) {
        v[i] = 0;
        ref[i] -= 1;
      }
      const bool fire = v[i] > fire_at;
      if (fire) {
        ref[i] = t_ref;
        if (t_ref == 0) v[i] = 0;  // else v_t = v̂_t, reset by the hold (as record_chunk)
      }
      s[o + i] = fire ? scalar_t(1) : scalar_t(0);
    }
    for (int64_t i = 0; i < N; ++i) prev[i] = s[o + i];
  }
}

// One step t of the reverse recursion for neurons [begin, begin + len) of the (T, B*N) layout. ∂L/∂s_t is the
// incoming gs[t] plus what later steps passed back (pend, a ring of R rows: row t % R collects step t's share, from
// the hold's reset gradient and from lateral inhibition). Writes gd[t − 1] = ∂L/∂I[t − 1] = ∂L/∂c_t / tau_s, keeps
// ∂L/∂c_t in g_c (for lateral inhibition), and updates the carried adjoints gc (of c_t) and gv (of v_t).
template <typename scalar_t>
inline void backward_step(const scalar_t* gs, const scalar_t* s, const scalar_t* u, scalar_t* gd, scalar_t* gc,
                          scalar_t* gv, scalar_t* pend, scalar_t* g_c_out, int64_t R, int64_t t, int64_t stride,
                          int64_t begin, int64_t len, scalar_t fire_at, scalar_t dm, scalar_t ds, int64_t t_ref,
                          scalar_t slope, bool reset_grad, scalar_t inv_tau) {
  const int64_t o = t * stride + begin;
  const int64_t k_max = std::min<int64_t>(t_ref, t);
  scalar_t* mine = pend + (t % R) * len;
  for (int64_t i = 0; i < len; ++i) {
    scalar_t h = 0;
    for (int64_t k = 1; k <= k_max; ++k) h += s[o - k * stride + i];
    const scalar_t keep = t_ref ? scalar_t(1) - h : scalar_t(1);
    const scalar_t v_hat = u[o + i] * keep;
    const scalar_t r = scalar_t(1) / (scalar_t(1) + slope * std::abs(v_hat - fire_at));
    const scalar_t sg = r * r;  // the fast-sigmoid surrogate of ds/dv
    const scalar_t g_in = gs[o + i] + mine[i];
    mine[i] = 0;  // the row serves step t − R next
    scalar_t g_vhat;
    if (t_ref == 0) {  // v_t = v̂_t (1 − s_t)
      const scalar_t g_s = reset_grad ? g_in - gv[i] * v_hat : g_in;
      g_vhat = g_s * sg + gv[i] * (scalar_t(1) - s[o + i]);
    } else {  // v_t = v̂_t; the hold resets it next step
      g_vhat = g_in * sg + gv[i];
    }
    const scalar_t g_u = g_vhat * keep;
    if (reset_grad) {
      for (int64_t k = 1; k <= k_max; ++k) pend[((t - k) % R) * len + i] -= g_vhat * u[o + i];  // v̂ = u (1 − h)
    }
    const scalar_t g_c = g_u + gc[i];
    g_c_out[i] = g_c;
    gd[o - stride + i] = g_c * inv_tau;  // ∂L/∂I[t−1] = ∂L/∂c_t / tau_s
    gc[i] = ds * g_c;
    gv[i] = dm * g_u;
  }
}

}  // namespace

void bptt_forward_cpu(at::Tensor currents, double inv_tau_s, at::Tensor spikes, at::Tensor u, double fire_at,
                      double decay_m, double decay_s, int64_t t_ref, double lateral) {
  TORCH_CHECK(currents.dim() == 3 && currents.is_contiguous() && spikes.is_contiguous() && u.is_contiguous(),
              "currents, spikes and u must be contiguous (T, B, N) tensors");
  TORCH_CHECK(currents.sizes() == spikes.sizes() && currents.sizes() == u.sizes(),
              "currents, spikes and u differ in shape");
  const int64_t T = currents.size(0), B = currents.size(1), N = currents.size(2);
  if (T == 0) return;
  AT_DISPATCH_FLOATING_TYPES(currents.scalar_type(), "bptt_forward_cpu", [&] {
    const scalar_t* cur = currents.data_ptr<scalar_t>();
    scalar_t* sp = spikes.data_ptr<scalar_t>();
    scalar_t* up = u.data_ptr<scalar_t>();
    const scalar_t it = static_cast<scalar_t>(inv_tau_s), fa = static_cast<scalar_t>(fire_at),
                   dm = static_cast<scalar_t>(decay_m), ds = static_cast<scalar_t>(decay_s),
                   lat = static_cast<scalar_t>(lateral);
    if (lateral == 0.0) {
      at::parallel_for(0, B * N, 2048, [&](int64_t begin, int64_t end) {
        record_chunk<scalar_t>(cur, it, sp, up, T, B * N, begin, end - begin, fa, dm, ds, t_ref);
      });
    } else {
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) record_lateral_sample<scalar_t>(cur, it, sp, up, T, B * N, b, N, fa, dm,
                                                                              ds, t_ref, lat);
      });
    }
  });
}

void bptt_backward_cpu(at::Tensor grad_spikes, at::Tensor spikes, at::Tensor u, at::Tensor grad_currents,
                       double inv_tau_s, double fire_at, double decay_m, double decay_s, int64_t t_ref, double lateral,
                       double slope, bool reset_grad) {
  TORCH_CHECK(grad_spikes.is_contiguous() && spikes.is_contiguous() && u.is_contiguous() &&
                  grad_currents.is_contiguous(), "BPTT backward needs contiguous (T, B, N) tensors");
  TORCH_CHECK(grad_spikes.sizes() == spikes.sizes() && spikes.sizes() == u.sizes() &&
                  u.sizes() == grad_currents.sizes(), "BPTT backward tensors differ in shape");
  const int64_t T = spikes.size(0), B = spikes.size(1), N = spikes.size(2);
  if (T == 0) return;
  const int64_t R = std::max<int64_t>(t_ref, 1) + 1;  // steps t − 1 .. t − t_ref get shares from step t
  AT_DISPATCH_FLOATING_TYPES(spikes.scalar_type(), "bptt_backward_cpu", [&] {
    const scalar_t* gs = grad_spikes.data_ptr<scalar_t>();
    const scalar_t* s = spikes.data_ptr<scalar_t>();
    const scalar_t* up = u.data_ptr<scalar_t>();
    scalar_t* gd = grad_currents.data_ptr<scalar_t>();
    const scalar_t it = static_cast<scalar_t>(inv_tau_s), fa = static_cast<scalar_t>(fire_at),
                   dm = static_cast<scalar_t>(decay_m), ds = static_cast<scalar_t>(decay_s),
                   lat = static_cast<scalar_t>(lateral), k = static_cast<scalar_t>(slope);
    const int64_t stride = B * N;
    // neurons in chunks (a sample's neurons together under lateral inhibition, which couples them)
    const int64_t unit = lateral == 0.0 ? 1 : N, units = lateral == 0.0 ? B * N : B;
    at::parallel_for(0, units, lateral == 0.0 ? 2048 : 1, [&](int64_t u0, int64_t u1) {
      const int64_t begin = u0 * unit, len = (u1 - u0) * unit;
      std::vector<scalar_t> gc(len, 0), gv(len, 0), pend(R * len, 0), g_c(len, 0);
      for (int64_t i = 0; i < len; ++i) gd[(T - 1) * stride + begin + i] = 0;  // I[T−1] drives no step
      for (int64_t t = T - 1; t >= 1; --t) {
        backward_step<scalar_t>(gs, s, up, gd, gc.data(), gv.data(), pend.data(), g_c.data(), R, t, stride, begin,
                                len, fa, dm, ds, t_ref, k, reset_grad, it);
        if (lateral != 0.0) {  // c_t ∋ −L (Σ_m s_{t−1,m} − s_{t−1}): ∂L/∂c_t passes on to the spikes of step t − 1
          scalar_t* prev = pend.data() + ((t - 1) % R) * len;
          for (int64_t b0 = 0; b0 < len; b0 += N) {
            scalar_t total = 0;
            for (int64_t i = b0; i < b0 + N; ++i) total += g_c[i];
            for (int64_t i = b0; i < b0 + N; ++i) prev[i] -= lat * (total - g_c[i]);
          }
        }
      }
    });
  });
}
