// Training ops over flat host buffers (same conventions as cell.h): the fused optimizer update that
// the cells and the TypeScript layers share, and the loss.
#pragma once

#include <cstdint>

namespace wnlstm {

enum class OptimizerKind { Sgd = 0, Adam = 1, AdamW = 2, RmsProp = 3, Adagrad = 4 };

// One update, PyTorch's formulas. grad_scale multiplies every gradient first (global-norm clipping).
//   Sgd:     g += wd p; with momentum m: s1 = m s1 + g (s1 = g at t = 1); g = nesterov ? g + m s1 : s1; p -= lr g
//   Adam:    g += wd p; s1 = b1 s1 + (1-b1) g; s2 = b2 s2 + (1-b2) g^2; p -= lr s1/(1-b1^t) / (sqrt(s2/(1-b2^t)) + eps)
//   AdamW:   p *= 1 - lr wd; then Adam without the wd term
//   RmsProp: g += wd p; s1 = alpha s1 + (1-alpha) g^2; with momentum m: s2 = m s2 + g/(sqrt(s1)+eps), p -= lr s2;
//            else p -= lr g/(sqrt(s1)+eps)
//   Adagrad: g += wd p; s1 += g^2; p -= lr g/(sqrt(s1)+eps)
struct OptimizerStep {
  OptimizerKind kind = OptimizerKind::Sgd;
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;  // beta1: momentum (Sgd, RmsProp) or alpha (RmsProp)
  double momentum = 0;  // Sgd and RmsProp
  int64_t t = 1;        // step number, from 1
  bool nesterov = false;
  double grad_scale = 1;
};

// params, grads, s1, s2: [n]; s1 and s2 are the optimizer's state (unused ones may be nullptr).
template <typename T>
void optimizer_update(const OptimizerStep& step, T* params, const T* grads, T* s1, T* s2, int64_t n);

template <typename T>
double sum_squares(const T* a, int64_t n);

// Softmax cross-entropy over logits [N,V] with targets [N] (each in [0, V), or -1 to skip the row).
// Returns the summed loss (nats); overwrites logits with d(loss * grad_scale)/d logits.
template <typename T>
double softmax_cross_entropy(T* logits, const int32_t* targets, int64_t N, int64_t V, double grad_scale);

}  // namespace wnlstm
