// The CUDA backend's code, run on the CPU through cuda_emulation.h, against the CPU backend: the cases of
// test/cuda-cases.json (every option, sizes off every tile; read from stdin) in float64, float32 and TF32,
// forward, backward, sequence lengths, inference (and that it leaves the saved forward alone), an optimizer
// update and the error for a stale backward; every op of the CUDA backend; whole language-model training
// steps on the emulated device against the CPU; and the report of a kernel fault. Prints one JSON line:
// {"cases": N, "checks": M, "failures": [...]}. Built and run by test/cuda-emulation.test.ts.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "device.h"
#include "wnlstm/backend.h"
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

// The cases of test/cuda-cases.json (which the GPU checks read too), one per line on stdin as the tap test
// writes them: I H T B lengths norm usePeepholes cellClip numProj projClip forgetBias activation, with
// "-" for an absent clip.
std::vector<Case> read_cases() {
  std::vector<Case> cases;
  char line[512];
  while (std::fgets(line, sizeof line, stdin)) {
    Case c{};
    int lengths = 0, norm = 1, peepholes = 0;
    long long I, H, T, B, proj;
    char cell_clip[32], proj_clip[32], activation[32];
    double forget_bias = 1;
    if (std::sscanf(line, "%lld %lld %lld %lld %d %d %d %31s %lld %31s %lf %31s", &I, &H, &T, &B, &lengths, &norm,
                    &peepholes, cell_clip, &proj, proj_clip, &forget_bias, activation) != 12)
      continue;
    c.I = I, c.H = H, c.T = T, c.B = B, c.lengths = lengths != 0;
    c.options.norm = norm != 0, c.options.use_peepholes = peepholes != 0, c.options.num_proj = proj;
    c.options.forget_bias = forget_bias;
    if (std::string(cell_clip) != "-") c.options.has_cell_clip = true, c.options.cell_clip = std::atof(cell_clip);
    if (std::string(proj_clip) != "-") c.options.has_proj_clip = true, c.options.proj_clip = std::atof(proj_clip);
    const std::string act = activation;
    c.options.activation = act == "relu" ? Activation::Relu : act == "sigmoid" ? Activation::Sigmoid
                           : act == "softsign" ? Activation::Softsign : act == "linear" ? Activation::Linear
                                                                                        : Activation::Tanh;
    cases.push_back(c);
  }
  return cases;
}

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

