// The CUDA backend's code, run on the CPU through cuda_emulation.h, against the CPU backend: every option,
// sizes off every tile, float64 and float32, forward, backward, sequence lengths, inference (and that it
// leaves the saved forward alone), an optimizer update and the error for a stale backward; then whole
// language-model training steps (model.h) on emulated CUDA cells against the same model on CPU cells.
// Prints one JSON line: {"cases": N, "checks": M, "failures": [...]}. Built and run by
// test/cuda-emulation.test.ts.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "wnlstm/cell.h"
#include "wnlstm/model.h"

namespace wnlstm {
// The emulation stands in for a device.
CudaStatus cuda_status() {
  CudaStatus s;
  s.compiled = s.available = true;
  s.reason = "CPU emulation of the CUDA kernels";
  s.devices = {"CPU emulation"};
  return s;
}
}  // namespace wnlstm

using namespace wnlstm;

namespace {

struct Case {
  int64_t I, H, T, B;
  bool lengths;
  CellConfig options;  // input_size and num_units are set from I and H
};

CellConfig with(void (*set)(CellConfig&)) {
  CellConfig c;
  set(c);
  return c;
}

const std::vector<Case> kCases = {
    {5, 7, 4, 3, false, with([](CellConfig&) {})},
    {5, 7, 4, 3, false, with([](CellConfig& c) { c.norm = false; })},
    {6, 9, 5, 4, true, with([](CellConfig& c) { c.use_peepholes = true, c.has_cell_clip = true, c.cell_clip = 0.4; })},
    {4, 10, 6, 5, true, with([](CellConfig& c) {
       c.num_proj = 3, c.has_proj_clip = true, c.proj_clip = 0.2, c.use_peepholes = true;
     })},
    {4, 10, 3, 2, false, with([](CellConfig& c) { c.num_proj = 6, c.norm = false, c.forget_bias = 0.3; })},
    {3, 5, 3, 2, false, with([](CellConfig& c) { c.activation = Activation::Relu; })},
    {3, 5, 3, 2, false, with([](CellConfig& c) { c.activation = Activation::Sigmoid; })},
    {3, 5, 3, 2, false, with([](CellConfig& c) { c.activation = Activation::Softsign, c.use_peepholes = true; })},
    {3, 5, 3, 2, false, with([](CellConfig& c) { c.activation = Activation::Linear, c.has_cell_clip = true, c.cell_clip = 1; })},
    // Sizes off every tile: 1, primes, past one 64-wide GEMM tile and one 32-unit step tile, K > 16.
    {1, 1, 1, 1, false, with([](CellConfig&) {})},
    {37, 33, 7, 17, true, with([](CellConfig& c) { c.use_peepholes = true; })},
    {130, 67, 3, 70, false, with([](CellConfig& c) { c.num_proj = 65; })},
    {300, 257, 2, 9, false, with([](CellConfig&) {})},
};

int checks = 0;
std::vector<std::string> failures;

template <typename T>
void compare(const std::string& what, const std::vector<T>& actual, const std::vector<T>& expected, double rtol,
             double atol) {
  ++checks;
  double worst = 0;
  size_t at = 0;
  bool bad = actual.size() != expected.size();
  for (size_t i = 0; !bad && i < actual.size(); ++i) {
    const double a = double(actual[i]), e = double(expected[i]);
    if (!std::isfinite(a) || !std::isfinite(e)) {
      bad = true, at = i;
      break;
    }
    const double excess = std::fabs(a - e) - (atol + rtol * std::fabs(e));
    if (excess > worst) worst = excess, at = i;
  }
  if (bad || worst > 0) {
    char line[400];
    std::snprintf(line, sizeof line, "%s: element %zu: %.17g vs %.17g (rtol %g, atol %g)", what.c_str(), at,
                  at < actual.size() ? double(actual[at]) : NAN, at < expected.size() ? double(expected[at]) : NAN,
                  rtol, atol);
    failures.push_back(line);
  }
}

template <typename T>
std::vector<T> uniform(std::mt19937_64& rng, size_t n, double scale) {
  std::uniform_real_distribution<double> d(-scale, scale);
  std::vector<T> v(n);
  for (T& x : v) x = T(d(rng));
  return v;
}

template <typename T>
void run(const Case& c, const char* dtype, double rtol_out, double atol_out, double rtol_grad, double atol_grad) {
  CellConfig cfg = c.options;
  cfg.input_size = c.I, cfg.num_units = c.H;
  const int64_t I = c.I, H = c.H, T_ = c.T, B = c.B, P = cfg.output_size(), n = param_count(cfg);
  const std::string name = std::string(dtype) + " I=" + std::to_string(I) + " H=" + std::to_string(H) +
                           " T=" + std::to_string(T_) + " B=" + std::to_string(B) + " proj=" +
                           std::to_string(cfg.num_proj) + " norm=" + std::to_string(cfg.norm) + " act=" +
                           std::to_string(int(cfg.activation)) + (c.lengths ? " lengths" : "") + ": ";
  auto cpu = make_cpu_cell<T>(cfg);
  auto gpu = make_cuda_cell<T>(cfg);
  std::mt19937_64 rng(uint64_t(I * 1000003 + H * 1009 + T_ * 31 + B));
  const std::vector<T> params = uniform<T>(rng, size_t(n), 0.5);
  cpu->set_params(params.data(), 0, n);
  gpu->set_params(params.data(), 0, n);
  const auto x = uniform<T>(rng, size_t(T_ * B * I), 1), c0 = uniform<T>(rng, size_t(B * H), 0.5),
             h0 = uniform<T>(rng, size_t(B * P), 0.5), dy = uniform<T>(rng, size_t(T_ * B * P), 1),
             dc = uniform<T>(rng, size_t(B * H), 0.5), dh = uniform<T>(rng, size_t(B * P), 0.5);
  std::vector<int32_t> lengths(B);
  for (int64_t b = 0; b < B; ++b) lengths[b] = int32_t((b * 3) % (T_ + 1));
  const int32_t* lens = c.lengths ? lengths.data() : nullptr;

  struct Run {
    std::vector<T> y, c, h, grads, dx, dc0, dh0;
  };
  auto forward = [&](Cell<T>& cell, Run& r, bool training) {
    r.y.assign(T_ * B * P, T(0)), r.c.assign(B * H, T(0)), r.h.assign(B * P, T(0));
    cell.forward(T_, B, x.data(), c0.data(), h0.data(), lens, r.y.data(), r.c.data(), r.h.data(), training);
  };
  auto backward = [&](Cell<T>& cell, Run& r) {
    r.grads.assign(n, T(0)), r.dx.assign(T_ * B * I, T(0)), r.dc0.assign(B * H, T(0)), r.dh0.assign(B * P, T(0));
    cell.backward(dy.data(), dc.data(), dh.data(), r.grads.data(), r.dx.data(), r.dc0.data(), r.dh0.data());
  };
  Run a, b;
  forward(*cpu, a, true);
  forward(*gpu, b, true);
  compare(name + "outputs", b.y, a.y, rtol_out, atol_out);
  compare(name + "final c", b.c, a.c, rtol_out, atol_out);
  compare(name + "final h", b.h, a.h, rtol_out, atol_out);
  backward(*cpu, a);
  backward(*gpu, b);
  for (const ParamInfo& p : param_layout(cfg)) {
    const std::vector<T> ga(a.grads.begin() + p.offset, a.grads.begin() + p.offset + p.size()),
        gb(b.grads.begin() + p.offset, b.grads.begin() + p.offset + p.size());
    compare(name + "d " + p.name, gb, ga, rtol_grad, atol_grad);
  }
  compare(name + "d inputs", b.dx, a.dx, rtol_grad, atol_grad);
  compare(name + "d initial c", b.dc0, a.dc0, rtol_grad, atol_grad);
  compare(name + "d initial h", b.dh0, a.dh0, rtol_grad, atol_grad);

  // Inference gives the training outputs exactly, and leaves the saved forward alone.
  Run inference, again;
  forward(*gpu, inference, false);
  compare(name + "inference outputs = training outputs", inference.y, b.y, 0, 0);
  backward(*gpu, again);
  compare(name + "backward after an inference forward", again.grads, b.grads, 0, 0);

  // One SGD step with momentum on each backend from the same gradients: the same parameters.
  OptimizerStep step;
  step.lr = 0.1, step.momentum = 0.9;
  std::vector<T> m1(n, T(0)), m2(n, T(0)), p1(n), p2(n);
  cpu->apply_update(step, b.grads.data(), m1.data(), nullptr);
  gpu->apply_update(step, b.grads.data(), m2.data(), nullptr);
  cpu->get_params(p1.data());
  gpu->get_params(p2.data());
  compare(name + "parameters after an update", p2, p1, 0, 0);
  Run after_cpu, after_gpu;
  forward(*cpu, after_cpu, false);
  forward(*gpu, after_gpu, false);
  compare(name + "outputs after the update", after_gpu.y, after_cpu.y, rtol_out, atol_out);

  ++checks;
  try {  // the update invalidated the saved forward
    backward(*gpu, again);
    failures.push_back(name + "backward after an update did not throw");
  } catch (const Error& e) {
    if (e.code != "ERR_WNLSTM_NO_FORWARD") failures.push_back(name + "stale backward threw " + e.code);
  }
}

// 20 training steps of a 2-layer language model (dropout on, RMSProp with clipping) whose cells run on
// the emulated CUDA backend, against the same model on CPU cells: losses, the final state and every
// parameter. The model's arena holds the weights of both (bind_params), the optimizer updates it in place
// and the cells pick the change up (params_changed: a re-upload on CUDA).
template <typename T>
void run_model(const char* dtype, double rtol_loss, double rtol_params, double atol_params) {
  const LanguageModelConfig config{11, 6, 9, 2, 0.2};
  const std::string name = std::string(dtype) + " language model: ";
  auto make = [&](bool cuda) {
    std::vector<std::shared_ptr<Cell<T>>> cells;
    for (int64_t l = 0; l < config.layers; ++l) {
      CellConfig c;
      c.input_size = l == 0 ? config.embedding_size : config.hidden_size, c.num_units = config.hidden_size;
      cells.push_back(cuda ? std::shared_ptr<Cell<T>>(make_cuda_cell<T>(c)) : std::shared_ptr<Cell<T>>(make_cpu_cell<T>(c)));
    }
    auto model = std::make_unique<LanguageModel<T>>(config, cells);
    std::mt19937_64 rng(7);
    const std::vector<T> values = uniform<T>(rng, model->arena().params.size(), 0.3);
    model->arena().params.assign(values.begin(), values.end());
    model->params_changed();
    model->model_rng = {1, 2, 3, 4}, model->stack_rng = {5, 6, 7, 8};
    return model;
  };
  auto cpu = make(false), gpu = make(true);
  const int64_t T_ = 5, B = 3, N = T_ * B, per = 2 * config.layers * B * config.hidden_size;
  std::vector<T> state_cpu(per, T(0)), state_gpu(per, T(0)), next_cpu(per), next_gpu(per);
  std::vector<int32_t> inputs(N), targets(N);
  std::vector<double> losses_cpu, losses_gpu;
  OptimizerStep step;
  step.kind = OptimizerKind::RmsProp, step.lr = 0.01, step.beta1 = 0.95, step.eps = 1e-6;
  for (int k = 0; k < 20; ++k) {
    for (int64_t i = 0; i < N; ++i) inputs[i] = int32_t((i * 7 + k * 3) % 11), targets[i] = int32_t((i * 5 + k + 1) % 11);
    for (auto* m : {cpu.get(), gpu.get()}) std::fill(m->arena().grads.begin(), m->arena().grads.end(), T(0));
    losses_cpu.push_back(cpu->step(T_, B, inputs.data(), targets.data(), state_cpu.data(), next_cpu.data(), true));
    losses_gpu.push_back(gpu->step(T_, B, inputs.data(), targets.data(), state_gpu.data(), next_gpu.data(), true));
    state_cpu.swap(next_cpu), state_gpu.swap(next_gpu);
    const double norm = std::sqrt(cpu->arena().grad_sum_squares());
    step.t = k + 1, step.grad_scale = norm > 1 ? 1 / norm : 1;  // clip at 1, the CPU model's norm for both
    cpu->update(step);
    gpu->update(step);
  }
  compare(name + "20 training losses", losses_gpu, losses_cpu, rtol_loss, 0);
  compare(name + "the final state", state_gpu, state_cpu, rtol_params, atol_params);
  compare(name + "every parameter after 20 updates", gpu->arena().params, cpu->arena().params, rtol_params, atol_params);
  std::vector<T> eval_cpu(per), eval_gpu(per);
  const double l1 = cpu->step(T_, B, inputs.data(), targets.data(), nullptr, eval_cpu.data(), false);
  const double l2 = gpu->step(T_, B, inputs.data(), targets.data(), nullptr, eval_gpu.data(), false);
  compare(name + "an evaluation step", std::vector<double>{l2}, std::vector<double>{l1}, rtol_loss, 0);
}

}  // namespace

