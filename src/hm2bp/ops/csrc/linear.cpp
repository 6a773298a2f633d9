// Fused CPU kernels of the spiking fully-connected layer (hm2bp.functional.HM2BPLinearFunction).
//
// Forward, per sample (samples in parallel): the drive I[t-1]/tau_s is the sum of the rows of W^T/tau_s of the
// pre neurons that spiked at t-1 (event-driven: input trains are sparse), then one step of the LIF scan with the
// arithmetic of hm2bp.neuron.scan_core. The state of a sample stays in cache for all T steps; the next step's input
// row is prefetched, and a large output raster is written with non-temporal stores.
//
// Backward, per sample: the pre side over the sample's active columns only (those with a spike; ~20 % of MNIST's
// pixels), its traces D_m, D_s (T, N_active), the post spike times of each neuron, and for each post neuron i its
// S-PSP row e_i = sum over its events of val * (c_m D_m(t) + c_s D_s(t)) (the events of hm2bp.spsp.post_events).
// The row is used while it is in L1: side effect a_i = w_i . e_i, the coefficient coef_i = g_i (1 + S_i) Lambda_i,
// the weight gradient coef_i e_i and the error below g_i w_i * e_i. Spike counts of both sides come out too, so the
// caller never sums the (large) rasters again.
// No (B, N_out, N_in) tensor exists: the gradient is accumulated per fixed group of samples (so the result does
// not depend on the number of threads) and the groups are summed in order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "madd.h"
#include "memory.h"

namespace {

// Calls f(j) for every j < n with x[j] != 0, in ascending j (spike rows are mostly zeros): a vector compare per
// 32 bytes and a loop over the set bits of its mask.
template <typename scalar_t, typename F>
inline void for_each_spike(const scalar_t* x, int64_t n, F&& f) {
  int64_t j = 0;
#if defined(__AVX2__)
  if constexpr (sizeof(scalar_t) == 4 || sizeof(scalar_t) == 8) {
    constexpr int64_t kLanes = 32 / sizeof(scalar_t);
    for (; j + kLanes <= n; j += kLanes) {
      uint32_t mask;
      if constexpr (sizeof(scalar_t) == 4) {
        const __m256 v = _mm256_loadu_ps(reinterpret_cast<const float*>(x + j));
        mask = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NEQ_UQ)));
      } else {
        const __m256d v = _mm256_loadu_pd(reinterpret_cast<const double*>(x + j));
        mask = static_cast<uint32_t>(_mm256_movemask_pd(_mm256_cmp_pd(v, _mm256_setzero_pd(), _CMP_NEQ_UQ)));
      }
      while (mask != 0) {
        f(j + __builtin_ctz(mask));
        mask &= mask - 1;
      }
    }
  }
#endif
  for (; j < n; ++j) {
    if (x[j] != scalar_t(0)) f(j);
  }
}

template <typename scalar_t, bool kLateral>
void forward_sample(const scalar_t* __restrict__ pre, const scalar_t* __restrict__ wt, scalar_t* __restrict__ post,
                    int64_t T, int64_t B, int64_t b, int64_t n_in, int64_t n_out, scalar_t fire_at, scalar_t dm,
                    scalar_t ds, int64_t t_ref, scalar_t lateral, bool stream) {
  std::vector<scalar_t> drive(n_out), c(n_out, 0), v(n_out, 0), ref(n_out, 0);
  scalar_t* __restrict__ dr = drive.data();
  scalar_t* __restrict__ cp = c.data();
  scalar_t* __restrict__ vp = v.data();
  scalar_t* __restrict__ rp = ref.data();
  const scalar_t hold = static_cast<scalar_t>(t_ref);
  std::fill(post + b * n_out, post + (b + 1) * n_out, scalar_t(0));  // no spike at t = 0
  for (int64_t t = 1; t < T; ++t) {
    const scalar_t* x = pre + ((t - 1) * B + b) * n_in;
    if (t < T - 1) prefetch(x + B * n_in, n_in);
    std::fill(dr, dr + n_out, scalar_t(0));
    for_each_spike(x, n_in, [&](int64_t j) {  // I[t-1]/tau_s = sum_j x_j W^T_j / tau_s over the inputs that spiked
      const scalar_t a = x[j];  // 1 for a spike (then a * row is exact); any other value weighs the row as a GEMM
      const scalar_t* __restrict__ row = wt + j * n_out;
      for (int64_t i = 0; i < n_out; ++i) dr[i] += a * row[i];
    });
    const scalar_t* __restrict__ prev = post + ((t - 1) * B + b) * n_out;
    scalar_t* __restrict__ out = post + (t * B + b) * n_out;
    scalar_t total = 0;
    if constexpr (kLateral) {
      for (int64_t i = 0; i < n_out; ++i) total += prev[i];
    }
    for (int64_t i = 0; i < n_out; ++i) {
      scalar_t ci = madd(cp[i], ds, dr[i]);  // c <- c(1 - 1/tau_s) + I[t-1]/tau_s
      if constexpr (kLateral) ci = madd(-lateral, total - prev[i], ci);  // -w0/tau_s per other spike at t-1
      cp[i] = ci;
      const scalar_t spike = lif_step(ci, vp[i], rp[i], dm, fire_at, hold);
      if constexpr (kLateral) {
        out[i] = spike;  // read back as prev at the next step
      } else {
        dr[i] = spike;
      }
    }
    if constexpr (!kLateral) {
      if (stream) {
        stream_row(out, dr, n_out);
      } else {
        std::memcpy(out, dr, n_out * sizeof(scalar_t));
      }
    }
  }
}

