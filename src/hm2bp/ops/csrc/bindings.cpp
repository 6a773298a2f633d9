// Python bindings of the compiled kernels of hm2bp.ops (CPU; the GPU kernels are Triton, hm2bp/ops/triton_kernels.py).
#include <torch/extension.h>

#include <vector>

void lif_scan_cpu(torch::Tensor buf, double fire_at, double decay_m, double decay_s, int64_t t_ref, double lateral);
void linear_forward_cpu(torch::Tensor pre, torch::Tensor weight_t, torch::Tensor post, double fire_at,
                        double decay_m, double decay_s, int64_t t_ref, double lateral);
std::vector<torch::Tensor> linear_backward_cpu(torch::Tensor pre, torch::Tensor post, torch::Tensor weight,
                                               torch::Tensor g, torch::Tensor lam, torch::Tensor rho, double nu,
                                               bool need_below, double decay_m, double decay_s, double coef_m,
                                               double coef_s, int64_t delay, int64_t t_ref, int64_t window,
                                               bool zero_first);
torch::Tensor spsp_cpu(torch::Tensor pre, torch::Tensor post, double decay_m, double decay_s, double coef_m,
                       double coef_s, int64_t delay, int64_t t_ref, int64_t window, bool zero_first);
void bernoulli_hash_cpu(torch::Tensor keys, torch::Tensor q, torch::Tensor out);
void bptt_forward_cpu(torch::Tensor currents, double inv_tau_s, torch::Tensor spikes, torch::Tensor u, double fire_at,
                      double decay_m, double decay_s, int64_t t_ref, double lateral);
void bptt_backward_cpu(torch::Tensor grad_spikes, torch::Tensor spikes, torch::Tensor u, torch::Tensor grad_currents,
                       double inv_tau_s, double fire_at, double decay_m, double decay_s, int64_t t_ref, double lateral,
                       double slope, bool reset_grad);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lif_scan_cpu", &lif_scan_cpu, "fused LIF scan, in place (CPU)");
  m.def("linear_forward_cpu", &linear_forward_cpu, "spiking linear layer forward into post: event-driven drive + LIF scan");
  m.def("linear_backward_cpu", &linear_backward_cpu, "spiking linear layer HM2-BP backward contractions");
  m.def("spsp_cpu", &spsp_cpu, "per-sample S-PSPs e (B, N_out, N_in) of HM2-BP (CPU)");
  m.def("bernoulli_hash_cpu", &bernoulli_hash_cpu, "Bernoulli rate code from the counter-based hash, into out");
  m.def("bptt_forward_cpu", &bptt_forward_cpu, "LIF scan recording the membrane before the hold (BPTT forward)");
  m.def("bptt_backward_cpu", &bptt_backward_cpu, "reverse-time recursion of BPTT through the LIF scan");
}
