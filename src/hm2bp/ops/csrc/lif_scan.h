// Fused LIF scan (docs/algorithm.md §1) shared by the CPU and CUDA kernels of hm2bp.ops.
// buf is a time-major (T + 1, B, N) work buffer: row t + 1 holds I[t]/tau_s on entry; row t holds spike s[t]
// (0/1) on exit. Row t is read (drive of step t) before s[t] is written into it.
#pragma once
#include <cstdint>

void hm2bp_lif_scan_cuda_f32(float* buf, int64_t T, int64_t B, int64_t N, float fire_at, float decay_m,
                             float decay_s, int64_t t_ref, float lateral);
void hm2bp_lif_scan_cuda_f64(double* buf, int64_t T, int64_t B, int64_t N, double fire_at, double decay_m,
                             double decay_s, int64_t t_ref, double lateral);