struct KernelArgs {
  double decay_m, decay_s;  // per-step decays of the two exponential traces
  double coef_m, coef_s;    // weights c_m, c_s of the traces in the kernel
  int64_t delay;            // steps by which the pre train is delayed before tracing
  int64_t t_ref;
  int64_t window;           // original convention's window L in steps; < 0: none
  bool zero_first;          // pre spikes at t = 0 never count (original convention)
};

// sum_j a_j b_j in kDotLanes interleaved partial sums (lane j mod kDotLanes), added pairwise at the end: the order is
// fixed by j alone, so the result does not depend on the instruction set, and the lanes are independent chains (a
// single running sum waits for each multiply-add to finish before the next).
constexpr int64_t kDotLanes = 16;

template <typename scalar_t>
inline scalar_t dot(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n) {
  scalar_t acc[kDotLanes] = {};
  int64_t j = 0;
  for (; j + kDotLanes <= n; j += kDotLanes) {
    for (int64_t l = 0; l < kDotLanes; ++l) acc[l] = madd(a[j + l], b[j + l], acc[l]);
  }
  for (int64_t l = 0; j + l < n; ++l) acc[l] = madd(a[j + l], b[j + l], acc[l]);
  for (int64_t width = kDotLanes / 2; width > 0; width /= 2) {
    for (int64_t l = 0; l < width; ++l) acc[l] += acc[l + width];
  }
  return acc[0];
}

// Per-thread scratch of the backward kernel (see Backward::samples).
template <typename scalar_t>
struct Scratch {
  std::vector<scalar_t> tr, e, wi, x, seen;
  std::vector<int64_t> first, start, times;
  std::vector<int32_t> pos, act;
  std::vector<std::pair<int32_t, scalar_t>> ev;     // pre events (column, value) in time order
  std::vector<std::pair<int32_t, int32_t>> spikes;  // post spikes (neuron, time) in time order
  bool compact = true;  // the form of the pre side (Backward::pre_events), chosen from the previous sample
};

template <typename scalar_t>
struct Backward {
  const scalar_t* pre;   // (T, B, n_in)
  const scalar_t* post;  // (T, B, n_out)
  const scalar_t* w;     // (n_out, n_in)
  const scalar_t* g;     // (B, n_out)
  const scalar_t* lam;   // (B, n_out) or null
  const scalar_t* rho;   // (n_out) silent-neuron side effect, or null when the side effect is off
  scalar_t* coef;        // (B, n_out) out
  scalar_t* gwe;         // (B, n_in) out, or null
  scalar_t* o;           // (B, n_out) out: post spike counts
  scalar_t* o_pre;       // (B, n_in) out: pre spike counts
  int64_t T, B, n_in, n_out;
  scalar_t nu;
  KernelArgs k;
  // pow_m[q] = decay_m^q, pow_s[q] = decay_s^q for 0 <= q <= max(T, window) (std::pow's values, computed once)
  std::vector<scalar_t> pow_m, pow_s;

