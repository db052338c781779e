// The host ops of ops.h: one pass over each buffer, vectorised; the products on the CPU GEMM.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "activations.h"
#include "kernels.h"
#include "thread_pool.h"
#include "wnlstm/backend.h"
#include "wnlstm/cell.h"
#include "wnlstm/ops.h"

namespace wnlstm {
namespace {

template <typename T>
T exp_(T x) {
  if constexpr (sizeof(T) == 4) return cpu::exp_approx(x);
  else return std::exp(x);
}

}  // namespace

namespace {

template <typename T>
void update_range(const OptimizerStep& s, T* p, const T* grads, T* s1, T* s2, int64_t n) {
  const T lr = T(s.lr), wd = T(s.weight_decay), scale = T(s.grad_scale), eps = T(s.eps);
  switch (s.kind) {
    case OptimizerKind::Sgd: {
      const T m = T(s.momentum);
      for (int64_t i = 0; i < n; ++i) {
        T g = grads[i] * scale + wd * p[i];
        if (m != T(0)) {
          s1[i] = s.t == 1 ? g : m * s1[i] + g;
          g = s.nesterov ? g + m * s1[i] : s1[i];
        }
        p[i] -= lr * g;
      }
      break;
    }
    case OptimizerKind::Adam:
    case OptimizerKind::AdamW: {
      const bool decoupled = s.kind == OptimizerKind::AdamW;
      const T b1 = T(s.beta1), b2 = T(s.beta2);
      const T c1 = T(1 - std::pow(s.beta1, double(s.t))), c2 = T(std::sqrt(1 - std::pow(s.beta2, double(s.t))));
      const T step = lr / c1, decay = decoupled ? T(1) - lr * wd : T(1), l2 = decoupled ? T(0) : wd;
#pragma GCC ivdep
      for (int64_t i = 0; i < n; ++i) {
        const T g = grads[i] * scale + l2 * p[i];
        s1[i] = b1 * s1[i] + (T(1) - b1) * g;
        s2[i] = b2 * s2[i] + (T(1) - b2) * g * g;
        p[i] = p[i] * decay - step * s1[i] / (std::sqrt(s2[i]) / c2 + eps);
      }
      break;
    }
    case OptimizerKind::RmsProp: {
      const T alpha = T(s.beta1), m = T(s.momentum);
#pragma GCC ivdep
      for (int64_t i = 0; i < n; ++i) {
        const T g = grads[i] * scale + wd * p[i];
        s1[i] = alpha * s1[i] + (T(1) - alpha) * g * g;
        const T d = g / (std::sqrt(s1[i]) + eps);
        if (m != T(0)) {
          s2[i] = m * s2[i] + d;
          p[i] -= lr * s2[i];
        } else {
          p[i] -= lr * d;
        }
      }
      break;
    }
    case OptimizerKind::Adagrad: {
#pragma GCC ivdep
      for (int64_t i = 0; i < n; ++i) {
        const T g = grads[i] * scale + wd * p[i];
        s1[i] += g * g;
        p[i] -= lr * g / (std::sqrt(s1[i]) + eps);
      }
      break;
    }
  }
}

}  // namespace

// Elementwise: the ranges go to the pool's threads, with the same result as one pass.
template <typename T>
void optimizer_update(const OptimizerStep& s, T* p, const T* grads, T* s1, T* s2, int64_t n) {
  constexpr int64_t kRange = 1 << 15;
  const int tasks = int(std::min<int64_t>(cpu::num_threads(), (n + kRange - 1) / kRange));
  if (tasks <= 1) return update_range(s, p, grads, s1, s2, n);
  cpu::parallel_for(tasks, [&](int task) {
    const int64_t i0 = n * task / tasks, i1 = n * (task + 1) / tasks;
    update_range(s, p + i0, grads + i0, s1 ? s1 + i0 : nullptr, s2 ? s2 + i0 : nullptr, i1 - i0);
  });
}

template <typename T>
double sum_squares(const T* a, int64_t n) {
  constexpr int64_t kBlock = 4096;  // blocks in T (on the pool's threads), summed in double in order
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<T> sums(size_t(blocks), T(0));
  const int tasks = int(std::min<int64_t>(cpu::num_threads(), blocks / 8 + 1));
  cpu::parallel_for(tasks, [&](int task) {
    for (int64_t k = blocks * task / tasks; k < blocks * (task + 1) / tasks; ++k)
      for (int64_t i = k * kBlock; i < std::min(n, (k + 1) * kBlock); ++i) sums[k] += a[i] * a[i];
  });
  double total = 0;
  for (T block : sums) total += double(block);
  return total;
}

template <typename T>
double softmax_cross_entropy(T* logits, const int32_t* targets, int64_t N, int64_t V, double grad_scale) {
  std::vector<double> losses(N, 0.0);
  const T scale = T(grad_scale);
  cpu::parallel_for(int(std::min<int64_t>(N, cpu::num_threads())), [&](int task) {
    const int tasks = int(std::min<int64_t>(N, cpu::num_threads()));
    for (int64_t r = N * task / tasks; r < N * (task + 1) / tasks; ++r) {
      T* z = logits + r * V;
      if (targets[r] < 0) {
        std::fill(z, z + V, T(0));
        continue;
      }
      T max = z[0];
      for (int64_t v = 1; v < V; ++v) max = z[v] > max ? z[v] : max;
      const double target_logit = double(z[targets[r]]) - double(max);
      T sum = 0;
      for (int64_t v = 0; v < V; ++v) {
        z[v] = exp_(z[v] - max);
        sum += z[v];
      }
      losses[r] = std::log(double(sum)) - target_logit;
      const T inv = scale / sum;
      for (int64_t v = 0; v < V; ++v) z[v] *= inv;
      z[targets[r]] -= scale;
    }
  });
  double total = 0;
  for (double l : losses) total += l;
  return total;
}

template <typename T>
double squared_error(const T* pred, const T* target, int64_t n, double grad_scale, T* dpred) {
  double sum = 0;
  const T scale = T(2 * grad_scale);
  for (int64_t i = 0; i < n; ++i) {
    const T d = pred[i] - target[i];
    sum += double(d) * double(d);
    if (dpred) dpred[i] = scale * d;
  }
  return sum;
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
          int64_t ldb, bool accumulate, T* C, int64_t ldc) {
  cpu::gemm<T>(trans_a, trans_b, M, N, K, A, lda, B, ldb, accumulate, C, ldc);
}

// Splits columns [0, D) of a row-wise op over the pool when the op is large: every element is then
// still added in the order of the rows, so the result does not depend on the number of threads.
template <typename F>
void by_columns(int64_t N, int64_t D, F&& body) {
  const int tasks = N * D < (1 << 16) ? 1 : int(std::min<int64_t>(cpu::num_threads(), D / 16));
  if (tasks <= 1) return body(int64_t(0), D);
  cpu::parallel_for(tasks, [&](int task) { body(D * task / tasks / 16 * 16, task + 1 == tasks ? D : D * (task + 1) / tasks / 16 * 16); });
}

template <typename T>
void embedding_forward(const T* table, int64_t D, const int32_t* ids, int64_t N, T* out) {
  by_columns(N, D, [&](int64_t k0, int64_t k1) {
    for (int64_t n = 0; n < N; ++n) std::copy(table + int64_t(ids[n]) * D + k0, table + int64_t(ids[n]) * D + k1, out + n * D + k0);
  });
}

template <typename T>
void embedding_backward(const T* dy, int64_t D, const int32_t* ids, int64_t N, T* dtable) {
  by_columns(N, D, [&](int64_t k0, int64_t k1) {
    for (int64_t n = 0; n < N; ++n) {
      T* row = dtable + int64_t(ids[n]) * D;
      for (int64_t k = k0; k < k1; ++k) row[k] += dy[n * D + k];
    }
  });
}

template <typename T>
void dense_forward(const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O, T* y) {
  for (int64_t n = 0; n < N; ++n) std::copy(b, b + O, y + n * O);
  cpu::gemm<T>(false, false, N, O, I, x, I, W, O, true, y, O);
}

template <typename T>
void dense_backward(const T* x, const T* W, const T* dy, int64_t N, int64_t I, int64_t O, T* dW, T* db, T* dx) {
  cpu::gemm<T>(true, false, I, O, N, x, I, dy, O, true, dW, O);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < O; ++j) db[j] += dy[n * O + j];
  if (dx) cpu::gemm<T>(false, true, N, I, O, dy, O, W, O, false, dx, I);
}

