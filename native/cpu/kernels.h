// The CPU backend's hot loops, compiled once per ISA (kernels_<isa>.cc) and chosen at run time, so one
// binary runs on any x86-64 and uses AVX2 or AVX-512 where the CPU has them.
//
// gemm: C[M,N] = (accumulate ? C : 0) + op(A)[M,K] * op(B)[K,N], row-major; op(A) is A ([M,K], leading
// dimension lda) or, with trans_a, the transpose of A ([K,M]); same for B. Packed and blocked (GotoBLAS
// layout); gemm() splits it over the thread pool.
// Pointwise: one LSTM step's gates, cell and output for rows [b0, b1) of the batch (TF gate order i,j,f,o).
#pragma once

#include <cstdint>
#include <vector>

#include "wnlstm/cell.h"

namespace wnlstm::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, bool accumulate, T* C, int64_t ldc);

// Sizes and options of a step's pointwise work.
template <typename T>
struct Pointwise {
  int64_t H;
  const T *wi, *wf, *wo;     // [H] peepholes (zeros when absent)
  const T* bias;             // [G]
  T forget_bias, cell_clip;  // cell_clip = +inf when absent
};

// For rows [b0, b1) and units [u0, u1): z [B,G] in: x.Wx + h.Wh, out: gate activations (i, j, f, o);
// c_prev [B,H] in; c_raw [B,H] out: c before the clip; c_next [B,H] out; hh [B,H] out: sigma(o) * act(c_next).
// Pre-activations are z + bias (+ forget bias, peepholes).
template <typename T>
using PointwiseForward = void (*)(const Pointwise<T>& p, int64_t b0, int64_t b1, int64_t u0, int64_t u1, T* z,
                                  const T* c_prev, T* c_raw, T* c_next, T* hh);
// gates [B,G], c_prev, c_raw, c_next [B,H] in (saved by the forward); dhh [B,H] in: dL/d hh;
// dc [B,H] in: dL/d c_next from later steps; dz [B,G] out: dL/d pre-activations; dc_prev [B,H] out.
template <typename T>
using PointwiseBackward = void (*)(const Pointwise<T>& p, int64_t b0, int64_t b1, const T* gates,
                                   const T* c_prev, const T* c_raw, const T* c_next, const T* dhh,
                                   const T* dc, T* dz, T* dc_prev);

template <typename T>
using SerialGemm = void (*)(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                            int64_t lda, const T* B, int64_t ldb, bool accumulate, T* C, int64_t ldc);

constexpr int kActivations = 5;  // indexed by int(Activation)

template <typename T>
struct Kernels {
  SerialGemm<T> gemm;  // single-threaded
  // Prepacked B (weights reused across steps): the packed panels are nr columns wide.
  int nr;
  int64_t (*packed_size)(int64_t K, int64_t N);
  void (*pack_b)(bool trans_b, const T* B, int64_t ldb, int64_t K, int64_t N, T* packed);
  // For b < count: columns [j0, j0 + n) of C[b] (+)= op(A) op(B_b), each B_b [K,N] prepacked in packed[b];
  // j0 a multiple of nr. op(A) is packed once for all of them.
  void (*gemm_prepacked)(bool trans_a, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, int count,
                         const T* const* packed, int64_t j0, int64_t n, bool accumulate, T* const* C, int64_t ldc);
  // Weight norm over columns [j0, j1) of row-major [rows, ld] blocks, in double:
  // column_dots: out[j - j0] = sum_r A[r,j] B[r,j]; column_axpby: D[r,j] = a[j - j0] D[r,j] - b[j - j0] V[r,j].
  void (*column_dots)(const T* A, const T* B, int64_t rows, int64_t ld, int64_t j0, int64_t j1, double* out);
  void (*column_axpby)(T* D, const T* V, int64_t rows, int64_t ld, int64_t j0, int64_t j1, const double* a,
                       const double* b);
  PointwiseForward<T> forward[2][kActivations];  // [has peepholes][activation]
  PointwiseBackward<T> backward[kActivations];
};

// op(B) [K,N] packed once for gemm_prepacked(): reuse it while B is unchanged.
template <typename T>
struct PackedMatrix {
  int64_t K = 0, N = 0;
  void pack(bool trans_b, const T* B, int64_t ldb, int64_t K, int64_t N);
  const T* data() const { return aligned_; }
  int64_t memory_bytes() const { return int64_t(storage_.capacity() * sizeof(T)); }

 private:
  std::vector<T> storage_;  // over-allocated: the kernels load panels with 64-byte aligned loads
  T* aligned_ = nullptr;
};

// C[M,N] = (accumulate ? C : 0) + op(A)[M,K] * B, with B prepacked; split over the thread pool.
template <typename T>
void gemm(bool trans_a, int64_t M, const T* A, int64_t lda, const PackedMatrix<T>& B, bool accumulate, T* C,
          int64_t ldc);

// The kernels of the best ISA this CPU has.
template <typename T>
const Kernels<T>& kernels();

}  // namespace wnlstm::cpu