  void init_powers() {
    const int64_t top = std::max<int64_t>(T, k.window) + 1;
    pow_m.resize(top);
    pow_s.resize(top);
    for (int64_t q = 0; q < top; ++q) {
      pow_m[q] = std::pow(static_cast<scalar_t>(k.decay_m), static_cast<scalar_t>(q));
      pow_s[q] = std::pow(static_cast<scalar_t>(k.decay_s), static_cast<scalar_t>(q));
    }
  }

  // base^q from its table, or from std::pow outside it (q < 0 only on rasters that break the refractory period)
  static scalar_t power(const std::vector<scalar_t>& table, double base, int64_t q) {
    if (q >= 0 && q < static_cast<int64_t>(table.size())) return table[q];
    return std::pow(static_cast<scalar_t>(base), static_cast<scalar_t>(q));
  }

  // The pre side of sample b, one pass over its rows: the counts into o_pre (n_in), the active columns (a nonzero
  // value at some step) ascending in act, and pos[j] = index of column j in act (or -1). Compact form (sparse
  // inputs): the events (column, value) of step t are kept in ev[first[t], first[t + 1]), in column order. Dense
  // form (most columns active): the traces gather the active columns from the rows themselves. Both forms give the
  // same act, traces and so the same numbers; the dense one skips the per-event work where events are many.
  void pre_events(int64_t b, Scratch<scalar_t>& sc, scalar_t* __restrict__ o_pre) const {
    std::fill(o_pre, o_pre + n_in, scalar_t(0));
    sc.act.clear();
    sc.pos.assign(n_in, -1);
    if (sc.compact) {
      sc.first.resize(T + 1);
      sc.ev.clear();
    } else {
      sc.seen.assign(n_in, scalar_t(0));
    }
    for (int64_t t = 0; t < T; ++t) {
      const scalar_t* __restrict__ now = pre + (t * B + b) * n_in;
      if (t + 1 < T) prefetch(now + B * n_in, n_in);
      if (!sc.compact) {
        scalar_t* __restrict__ seen = sc.seen.data();
        for (int64_t j = 0; j < n_in; ++j) {
          o_pre[j] += now[j];
          seen[j] = now[j] != scalar_t(0) ? scalar_t(1) : seen[j];
        }
        continue;
      }
      sc.first[t] = static_cast<int64_t>(sc.ev.size());
      for_each_spike(now, n_in, [&](int64_t j) {
        sc.ev.emplace_back(static_cast<int32_t>(j), now[j]);
        o_pre[j] += now[j];  // the same additions, in the same order, as summing the rows (zeros add nothing)
        sc.pos[j] = 0;
      });
    }
    if (sc.compact) {
      sc.first[T] = static_cast<int64_t>(sc.ev.size());
    } else {
      for (int64_t j = 0; j < n_in; ++j) sc.pos[j] = sc.seen[j] != scalar_t(0) ? 0 : -1;
    }
    for (int64_t j = 0; j < n_in; ++j) {
      if (sc.pos[j] < 0) continue;
      sc.pos[j] = static_cast<int32_t>(sc.act.size());
      sc.act.push_back(static_cast<int32_t>(j));
    }
  }