template <typename T>
void dropout(T* x, T* mask, int64_t n, double rate, Rng& rng) {
  const double keep = 1 - rate;
  const T scale = T(1 / keep);
  for (int64_t i = 0; i < n; ++i) {
    mask[i] = rng.uniform() < keep ? scale : T(0);
    x[i] *= mask[i];
  }
}

template <typename T>
void apply_mask(T* x, const T* mask, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= mask[i];
}

#define WNLSTM_HOST_OPS(T)                                                                                      \
  template void optimizer_update<T>(const OptimizerStep&, T*, const T*, T*, T*, int64_t);                      \
  template double sum_squares<T>(const T*, int64_t);                                                            \
  template double softmax_cross_entropy<T>(T*, const int32_t*, int64_t, int64_t, double);                       \
  template double squared_error<T>(const T*, const T*, int64_t, double, T*);                                    \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, bool, T*,  \
                        int64_t);                                                                               \
  template void embedding_forward<T>(const T*, int64_t, const int32_t*, int64_t, T*);                           \
  template void embedding_backward<T>(const T*, int64_t, const int32_t*, int64_t, T*);                          \
  template void dense_forward<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, T*);                  \
  template void dense_backward<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, T*, T*, T*);         \
  template void dropout<T>(T*, T*, int64_t, double, Rng&);                                                      \
  template void apply_mask<T>(T*, const T*, int64_t);