int main() {
  ++checks;  // a device index the machine does not have
  try {
    make_cuda_cell<float>(with([](CellConfig& c) { c.input_size = 2, c.num_units = 3; }), 1);
    failures.push_back("make_cuda_cell on device 1 of 1 did not throw");
  } catch (const Error& e) {
    if (e.code != "ERR_WNLSTM_CONFIG") failures.push_back("make_cuda_cell on device 1 of 1 threw " + e.code);
  }
  // Sums in different orders (float64), the CPU's approximate activations (float32), over 20 updates.
  run_model<double>("float64", 1e-9, 1e-7, 1e-9);
  run_model<float>("float32", 1e-4, 1e-2, 1e-3);
  for (const Case& c : kCases) {
    // float64: the backends sum in different orders; float32: the CPU's activations are approximations
    // within ~4e-7 and the sums run in different orders over up to T*B rows.
    run<double>(c, "float64", 1e-9, 1e-11, 1e-9, 1e-11);
    run<float>(c, "float32", 1e-4, 2e-6, 1e-3, 1e-4);
  }
  std::printf("{\"cases\": %zu, \"checks\": %d, \"failures\": [", kCases.size() * 2, checks);
  for (size_t i = 0; i < failures.size(); ++i) {
    std::string escaped;
    for (char ch : failures[i]) escaped += (ch == '"' || ch == '\\') ? std::string("\\") + ch : std::string(1, ch);
    std::printf("%s\"%s\"", i ? ", " : "", escaped.c_str());
  }
  std::printf("]}\n");
  return 0;
}