  // Traces of the active columns of sample b into sc.tr (T, 2, n_act): D(t) = decay D(t-1) + x(t - delay), 0 before
  // the delay (a silent column's traces are 0 throughout and take no part in any row).
  void traces(int64_t b, Scratch<scalar_t>& sc) const {
    const scalar_t dm = static_cast<scalar_t>(k.decay_m), ds = static_cast<scalar_t>(k.decay_s);
    const int64_t n = static_cast<int64_t>(sc.act.size());
    const int32_t* __restrict__ act = sc.act.data();
    sc.tr.resize(T * 2 * n);
    sc.x.assign(n, scalar_t(0));
    scalar_t* __restrict__ x = sc.x.data();
    for (int64_t t = 0; t < T; ++t) {
      scalar_t* __restrict__ m = sc.tr.data() + t * 2 * n;
      scalar_t* __restrict__ s = m + n;
      const int64_t src = t - k.delay;
      if (src < 0) {
        std::fill(m, m + 2 * n, scalar_t(0));
        continue;
      }
      if (sc.compact) {
        for (int64_t q = sc.first[src]; q < sc.first[src + 1]; ++q) x[sc.pos[sc.ev[q].first]] = sc.ev[q].second;
      } else {
        const scalar_t* __restrict__ row = pre + (src * B + b) * n_in;
        if (src + 1 < T) prefetch(row + B * n_in, n_in);
        for (int64_t j = 0; j < n; ++j) x[j] = row[act[j]];
      }
      if (src == 0) {
        const bool skip = k.zero_first;
        for (int64_t j = 0; j < n; ++j) m[j] = s[j] = skip ? scalar_t(0) : x[j];
      } else {
        const scalar_t* __restrict__ pm = m - 2 * n;
        const scalar_t* __restrict__ ps = pm + n;
        for (int64_t j = 0; j < n; ++j) {
          m[j] = madd(pm[j], dm, x[j]);
          s[j] = madd(ps[j], ds, x[j]);
        }
      }
      if (sc.compact) {
        for (int64_t q = sc.first[src]; q < sc.first[src + 1]; ++q) x[sc.pos[sc.ev[q].first]] = scalar_t(0);
      }
    }
  }

  // e += a * D_m(t) + c * D_s(t) over the n active columns
  static void read(scalar_t* __restrict__ e, const scalar_t* tr, int64_t n, int64_t t, scalar_t a, scalar_t c) {
    const scalar_t* __restrict__ m = tr + t * 2 * n;
    const scalar_t* __restrict__ s = m + n;
    for (int64_t j = 0; j < n; ++j) e[j] = madd(c, s[j], madd(a, m[j], e[j]));  // explicit: the same in every lane
  }

  // The S-PSP row of one post neuron over the n active columns from its spike times (hm2bp.spsp.post_events,
  // event for event).
  void psp_row(scalar_t* __restrict__ e, const scalar_t* tr, int64_t n, const int64_t* times, int64_t count) const {
    std::fill(e, e + n, scalar_t(0));
    const scalar_t cm = static_cast<scalar_t>(k.coef_m), cs = static_cast<scalar_t>(k.coef_s);
    const bool split = k.window >= 0;
    const int64_t span = k.window - k.t_ref;
    for (int64_t q = 0; q < count; ++q) {
      const int64_t t = times[q];
      read(e, tr, n, t, cm, cs);  // +1 at the spike
      bool reset = q > 0;
      scalar_t dms = 0;
      int64_t sigma = 0;
      if (reset) {
        const int64_t r = times[q - 1] + k.t_ref;
        sigma = t - r;
        dms = power(pow_m, k.decay_m, sigma);
        if (split) reset = sigma <= span - 1;
        if (reset) read(e, tr, n, r, -dms * cm, -dms * cs);  // -decay_m^sigma at the previous reset
      }
      if (split) {
        const int64_t u = t - k.window + k.t_ref;
        if (u >= 0) {  // remove the pre spikes that left the window
          const scalar_t kept_m = reset ? dms * power(pow_m, k.decay_m, span - sigma) : scalar_t(0);
          const scalar_t kept_s = reset ? dms * power(pow_s, k.decay_s, span - sigma) : scalar_t(0);
          read(e, tr, n, u, (kept_m - pow_m[span]) * cm, (kept_s - pow_s[span]) * cs);
        }
      }
    }
  }

  // The post spikes of sample b: counts into ob (n_out), each neuron's spike times ascending in
  // sc.times[sc.start[i], sc.start[i + 1]).
  void post_times(int64_t b, Scratch<scalar_t>& sc, scalar_t* __restrict__ ob) const {
    sc.spikes.clear();
    for (int64_t t = 0; t < T; ++t) {
      const scalar_t* __restrict__ row = post + (t * B + b) * n_out;
      if (t + 1 < T) prefetch(row + B * n_out, n_out);
      for_each_spike(row, n_out, [&](int64_t i) {
        sc.spikes.emplace_back(static_cast<int32_t>(i), static_cast<int32_t>(t));
      });
    }
    sc.start.assign(n_out + 1, 0);
    for (const auto& sp : sc.spikes) ++sc.start[sp.first + 1];
    for (int64_t i = 0; i < n_out; ++i) {
      ob[i] = static_cast<scalar_t>(sc.start[i + 1]);
      sc.start[i + 1] += sc.start[i];
    }
    sc.times.resize(sc.spikes.size());
    for (const auto& sp : sc.spikes) sc.times[sc.start[sp.first]++] = sp.second;  // stable: each neuron's times ascend
    for (int64_t i = n_out; i > 0; --i) sc.start[i] = sc.start[i - 1];  // back to the first index of each neuron
    sc.start[0] = 0;
  }

