// General matrix multiply for the CPU backend (row-major):
//   C[M,N] = (accumulate ? C : 0) + op(A)[M,K] * op(B)[K,N]
// op(A) is A ([M,K], leading dimension lda) or, with trans_a, the transpose of A ([K,M]); same for B.
// Blocked and packed (GotoBLAS layout), vectorised for the best ISA this CPU has, split over the pool.
#pragma once

#include <cstdint>

namespace wnlstm::cpu {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, bool accumulate, T* C, int64_t ldc);

// The single-threaded kernel for one ISA; gemm() picks one and splits the work.
template <typename T>
using SerialGemm = void (*)(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                            int64_t lda, const T* B, int64_t ldb, bool accumulate, T* C, int64_t ldc);

}  // namespace wnlstm::cpu
