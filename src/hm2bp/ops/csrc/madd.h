// Arithmetic shared by the CPU kernels. madd: a fused multiply-add where PyTorch's vectorised add-with-alpha uses one
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

// Steps 3-5 of hm2bp.neuron's LIF step for one neuron whose synaptic state c was already updated: integrate
// v <- v(1 - 1/tau_m) + c, hold v at 0 while the refractory counter ref > 0, fire at v > fire_at and reset.
// Branch-free (selects), so loops calling it vectorise; ref is kept in scalar_t so every array has one width.
// Returns the spike (0/1).
template <typename T>
inline T lif_step(T c, T& v, T& ref, T dm, T fire_at, T hold) {
  T vi = madd(v, dm, c);
  const bool held = ref > T(0);
  vi = held ? T(0) : vi;
  const T ri = held ? ref - T(1) : ref;
  const bool fire = vi > fire_at;
  v = fire ? T(0) : vi;
  ref = fire ? hold : ri;
  return fire ? T(1) : T(0);
}