  // Both sides of sample b into sc (post spike times, pre columns and their traces, the counts); returns the
  // number of active pre columns. The pre form of the next sample follows this one's density: either form gives the
  // same numbers, one is faster.
  int64_t sides(int64_t b, Scratch<scalar_t>& sc) const {
    post_times(b, sc, o + b * n_out);
    pre_events(b, sc, o_pre + b * n_in);
    traces(b, sc);
    const int64_t n = static_cast<int64_t>(sc.act.size());
    sc.compact = 2 * n < n_in;
    return n;
  }

  // Samples [lo, hi) with their weight-gradient terms accumulated into grad (n_out, n_in). Only the active pre
  // columns of a sample are traced and contracted: e_ij = 0 for a column j without spikes, so skipping it adds
  // nothing to any sum (and the side effect's lanes follow the compact order, the same in both pre forms).
  void samples(int64_t lo, int64_t hi, scalar_t* __restrict__ grad) const {
    // Per-thread scratch kept across calls: a fresh allocation of the traces' size pays its page faults per call.
    thread_local Scratch<scalar_t> sc;
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t n = sides(b, sc);
      const int32_t* __restrict__ act = sc.act.data();
      sc.e.resize(n);
      sc.wi.resize(n);
      scalar_t* __restrict__ e = sc.e.data();
      scalar_t* __restrict__ wc = sc.wi.data();
      scalar_t* __restrict__ out = gwe ? gwe + b * n_in : nullptr;
      if (out) std::fill(out, out + n_in, scalar_t(0));
      for (int64_t i = 0; i < n_out; ++i) {
        const int64_t count = sc.start[i + 1] - sc.start[i];
        const scalar_t gi = g[b * n_out + i];
        scalar_t ci = gi;
        if (count > 0) {
          psp_row(e, sc.tr.data(), n, sc.times.data() + sc.start[i], count);
          const scalar_t* __restrict__ wrow = w + i * n_in;
          for (int64_t j = 0; j < n; ++j) wc[j] = wrow[act[j]];
        }
        if (rho) {  // side effect S_i = a_i / (o_i nu), or rho_i / nu for a silent neuron
          scalar_t side = rho[i];
          if (count > 0) {
            side = dot(wc, e, n) / static_cast<scalar_t>(count);
          }
          ci = ci * (scalar_t(1) + side / nu);
        }
        if (lam) ci = ci * lam[b * n_out + i];
        coef[b * n_out + i] = ci;
        if (count == 0) continue;  // e_i = 0: no gradient term
        scalar_t* __restrict__ gr = grad + i * n_in;
        for (int64_t j = 0; j < n; ++j) gr[act[j]] = madd(ci, e[j], gr[act[j]]);
        if (out) {
          for (int64_t j = 0; j < n; ++j) out[act[j]] = madd(gi * wc[j], e[j], out[act[j]]);
        }
      }
    }
  }

  // The S-PSPs e (B, n_out, n_in) of samples [lo, hi) themselves (the counts come out as in samples()).
  void rows(int64_t lo, int64_t hi, scalar_t* __restrict__ e_all) const {
    thread_local Scratch<scalar_t> sc;
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t n = sides(b, sc);
      sc.e.resize(n);
      scalar_t* __restrict__ out = e_all + b * n_out * n_in;
      std::fill(out, out + n_out * n_in, scalar_t(0));
      for (int64_t i = 0; i < n_out; ++i) {
        const int64_t count = sc.start[i + 1] - sc.start[i];
        if (count == 0) continue;
        psp_row(sc.e.data(), sc.tr.data(), n, sc.times.data() + sc.start[i], count);
        for (int64_t j = 0; j < n; ++j) out[i * n_in + sc.act[j]] = sc.e[j];
      }
    }
  }
};

