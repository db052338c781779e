// The CPU side of training.h: one pass over each buffer, vectorised.
#include <algorithm>
#include <cmath>
#include <vector>

#include "activations.h"
#include "thread_pool.h"
#include "wnlstm/training.h"

namespace wnlstm {
namespace {

template <typename T>
T exp_(T x) {
  if constexpr (sizeof(T) == 4) return cpu::exp_approx(x);
  else return std::exp(x);
}

}  // namespace

template <typename T>
void optimizer_update(const OptimizerStep& s, T* p, const T* grads, T* s1, T* s2, int64_t n) {
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

template <typename T>
double sum_squares(const T* a, int64_t n) {
  double total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += 4096) {  // blocks in T, summed in double
    T block = 0;
    for (int64_t i = i0; i < std::min(n, i0 + 4096); ++i) block += a[i] * a[i];
    total += double(block);
  }
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

template void optimizer_update<float>(const OptimizerStep&, float*, const float*, float*, float*, int64_t);
template void optimizer_update<double>(const OptimizerStep&, double*, const double*, double*, double*, int64_t);
template double sum_squares<float>(const float*, int64_t);
template double sum_squares<double>(const double*, int64_t);
template double softmax_cross_entropy<float>(float*, const int32_t*, int64_t, int64_t, double);
template double softmax_cross_entropy<double>(double*, const int32_t*, int64_t, int64_t, double);

}  // namespace wnlstm