// tf32: the CUDA cell multiplies on (emulated) TF32 tensor cores, against the CPU's fp32.
template <typename T>
void run(const Case& c, const char* dtype, double rtol_out, double atol_out, double rtol_grad, double atol_grad,
         bool tf32 = false) {
  CellConfig cfg = c.options;
  cfg.input_size = c.I, cfg.num_units = c.H;
  const int64_t I = c.I, H = c.H, T_ = c.T, B = c.B, P = cfg.output_size(), n = param_count(cfg);
  const std::string name = std::string(dtype) + " I=" + std::to_string(I) + " H=" + std::to_string(H) +
                           " T=" + std::to_string(T_) + " B=" + std::to_string(B) + " proj=" +
                           std::to_string(cfg.num_proj) + " norm=" + std::to_string(cfg.norm) + " act=" +
                           std::to_string(int(cfg.activation)) + (c.lengths ? " lengths" : "") + ": ";
  auto cpu = make_cpu_cell<T>(cfg);
  CellConfig gpu_cfg = cfg;
  gpu_cfg.tf32 = tf32;
  auto gpu = make_cuda_cell<T>(gpu_cfg);
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

// 20 training steps of a 2-layer sequence model (dropout on, RMSProp with clipping) on the emulated CUDA
// backend (arena, activations and every op on the device), against the same model on the CPU: losses, the
// final state, the head's outputs and every parameter. The cells read their weights from the arena
// (bind_params) and rebuild their scales when the optimizer has updated it (params_changed). Kinds: a
// language model (ids, a per-step softmax), a sequence classifier (features, sequence lengths, the last
// state's softmax), a forecaster (features, lengths, per-step squared error), and bidirectional forms of
// the classifier and a tagger (features, lengths, a per-step softmax); and, without dropout, a language
// model and a bidirectional tagger of ids (lengths) whose first layer projects the embedding's table.
template <typename T>
void run_model(const char* dtype, const char* kind, double rtol_loss, double rtol_params, double atol_params) {
  SequenceModelConfig config;
  const std::string k = kind;
  const bool lm = k.rfind("language model", 0) == 0, table = k.find("projected table") != std::string::npos;
  config.vocab_size = lm || k.find("of ids") != std::string::npos ? 11 : 0;
  config.input_size = 6, config.hidden_size = 9, config.layers = 2, config.dropout = table ? 0 : 0.2;
  if (table) config.embedding_projection = EmbeddingProjection::Table;
  config.output_size = k == "forecaster" ? 2 : lm ? 11 : 3;
  config.per_step = k != "classifier" && k != "bidirectional classifier";
  config.bidirectional = k.rfind("bidirectional", 0) == 0;
  config.loss = k == "forecaster" ? Loss::SquaredError : Loss::CrossEntropy;
  const std::string name = std::string(dtype) + " " + kind + ": ";
  auto make = [&](bool cuda) {
    std::vector<std::shared_ptr<Cell<T>>> cells;
    const int64_t D = config.directions();
    for (int64_t k = 0; k < config.layers * D; ++k) {
      CellConfig c;
      c.input_size = k < D ? config.input_size : config.hidden_size * D, c.num_units = config.hidden_size;
      cells.push_back(cuda ? std::shared_ptr<Cell<T>>(make_cuda_cell<T>(c)) : std::shared_ptr<Cell<T>>(make_cpu_cell<T>(c)));
    }
    auto model = std::make_unique<SequenceModel<T>>(config, cells);
    std::mt19937_64 rng(7);
    const std::vector<T> values = uniform<T>(rng, size_t(model->arena().size()), 0.3);
    model->arena().write(Arena<T>::Part::Params, 0, model->arena().size(), values.data());
    model->params_changed();
    model->model_rng = {1, 2, 3, 4}, model->stack_rng = {5, 6, 7, 8};
    return model;
  };
  auto cpu = make(false), gpu = make(true);
  const int64_t T_ = 5, B = 3, N = T_ * B, per = 2 * config.layers * config.directions() * B * config.hidden_size;
  const int64_t rows = cpu->head_rows(T_, B), O = config.output_size;
  std::vector<T> state_cpu(per, T(0)), state_gpu(per, T(0)), next_cpu(per), next_gpu(per);
  std::vector<T> out_cpu(size_t(rows * O)), out_gpu(size_t(rows * O));
  std::vector<int32_t> ids(N), labels(static_cast<size_t>(rows)), lengths{5, 2, 4};
  std::vector<T> features, targets;
  std::mt19937_64 data(3);
  std::vector<double> losses_cpu, losses_gpu;
  OptimizerStep step;
  step.kind = OptimizerKind::RmsProp, step.lr = 0.01, step.beta1 = 0.95, step.eps = 1e-6;
  auto batch = [&](std::vector<T>& state, std::vector<T>& next, std::vector<T>& out, bool carried) {
    Batch<T> b;
    b.steps = T_, b.batch = B;
    if (config.vocab_size) b.ids = ids.data();
    else b.features = features.data();
    if (!lm) b.lengths = lengths.data();
    if (config.loss == Loss::CrossEntropy) b.labels = labels.data();
    else b.targets = targets.data();
    b.state_in = carried ? state.data() : nullptr, b.state_out = next.data(), b.outputs = out.data();
    return b;
  };
  for (int s = 0; s < 20; ++s) {
    for (int64_t i = 0; i < N; ++i) ids[i] = int32_t((i * 7 + s * 3) % 11);
    for (int64_t r = 0; r < rows; ++r) labels[r] = int32_t((r * 5 + s + 1) % O);
    labels[size_t(s % rows)] = -1;  // a row without loss
    features = uniform<T>(data, size_t(N * config.input_size), 1.0);
    targets = uniform<T>(data, size_t(rows * O), 1.0);
    for (auto* m : {cpu.get(), gpu.get()}) m->arena().zero(Arena<T>::Part::Grads, 0, m->arena().size());
    const bool carried = lm;  // the language model carries its state between windows
    losses_cpu.push_back(cpu->step(batch(state_cpu, next_cpu, out_cpu, carried), true));
    losses_gpu.push_back(gpu->step(batch(state_gpu, next_gpu, out_gpu, carried), true));
    state_cpu.swap(next_cpu), state_gpu.swap(next_gpu);
    const double norm = std::sqrt(cpu->arena().grad_sum_squares());
    step.t = s + 1, step.grad_scale = norm > 1 ? 1 / norm : 1;  // clip at 1, the CPU model's norm for both
    cpu->update(step);
    gpu->update(step);
  }
  compare(name + "20 training losses", losses_gpu, losses_cpu, rtol_loss, 0);
  compare(name + "the final state", state_gpu, state_cpu, rtol_params, atol_params);
  compare(name + "the head's outputs", out_gpu, out_cpu, rtol_params, atol_params);
  auto params = [](SequenceModel<T>& m) {
    std::vector<T> v(size_t(m.arena().size()));
    m.arena().read(Arena<T>::Part::Params, 0, m.arena().size(), v.data());
    return v;
  };
  compare(name + "every parameter after 20 updates", params(*gpu), params(*cpu), rtol_params, atol_params);
  const double l1 = cpu->step(batch(state_cpu, next_cpu, out_cpu, false), false);
  const double l2 = gpu->step(batch(state_gpu, next_gpu, out_gpu, false), false);
  compare(name + "an evaluation step", std::vector<double>{l2}, std::vector<double>{l1}, rtol_loss, 0);
  compare(name + "an evaluation step's outputs", out_gpu, out_cpu, rtol_params, atol_params);
}

// Every op of backend.h on the emulated CUDA backend against the CPU backend, on sizes off every block
// and tile: repeated ids, skipped targets, more classes than a block has threads, every optimizer.
template <typename T>
void run_ops(const char* dtype, double rtol) {
  const std::string name = std::string(dtype) + " backend ops: ";
  auto cpu = make_cpu_backend<T>();
  auto gpu = make_cuda_backend<T>(0);
  std::mt19937_64 rng(11);
  // A host vector on both backends; results come back as host vectors.
  struct Pair {
    Buffer<T> cpu, gpu;
  };
  auto both = [&](const std::vector<T>& v) {
    Pair p{Buffer<T>(cpu), Buffer<T>(gpu)};
    cpu->upload(p.cpu.resize(int64_t(v.size())), v.data(), v.size() * sizeof(T));
    gpu->upload(p.gpu.resize(int64_t(v.size())), v.data(), v.size() * sizeof(T));
    return p;
  };
  auto host = [](Backend<T>& b, const Buffer<T>& buf) {
    std::vector<T> v(size_t(buf.size()));
    b.download(v.data(), buf.data(), v.size() * sizeof(T));
    return v;
  };
  auto check = [&](const std::string& what, Pair& p, double tol) {
    compare(name + what, host(*gpu, p.gpu), host(*cpu, p.cpu), tol, tol);  // atol: sums that cancel
  };

  const int64_t V = 300, D = 37, N = 53;  // V: more classes than the 256 threads of a row's block
  std::vector<int32_t> ids(N), targets(N);
  for (int64_t n = 0; n < N; ++n) ids[n] = int32_t((n * n * 7) % 13), targets[n] = n % 9 == 4 ? -1 : int32_t((n * 31) % V);
  Pair table = both(uniform<T>(rng, size_t(V * D), 1)), rows = both(std::vector<T>(size_t(N * D)));
  cpu->embedding_forward(table.cpu.data(), D, ids.data(), N, rows.cpu.data());
  gpu->embedding_forward(table.gpu.data(), D, ids.data(), N, rows.gpu.data());
  check("embedding rows", rows, 0);
  Pair dy = both(uniform<T>(rng, size_t(N * D), 1));
  cpu->embedding_backward(dy.cpu.data(), D, ids.data(), N, table.cpu.data());
  gpu->embedding_backward(dy.gpu.data(), D, ids.data(), N, table.gpu.data());
  check("embedding gradient (repeated ids, added in order)", table, 0);

  const int64_t I = 70, O = 67;
  Pair x = both(uniform<T>(rng, size_t(N * I), 1)), W = both(uniform<T>(rng, size_t(I * O), 0.3)),
       b = both(uniform<T>(rng, size_t(O), 0.3)), y = both(std::vector<T>(size_t(N * O)));
  cpu->dense_forward(x.cpu.data(), W.cpu.data(), b.cpu.data(), N, I, O, y.cpu.data());
  gpu->dense_forward(x.gpu.data(), W.gpu.data(), b.gpu.data(), N, I, O, y.gpu.data());
  check("dense outputs", y, rtol);
  Pair dW = both(uniform<T>(rng, size_t(I * O), 0.1)), db = both(uniform<T>(rng, size_t(O), 0.1)),
       dx = both(std::vector<T>(size_t(N * I)));
  cpu->dense_backward(x.cpu.data(), W.cpu.data(), y.cpu.data(), N, I, O, dW.cpu.data(), db.cpu.data(), dx.cpu.data());
  gpu->dense_backward(x.gpu.data(), W.gpu.data(), y.gpu.data(), N, I, O, dW.gpu.data(), db.gpu.data(), dx.gpu.data());
  check("dense kernel gradient (accumulated)", dW, rtol);
  check("dense bias gradient (accumulated)", db, rtol);
  check("dense input gradient", dx, rtol);

  Pair logits = both(uniform<T>(rng, size_t(N * V), 4));
  const double l1 = cpu->softmax_cross_entropy(logits.cpu.data(), targets.data(), N, V, 0.5);
  const double l2 = gpu->softmax_cross_entropy(logits.gpu.data(), targets.data(), N, V, 0.5);
  compare(name + "softmax cross-entropy loss", std::vector<double>{l2}, std::vector<double>{l1}, rtol, 0);
  check("softmax cross-entropy gradient (skipped rows zero)", logits, rtol);

  {  // more values per row than a block has threads; one row skipped
    const int64_t R = 7, C = 300;
    Pair pred = both(uniform<T>(rng, size_t(R * C), 2)), target = both(uniform<T>(rng, size_t(R * C), 2));
    const std::vector<int32_t> keep{1, 1, 0, 1, 1, 1, 1};
    const double s1 = cpu->squared_error(pred.cpu.data(), target.cpu.data(), keep.data(), R, C, 0.25);
    const double s2 = gpu->squared_error(pred.gpu.data(), target.gpu.data(), keep.data(), R, C, 0.25);
    compare(name + "squared error", std::vector<double>{s2}, std::vector<double>{s1}, rtol, 0);
    check("squared error gradient (skipped row zero)", pred, rtol);
  }

  {  // a bidirectional layer's data movement: sequences reversed within their lengths, columns joined and split
    const int64_t steps = 6, Bs = 4, Ds = 37;
    const std::vector<int32_t> lengths{6, 2, 0, 5};
    Pair seq = both(uniform<T>(rng, size_t(steps * Bs * Ds), 1)), rev = both(std::vector<T>(size_t(steps * Bs * Ds)));
    for (const int32_t* lens : {lengths.data(), static_cast<const int32_t*>(nullptr)}) {
      cpu->reverse_sequences(seq.cpu.data(), lens, steps, Bs, Ds, rev.cpu.data());
      gpu->reverse_sequences(seq.gpu.data(), lens, steps, Bs, Ds, rev.gpu.data());
      check(lens ? "sequences reversed within their lengths" : "sequences reversed (all steps)", rev, 0);
    }
    const int64_t Na = 5, Da = 3, Db = 300;
    Pair a = both(uniform<T>(rng, size_t(Na * Da), 1)), b2 = both(uniform<T>(rng, size_t(Na * Db), 1)),
         joined = both(std::vector<T>(size_t(Na * (Da + Db))));
    cpu->concat_columns(a.cpu.data(), Da, b2.cpu.data(), Db, Na, joined.cpu.data());
    gpu->concat_columns(a.gpu.data(), Da, b2.gpu.data(), Db, Na, joined.gpu.data());
    check("columns joined", joined, 0);
    Pair a2 = both(std::vector<T>(size_t(Na * Da))), b3 = both(std::vector<T>(size_t(Na * Db)));
    cpu->split_columns(joined.cpu.data(), Da, Db, Na, a2.cpu.data(), b3.cpu.data());
    gpu->split_columns(joined.gpu.data(), Da, Db, Na, a2.gpu.data(), b3.gpu.data());
    check("columns split (left)", a2, 0);
    check("columns split (right)", b3, 0);
  }

  for (int64_t n : {0, 1, 4095, 4097, 20000}) {
    Pair a = both(uniform<T>(rng, size_t(n), 1));
    compare(name + "sum of squares of " + std::to_string(n), std::vector<double>{gpu->sum_squares(a.gpu.data(), n)},
            std::vector<double>{cpu->sum_squares(a.cpu.data(), n)}, rtol, 1e-30);
  }

  const int64_t M = 5000;  // several blocks of the grid-stride kernels
  Pair xs = both(uniform<T>(rng, size_t(M), 1)), mask = both(std::vector<T>(size_t(M)));
  Rng r1{9, 8, 7, 6}, r2 = r1;
  cpu->dropout(xs.cpu.data(), mask.cpu.data(), M, 0.3, r1);
  gpu->dropout(xs.gpu.data(), mask.gpu.data(), M, 0.3, r2);
  check("dropout mask (the same draws)", mask, 0);
  check("dropout outputs", xs, 0);
  compare(name + "generator state after dropout", std::vector<double>{double(r2.a), double(r2.b), double(r2.c), double(r2.d)},
          std::vector<double>{double(r1.a), double(r1.b), double(r1.c), double(r1.d)}, 0, 0);
  Pair other = both(uniform<T>(rng, size_t(M), 1));
  cpu->apply_mask(other.cpu.data(), mask.cpu.data(), M);
  gpu->apply_mask(other.gpu.data(), mask.gpu.data(), M);
  check("mask applied", other, 0);
  cpu->add(other.cpu.data(), xs.cpu.data(), M);
  gpu->add(other.gpu.data(), xs.gpu.data(), M);
  check("add", other, 0);

  struct Kind {
    const char* label;
    OptimizerKind kind;
    double momentum;
    bool nesterov;
  };
  for (const Kind& k : {Kind{"sgd", OptimizerKind::Sgd, 0, false}, Kind{"momentum", OptimizerKind::Sgd, 0.9, false},
                        Kind{"nesterov", OptimizerKind::Sgd, 0.9, true}, Kind{"adam", OptimizerKind::Adam, 0, false},
                        Kind{"adamw", OptimizerKind::AdamW, 0, false}, Kind{"rmsprop", OptimizerKind::RmsProp, 0, false},
                        Kind{"rmsprop with momentum", OptimizerKind::RmsProp, 0.5, false},
                        Kind{"adagrad", OptimizerKind::Adagrad, 0, false}}) {
    Pair p = both(uniform<T>(rng, size_t(M), 1)), g = both(uniform<T>(rng, size_t(M), 1)),
         s1 = both(std::vector<T>(size_t(M))), s2 = both(std::vector<T>(size_t(M)));
    OptimizerStep step;
    step.kind = k.kind, step.lr = 0.01, step.momentum = k.momentum, step.nesterov = k.nesterov;
    step.beta1 = k.kind == OptimizerKind::RmsProp ? 0.99 : 0.9, step.beta2 = 0.999, step.eps = 1e-8;
    step.weight_decay = 0.01, step.grad_scale = 0.7;
    for (int64_t t = 1; t <= 3; ++t) {
      step.t = t;
      cpu->optimizer_update(step, p.cpu.data(), g.cpu.data(), s1.cpu.data(), s2.cpu.data(), M);
      gpu->optimizer_update(step, p.gpu.data(), g.gpu.data(), s1.gpu.data(), s2.gpu.data(), M);
    }
    check(std::string(k.label) + ": parameters after 3 updates", p, rtol);
    check(std::string(k.label) + ": optimizer state 1", s1, rtol);
    check(std::string(k.label) + ": optimizer state 2", s2, rtol);
  }
}

}  // namespace

