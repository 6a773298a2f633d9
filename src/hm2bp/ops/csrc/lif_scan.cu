// CUDA kernel of the fused LIF scan: one thread per neuron looping over time (as the authors' kernel), or, with
// lateral inhibition, one block per sample that sums the previous step's spikes in shared memory.
// Plain CUDA C++ (no torch headers), so `nvcc -c` checks it anywhere nvcc exists.
#include <cstdint>

#include "lif_scan.h"

namespace {

template <typename scalar_t>
__global__ void scan_kernel(scalar_t* buf, int64_t T, int64_t BN, scalar_t fire_at, scalar_t dm, scalar_t ds,
                            int64_t t_ref) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= BN) return;
  scalar_t c = 0, v = 0;
  int64_t ref = 0;
  buf[i] = 0;
  for (int64_t t = 1; t < T; ++t) {
    scalar_t* x = buf + t * BN + i;
    c = fma(c, ds, *x);
    v = fma(v, dm, c);
    if (ref > 0) {
      v = 0;
      ref -= 1;
    }
    const bool fire = v > fire_at;
    if (fire) {
      v = 0;
      ref = t_ref;
    }
    *x = fire ? scalar_t(1) : scalar_t(0);
  }
}

template <typename scalar_t>
__global__ void scan_lateral_kernel(scalar_t* buf, int64_t T, int64_t B, int64_t N, scalar_t fire_at, scalar_t dm,
                                    scalar_t ds, int64_t t_ref, scalar_t lateral) {
  extern __shared__ unsigned char smem[];
  scalar_t* partial = reinterpret_cast<scalar_t*>(smem);
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t BN = B * N;
  // each thread owns neurons tid, tid + blockDim.x, ...; state kept for up to 8 neurons per thread
  constexpr int kMax = 8;
  scalar_t c[kMax], v[kMax], prev[kMax];
  int64_t ref[kMax];
  for (int k = 0; k < kMax; ++k) {
    c[k] = v[k] = prev[k] = 0;
    ref[k] = 0;
  }
  for (int64_t n = tid; n < N; n += blockDim.x) buf[b * N + n] = 0;
  for (int64_t t = 1; t < T; ++t) {
    scalar_t mine = 0;
    for (int k = 0; k < kMax; ++k) mine += prev[k];
    partial[tid] = mine;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (tid < s) partial[tid] += partial[tid + s];
      __syncthreads();
    }
    const scalar_t total = partial[0];
    __syncthreads();
    int k = 0;
    for (int64_t n = tid; n < N && k < kMax; n += blockDim.x, ++k) {
      scalar_t* x = buf + t * BN + b * N + n;
      c[k] = fma(c[k], ds, *x);
      c[k] = fma(-lateral, total - prev[k], c[k]);
      v[k] = fma(v[k], dm, c[k]);
      if (ref[k] > 0) {
        v[k] = 0;
        ref[k] -= 1;
      }
      const bool fire = v[k] > fire_at;
      if (fire) {
        v[k] = 0;
        ref[k] = t_ref;
      }
      prev[k] = fire ? scalar_t(1) : scalar_t(0);
      *x = prev[k];
    }
  }
}

template <typename scalar_t>
void launch(scalar_t* buf, int64_t T, int64_t B, int64_t N, scalar_t fire_at, scalar_t dm, scalar_t ds,
            int64_t t_ref, scalar_t lateral) {
  if (lateral == scalar_t(0)) {
    const int threads = 256;
    const int64_t blocks = (B * N + threads - 1) / threads;
    scan_kernel<scalar_t><<<blocks, threads>>>(buf, T, B * N, fire_at, dm, ds, t_ref);
  } else {
    int threads = 32;
    while (threads < 1024 && threads * 8 < N) threads *= 2;  // <= 8 neurons per thread
    scan_lateral_kernel<scalar_t><<<B, threads, threads * sizeof(scalar_t)>>>(buf, T, B, N, fire_at, dm, ds, t_ref,
                                                                             lateral);
  }
}

}  // namespace

void hm2bp_lif_scan_cuda_f32(float* buf, int64_t T, int64_t B, int64_t N, float fire_at, float decay_m,
                             float decay_s, int64_t t_ref, float lateral) {
  launch<float>(buf, T, B, N, fire_at, decay_m, decay_s, t_ref, lateral);
}

void hm2bp_lif_scan_cuda_f64(double* buf, int64_t T, int64_t B, int64_t N, double fire_at, double decay_m,
                             double decay_s, int64_t t_ref, double lateral) {
  launch<double>(buf, T, B, N, fire_at, decay_m, decay_s, t_ref, lateral);
}
