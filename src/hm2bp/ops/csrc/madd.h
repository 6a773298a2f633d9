// Multiply-add shared by the CPU kernels: a fused multiply-add where PyTorch's vectorised add-with-alpha uses one
// (AVX2/AVX-512 builds, -DHM2BP_FMA=1), so the kernels reproduce the pure-PyTorch arithmetic bit for bit.
#pragma once
#include <cmath>

#if HM2BP_FMA
template <typename T>
inline T madd(T a, T b, T c) { return std::fma(a, b, c); }
#else
template <typename T>
inline T madd(T a, T b, T c) { return a * b + c; }
#endif