int main() {
  ++checks;  // a device index the machine does not have
  try {
    CellConfig small;
    small.input_size = 2, small.num_units = 3;
    make_cuda_cell<float>(small, 1);
    failures.push_back("make_cuda_cell on device 1 of 1 did not throw");
  } catch (const Error& e) {
    if (e.code != "ERR_WNLSTM_CONFIG") failures.push_back("make_cuda_cell on device 1 of 1 threw " + e.code);
  }
  run_ops<double>("float64", 1e-12);
  run_ops<float>("float32", 1e-5);
  // Sums in different orders (float64), the CPU's approximate activations (float32), over 20 updates.
  for (const char* kind : {"language model", "classifier", "forecaster", "bidirectional classifier", "bidirectional tagger",
                           "language model, projected table", "bidirectional tagger of ids, projected table"}) {
    run_model<double>("float64", kind, 1e-9, 1e-7, 1e-9);
    run_model<float>("float32", kind, 1e-4, 1e-2, 1e-3);
  }
  const std::vector<Case> cases = read_cases();
  for (const Case& c : cases) {
    // float64: the backends sum in different orders; float32: the CPU's activations are approximations
    // within ~4e-7 and the sums run in different orders over up to T*B rows.
    run<double>(c, "float64", 1e-9, 1e-11, 1e-9, 1e-11);
    run<float>(c, "float32", 1e-4, 2e-6, 1e-3, 1e-4);
  }
  // TF32: each product's inputs rounded to 10 bits of mantissa (a relative error up to 2^-11 each), summed
  // over up to I + H terms per step and compounded over the steps; gradients sum over up to T*B rows too.
  const double tf32_out = std::getenv("WNLSTM_TF32_RTOL") ? std::atof(std::getenv("WNLSTM_TF32_RTOL")) : 1e-2;
  for (const Case& c : cases) run<float>(c, "tf32", tf32_out, tf32_out / 10, 3 * tf32_out, 3 * tf32_out / 10, true);
  ++checks;  // TF32 is for float32 cells only
  try {
    CellConfig wide;
    wide.input_size = 2, wide.num_units = 3, wide.tf32 = true;
    make_cuda_cell<double>(wide);
    failures.push_back("a float64 cell with precision tf32 did not throw");
  } catch (const Error& e) {
    if (e.code != "ERR_WNLSTM_CONFIG") failures.push_back("a float64 cell with precision tf32 threw " + e.code);
  }
  // Last (it leaves the "context" marked unusable): a kernel fault is reported with what to do, and every
  // later call fails at once naming the first fault.
  checks += 2;
  for (const char* what : {"step forward kernel", "copy to the host"}) {
    try {
      cuda::check(what[0] == 's' ? cudaErrorIllegalAddress : cudaErrorLaunchFailure, what);
      failures.push_back(std::string("a kernel fault in ") + what + " did not throw");
    } catch (const Error& e) {
      const std::string m = e.what();
      if (e.code != "ERR_WNLSTM_CUDA" || m.find("restart the process") == std::string::npos ||
          m.find("step forward kernel: cudaErrorIllegalAddress") == std::string::npos)
        failures.push_back("a kernel fault in " + std::string(what) + " threw " + e.code + ": " + m);
    }
  }
  std::printf("{\"cases\": %zu, \"checks\": %d, \"failures\": [", cases.size() * 3, checks);
  for (size_t i = 0; i < failures.size(); ++i) {
    std::string escaped;
    for (char ch : failures[i]) escaped += (ch == '"' || ch == '\\') ? std::string("\\") + ch : std::string(1, ch);
    std::printf("%s\"%s\"", i ? ", " : "", escaped.c_str());
  }
  std::printf("]}\n");
  return 0;
}
