// Memory helpers shared by the CPU kernels: the rasters they stream through are tens of MB (an MNIST batch's
// (T, B, N) float raster is 80 MB), far beyond the caches, so the kernels are bound by memory traffic, not arithmetic.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

// Rasters at least this large are written with non-temporal stores (stream_row): they go to memory without first
// being read into cache (half the traffic of a normal store), and are not wanted in cache soon (the next reader comes
// after the whole raster has been written, and it does not fit).
constexpr int64_t kStreamBytes = int64_t(16) << 20;

// Asks for the n values at x to be brought into cache: a sample's rows of a time-major raster lie B rows apart, so
// each starts cold for the hardware prefetcher; the loops over time ask for the next step's row while on this one.
template <typename scalar_t>
inline void prefetch(const scalar_t* x, int64_t n) {
  const char* p = reinterpret_cast<const char*>(x);
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(scalar_t)); off += 64) __builtin_prefetch(p + off);
}

// dst[0..n) = src[0..n), with non-temporal stores for the 32-byte-aligned part where AVX2 has them (a plain copy
// elsewhere). Call store_fence() before other threads may read dst.
template <typename scalar_t>
inline void stream_row(scalar_t* __restrict__ dst, const scalar_t* __restrict__ src, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__)
  if constexpr (sizeof(scalar_t) == 4 || sizeof(scalar_t) == 8) {
    constexpr int64_t kLanes = 32 / sizeof(scalar_t);
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 31) != 0; ++i) dst[i] = src[i];
    for (; i + kLanes <= n; i += kLanes) {
      if constexpr (sizeof(scalar_t) == 4) {
        _mm256_stream_ps(reinterpret_cast<float*>(dst + i), _mm256_loadu_ps(reinterpret_cast<const float*>(src + i)));
      } else {
        _mm256_stream_pd(reinterpret_cast<double*>(dst + i),
                         _mm256_loadu_pd(reinterpret_cast<const double*>(src + i)));
      }
    }
  }
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

// Orders this thread's non-temporal stores before what follows (they are weakly ordered).
inline void store_fence() {
#if defined(__AVX2__)
  _mm_sfence();
#endif
}