// Samples are split into this many fixed groups, each with its own gradient buffer, summed in group order.
constexpr int64_t kGroups = 8;

// The groups' gradient buffers (kGroups x N_out x N_in: 59 MB for N-MNIST's 2312-800 layer), kept from call to call:
// a fresh allocation of that size pays its page faults every time (~15 ms there). Calls take turns on it.
std::mutex workspace_mutex;
at::Tensor workspace;

at::Tensor group_buffers(int64_t numel, const at::TensorOptions& options) {
  if (!workspace.defined() || workspace.numel() < numel || workspace.scalar_type() != options.dtype()) {
    workspace = at::Tensor();  // the old one goes first
    workspace = at::empty({numel}, options);
  }
  return workspace;
}

}  // namespace

void linear_forward_cpu(at::Tensor pre, at::Tensor weight_t, at::Tensor post, double fire_at,
                        double decay_m, double decay_s, int64_t t_ref, double lateral) {
  TORCH_CHECK(pre.dim() == 3 && pre.is_contiguous() && pre.device().is_cpu(),
              "pre must be a contiguous time-major (T, B, N_in) CPU tensor");
  TORCH_CHECK(weight_t.dim() == 2 && weight_t.is_contiguous() && weight_t.size(0) == pre.size(2),
              "weight_t must be a contiguous (N_in, N_out) tensor");
  TORCH_CHECK(weight_t.scalar_type() == pre.scalar_type(), "pre and weight_t must share a dtype");
  const int64_t T = pre.size(0), B = pre.size(1), n_in = pre.size(2), n_out = weight_t.size(1);
  TORCH_CHECK(post.dim() == 3 && post.is_contiguous() && post.size(0) == T && post.size(1) == B &&
                  post.size(2) == n_out && post.scalar_type() == pre.scalar_type() && post.device().is_cpu(),
              "out must be a contiguous (T, B, N_out) CPU tensor of pre's dtype");
  if (T == 0 || B == 0) return;
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "linear_forward_cpu", [&] {
    const scalar_t* x = pre.data_ptr<scalar_t>();
    const scalar_t* wt = weight_t.data_ptr<scalar_t>();
    scalar_t* out = post.data_ptr<scalar_t>();
    const bool stream = lateral == 0.0 && T * B * n_out * static_cast<int64_t>(sizeof(scalar_t)) >= kStreamBytes;
    at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        const auto run = lateral != 0.0 ? forward_sample<scalar_t, true> : forward_sample<scalar_t, false>;
        run(x, wt, out, T, B, b, n_in, n_out, static_cast<scalar_t>(fire_at), static_cast<scalar_t>(decay_m),
            static_cast<scalar_t>(decay_s), t_ref, static_cast<scalar_t>(lateral), stream);
      }
      store_fence();
    });
  });
}

