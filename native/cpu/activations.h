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

// Odd rational minimax fit p(x)/q(x) of degrees 13/6 (the coefficients of Eigen's and MLAS's float tanh,
// so TF's own CPU tanh), clamped where float tanh rounds to +-1: no exp, one division, and full relative
// accuracy near 0.
inline float tanh_approx(float x) {
  x = x < -7.90531110763549805f ? -7.90531110763549805f : (x > 7.90531110763549805f ? 7.90531110763549805f : x);
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return x * p / q;
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
