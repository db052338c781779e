// Scalar activations for the fused pointwise loops. float uses branch-free approximations (within a
// few ulp) that the compiler vectorises: libm's exp/tanh would cost more than the recurrent GEMM.
// double uses libm: it is the reference path that the finite-difference tests check.
// Internal linkage on purpose: each kernels_<isa>.cc gets its own copy built with its ISA flags.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "wnlstm/cell.h"

namespace wnlstm::cpu {
namespace {

// Cephes-style expf: range reduction by ln 2, degree-6 polynomial, exponent set by bit shifting.
inline float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (int32_t(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

inline float tanh_approx(float x) {
  float ax = x < 0 ? -x : x;
  float e = exp_approx(-2.0f * ax);
  float t = (1.0f - e) / (1.0f + e);
  // Near 0, 1 - e cancels: use the Taylor series (exact to float precision below 0.25).
  float x2 = x * x;
  float series = x * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315 + x2 * (62.0f / 2835 +
                                                                                             x2 * (-1382.0f / 155925))))));
  float far = x < 0 ? -t : t;
  return ax < 0.25f ? series : far;
}
inline float tanh_(float x) { return tanh_approx(x); }
inline double tanh_(double x) { return std::tanh(x); }

template <Activation A, typename T>
inline T activate(T x) {
  if constexpr (A == Activation::Tanh) return tanh_(x);
  if constexpr (A == Activation::Sigmoid) return sigmoid(x);
  if constexpr (A == Activation::Relu) return x > T(0) ? x : T(0);
  if constexpr (A == Activation::Softsign) return x / (T(1) + (x < 0 ? -x : x));
  if constexpr (A == Activation::Linear) return x;
}

// The derivative, written in terms of the activation's output y = act(x).
template <Activation A, typename T>
inline T activate_grad(T y) {
  if constexpr (A == Activation::Tanh) return T(1) - y * y;
  if constexpr (A == Activation::Sigmoid) return y * (T(1) - y);
  if constexpr (A == Activation::Relu) return y > T(0) ? T(1) : T(0);
  if constexpr (A == Activation::Softsign) {
    T m = T(1) - (y < 0 ? -y : y);
    return m * m;
  }
  if constexpr (A == Activation::Linear) return T(1);
}

}  // namespace
}  // namespace wnlstm::cpu
