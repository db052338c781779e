// The training ops around the cells, over host buffers (same conventions as cell.h: row-major, element
// type T, "in" read only, "out" fully written unless the op says it accumulates). The model runtime
// (model.h) runs a training step with them; the N-API layer calls them for the JS layers.
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
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;  // beta1: alpha for RmsProp
  double momentum = 0;  // Sgd and RmsProp
  int64_t t = 1;        // step number, from 1
  bool nesterov = false;
  double grad_scale = 1;

  // Which state buffers this kind keeps (s1, s2).
  bool needs_s1() const { return kind != OptimizerKind::Sgd || momentum != 0; }
  bool needs_s2() const {
    return kind == OptimizerKind::Adam || kind == OptimizerKind::AdamW || (kind == OptimizerKind::RmsProp && momentum != 0);
  }
};

// params, grads, s1, s2: [n]; s1 and s2 are the optimizer's state (unused ones may be nullptr).
template <typename T>
void optimizer_update(const OptimizerStep& step, T* params, const T* grads, T* s1, T* s2, int64_t n);

// Sum of a[i]^2: blocks of 4096 summed in T, the blocks in double (the same on every call).
template <typename T>
double sum_squares(const T* a, int64_t n);

// Softmax cross-entropy over logits [N,V] with targets [N] (each in [0, V), or -1 to skip the row).
// Returns the summed loss (nats); overwrites logits with d(loss * grad_scale)/d logits.
template <typename T>
double softmax_cross_entropy(T* logits, const int32_t* targets, int64_t N, int64_t V, double grad_scale);

// Squared error: returns sum_i (pred[i] - target[i])^2 (in double); dpred [n] out, unless nullptr:
// d(sum * grad_scale)/d pred = 2 (pred - target) grad_scale.
template <typename T>
double squared_error(const T* pred, const T* target, int64_t n, double grad_scale, T* dpred);

// C[M,N] = (accumulate ? C : 0) + op(A) op(B), row-major, lda/ldb/ldc the row strides; all threads.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
          int64_t ldb, bool accumulate, T* C, int64_t ldc);

// Embedding: out [N,D] = rows ids[n] of table [V,D]. The ids must be in [0, V) (checked by the caller).
template <typename T>
void embedding_forward(const T* table, int64_t D, const int32_t* ids, int64_t N, T* out);
// dtable [V,D] accumulates: dtable[ids[n]] += dy[n], in order of n (repeated ids add up).
template <typename T>
void embedding_backward(const T* dy, int64_t D, const int32_t* ids, int64_t N, T* dtable);

// Dense: y [N,O] = x [N,I] W [I,O] + b [O].
template <typename T>
void dense_forward(const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O, T* y);
// dW [I,O] and db [O] accumulate; dx [N,I] out (nullptr: not wanted).
template <typename T>
void dense_backward(const T* x, const T* W, const T* dy, int64_t N, int64_t I, int64_t O, T* dW, T* db, T* dx);

// sfc32 seeded through splitmix32: the generator of lib/init.ts's Random, bit for bit, so that a seed gives
// the same dropout masks in JS and in native code. State: four uint32 words (checkpoints keep them).
struct Rng {
  uint32_t a = 0, b = 0, c = 0, d = 0;
  uint32_t next() {
    const uint32_t t = a + b + d;
    d += 1;
    a = b ^ (b >> 9);
    b = c + (c << 3);
    c = ((c << 21) | (c >> 11)) + t;
    return t;
  }
  // Uniform in [0, 1) with 53 bits, as Random.uniform().
  double uniform() {
    const double hi = next();
    return (hi + double(next() >> 11) / 2097152.0) / 4294967296.0;
  }
};

// Inverted dropout in place: x[i] *= mask[i], mask[i] = 1/(1-rate) with probability 1-rate, else 0, one
// rng.uniform() per element in order. mask [n] out (kept for the backward: dx *= mask).
template <typename T>
void dropout(T* x, T* mask, int64_t n, double rate, Rng& rng);
// x[i] *= mask[i].
template <typename T>
void apply_mask(T* x, const T* mask, int64_t n);

}  // namespace wnlstm