std::vector<at::Tensor> linear_backward_cpu(at::Tensor pre, at::Tensor post, at::Tensor weight,
                                               at::Tensor g, at::Tensor lam, at::Tensor rho, double nu,
                                               bool need_below, double decay_m, double decay_s, double coef_m,
                                               double coef_s, int64_t delay, int64_t t_ref, int64_t window,
                                               bool zero_first) {
  const auto dtype = pre.scalar_type();
  for (const auto* t : {&pre, &post, &weight, &g}) {
    TORCH_CHECK(t->is_contiguous() && t->device().is_cpu() && t->scalar_type() == dtype,
                "linear_backward_cpu: every tensor must be contiguous, on the CPU, of one dtype");
  }
  TORCH_CHECK(pre.dim() == 3 && post.dim() == 3 && pre.size(0) == post.size(0) && pre.size(1) == post.size(1),
              "pre (T, B, N_in) and post (T, B, N_out) must share (T, B)");
  const int64_t T = pre.size(0), B = pre.size(1), n_in = pre.size(2), n_out = post.size(2);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == n_out && weight.size(1) == n_in, "weight must be (N_out, N_in)");
  TORCH_CHECK(g.dim() == 2 && g.size(0) == B && g.size(1) == n_out, "g must be (B, N_out)");
  const bool has_lam = lam.numel() > 0, has_rho = rho.numel() > 0;
  TORCH_CHECK(!has_lam || (lam.is_contiguous() && lam.sizes() == g.sizes() && lam.scalar_type() == dtype),
              "lam must be empty or a contiguous (B, N_out) tensor");
  TORCH_CHECK(!has_rho || (rho.is_contiguous() && rho.dim() == 1 && rho.size(0) == n_out && rho.scalar_type() == dtype),
              "rho must be empty or a contiguous (N_out,) tensor");
  auto coef = at::empty({B, n_out}, pre.options());
  auto o = at::empty({B, n_out}, pre.options());
  auto o_pre = at::empty({B, n_in}, pre.options());
  auto gwe = need_below ? at::empty({B, n_in}, pre.options()) : at::empty({0}, pre.options());
  const int64_t groups = std::max<int64_t>(1, std::min<int64_t>(B, kGroups));
  const int64_t size = n_out * n_in;
  auto grad = at::empty({n_out, n_in}, pre.options());
  std::lock_guard<std::mutex> lock(workspace_mutex);
  auto partial = group_buffers(groups * size, pre.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "linear_backward_cpu", [&] {
    Backward<scalar_t> bw{pre.data_ptr<scalar_t>(), post.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                          g.data_ptr<scalar_t>(), has_lam ? lam.data_ptr<scalar_t>() : nullptr,
                          has_rho ? rho.data_ptr<scalar_t>() : nullptr, coef.data_ptr<scalar_t>(),
                          need_below ? gwe.data_ptr<scalar_t>() : nullptr, o.data_ptr<scalar_t>(),
                          o_pre.data_ptr<scalar_t>(), T, B, n_in, n_out,
                          static_cast<scalar_t>(nu),
                          KernelArgs{decay_m, decay_s, coef_m, coef_s, delay, t_ref, window, zero_first}};
    bw.init_powers();
    scalar_t* part = partial.data_ptr<scalar_t>();
    at::parallel_for(0, groups, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t q = lo; q < hi; ++q) {
        std::fill(part + q * size, part + (q + 1) * size, scalar_t(0));
        bw.samples(q * B / groups, (q + 1) * B / groups, part + q * size);
      }
    });
    scalar_t* out = grad.data_ptr<scalar_t>();
    at::parallel_for(0, size, 4096, [&](int64_t lo, int64_t hi) {  // the groups in order, whatever the threads
      std::copy(part + lo, part + hi, out + lo);
      for (int64_t q = 1; q < groups; ++q) {
        const scalar_t* __restrict__ pq = part + q * size;
        for (int64_t x = lo; x < hi; ++x) out[x] += pq[x];
      }
    });
  });
  return {coef, grad, gwe, o, o_pre};
}

at::Tensor spsp_cpu(at::Tensor pre, at::Tensor post, double decay_m, double decay_s, double coef_m, double coef_s,
                    int64_t delay, int64_t t_ref, int64_t window, bool zero_first) {
  TORCH_CHECK(pre.dim() == 3 && post.dim() == 3 && pre.size(0) == post.size(0) && pre.size(1) == post.size(1),
              "pre (T, B, N_in) and post (T, B, N_out) must share (T, B)");
  TORCH_CHECK(pre.is_contiguous() && post.is_contiguous() && pre.device().is_cpu() && post.device().is_cpu() &&
                  pre.scalar_type() == post.scalar_type(),
              "spsp_cpu: pre and post must be contiguous CPU tensors of one dtype");
  const int64_t T = pre.size(0), B = pre.size(1), n_in = pre.size(2), n_out = post.size(2);
  auto e = at::empty({B, n_out, n_in}, pre.options());
  auto o = at::empty({B, n_out}, pre.options());
  auto o_pre = at::empty({B, n_in}, pre.options());
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "spsp_cpu", [&] {
    Backward<scalar_t> bw{pre.data_ptr<scalar_t>(), post.data_ptr<scalar_t>(), nullptr, nullptr, nullptr, nullptr,
                          nullptr, nullptr, o.data_ptr<scalar_t>(), o_pre.data_ptr<scalar_t>(), T, B, n_in, n_out,
                          scalar_t(1), KernelArgs{decay_m, decay_s, coef_m, coef_s, delay, t_ref, window, zero_first}};
    bw.init_powers();
    scalar_t* out = e.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t lo, int64_t hi) { bw.rows(lo, hi, out); });
  });
  return e;
}