WNLSTM_HOST_OPS(float)
WNLSTM_HOST_OPS(double)

namespace {

// The CPU backend's memory is the host's; its ops are the host ops above.
template <typename T>
class CpuBackend final : public Backend<T> {
 public:
  std::string device() const override { return "cpu"; }
  bool is_host() const override { return true; }
  void* allocate(size_t bytes) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64 * (bytes == 0));
    if (!p) throw Error("ERR_WNLSTM_OUT_OF_MEMORY", "could not allocate " + std::to_string(bytes >> 20) + " MiB");
    return p;
  }
  void release(void* p) noexcept override { std::free(p); }
  void upload(void* dst, const void* host, size_t bytes) override { std::memcpy(dst, host, bytes); }
  void download(void* host, const void* src, size_t bytes) override { std::memcpy(host, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void zero(void* dst, size_t bytes) override { std::memset(dst, 0, bytes); }
  void synchronize() override {}

  void optimizer_update(const OptimizerStep& step, T* p, const T* g, T* s1, T* s2, int64_t n) override {
    wnlstm::optimizer_update(step, p, g, s1, s2, n);
  }
  double sum_squares(const T* a, int64_t n) override { return wnlstm::sum_squares(a, n); }
  double softmax_cross_entropy(T* logits, const int32_t* targets, int64_t N, int64_t V, double scale) override {
    return wnlstm::softmax_cross_entropy(logits, targets, N, V, scale);
  }
  double squared_error(T* pred, const T* target, const int32_t* keep, int64_t N, int64_t O, double scale) override {
    double sum = 0;
    for (int64_t r = 0; r < N; ++r) {
      if (keep && !keep[r]) {
        std::fill(pred + r * O, pred + (r + 1) * O, T(0));
        continue;
      }
      sum += wnlstm::squared_error(pred + r * O, target + r * O, O, scale, pred + r * O);
    }
    return sum;
  }
  void embedding_forward(const T* table, int64_t D, const int32_t* ids, int64_t N, T* out) override {
    wnlstm::embedding_forward(table, D, ids, N, out);
  }
  void embedding_backward(const T* dy, int64_t D, const int32_t* ids, int64_t N, T* dtable) override {
    wnlstm::embedding_backward(dy, D, ids, N, dtable);
  }
  void dense_forward(const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O, T* y) override {
    wnlstm::dense_forward(x, W, b, N, I, O, y);
  }
  void dense_backward(const T* x, const T* W, const T* dy, int64_t N, int64_t I, int64_t O, T* dW, T* db,
                      T* dx) override {
    wnlstm::dense_backward(x, W, dy, N, I, O, dW, db, dx);
  }
  void dropout(T* x, T* mask, int64_t n, double rate, Rng& rng) override { wnlstm::dropout(x, mask, n, rate, rng); }
  void apply_mask(T* x, const T* mask, int64_t n) override { wnlstm::apply_mask(x, mask, n); }
  void add(T* y, const T* x, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  }
  void reverse_sequences(const T* x, const int32_t* lengths, int64_t steps, int64_t B, int64_t D, T* out) override {
    for (int64_t t = 0; t < steps; ++t)
      for (int64_t b = 0; b < B; ++b) {
        const int64_t len = lengths ? lengths[b] : steps;
        T* row = out + (t * B + b) * D;
        if (t < len) std::copy_n(x + ((len - 1 - t) * B + b) * D, D, row);
        else std::fill_n(row, D, T(0));
      }
  }
  void concat_columns(const T* a, int64_t Da, const T* b, int64_t Db, int64_t N, T* out) override {
    for (int64_t r = 0; r < N; ++r) {
      std::copy_n(a + r * Da, Da, out + r * (Da + Db));
      std::copy_n(b + r * Db, Db, out + r * (Da + Db) + Da);
    }
  }
  void split_columns(const T* in, int64_t Da, int64_t Db, int64_t N, T* a, T* b) override {
    for (int64_t r = 0; r < N; ++r) {
      std::copy_n(in + r * (Da + Db), Da, a + r * Da);
      std::copy_n(in + r * (Da + Db) + Da, Db, b + r * Db);
    }
  }
};

}  // namespace

template <typename T>
std::shared_ptr<Backend<T>> make_cpu_backend() {
  return std::make_shared<CpuBackend<T>>();
}
template std::shared_ptr<Backend<float>> make_cpu_backend<float>();
template std::shared_ptr<Backend<double>> make_cpu_backend<double>();

}  // namespace wnlstm
