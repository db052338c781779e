// The CUDA backend's GEMM (no cuBLAS: the addon needs only the driver):
//   C[M,N] = (accumulate ? C : 0) + op(A)[M,K] * diag(scale_k) * op(B)[K,N],  row-major,
// op(A) = A or A^T (trans_a; A is then [K,M]), same for B; scale_k [K] may be null. The scale lets the
// backward multiply by the normalised weights W = V * s without building them: dz . W^T = (dz * s) . V^T.
// 64 x 64 output tiles, 16-deep slices staged in shared memory, 4 x 4 outputs per thread; any sizes.
#pragma once

#include "device.h"

namespace wnlstm::cuda {

namespace gemm_detail {
constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;

// blockIdx.z picks a slice of K, [z * k_chunk, (z + 1) * k_chunk), and writes its own C, at C + z * c_stride
// (split-K: more blocks for a small M x N; the caller adds the slices).
template <typename T, bool TA, bool TB>
__global__ void __launch_bounds__(THREADS)
    gemm_kernel(int64_t M, int64_t N, int64_t K, const T* __restrict__ A, int64_t lda, const T* __restrict__ B,
                int64_t ldb, const T* __restrict__ scale_k, bool accumulate, T* __restrict__ C, int64_t ldc,
                int64_t k_chunk, int64_t c_stride) {
  // +1: the tile is written along k for some layouts; the padding keeps those stores off one bank.
  __shared__ T As[BK][BM + 1];
  __shared__ T Bs[BK][BN + 1];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * BN;
  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

  const int64_t k_begin = int64_t(blockIdx.z) * k_chunk, k_end = k_begin + k_chunk < K ? k_begin + k_chunk : K;
  C += int64_t(blockIdx.z) * c_stride;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += BK) {
    // Consecutive threads load consecutive addresses of whichever layout the operand has.
    for (int i = tid; i < BM * BK; i += THREADS) {
      const int m = TA ? i % BM : i / BK, k = TA ? i / BM : i % BK;
      const int64_t gm = m0 + m, gk = k0 + k;
      T v = T(0);
      if (gm < M && gk < k_end) {
        v = TA ? A[gk * lda + gm] : A[gm * lda + gk];
        if (scale_k) v *= scale_k[gk];
      }
      As[k][m] = v;
    }
    for (int i = tid; i < BK * BN; i += THREADS) {
      const int n = TB ? i / BK : i % BN, k = TB ? i % BK : i / BN;
      const int64_t gn = n0 + n, gk = k0 + k;
      Bs[k][n] = (gn < N && gk < k_end) ? (TB ? B[gn * ldb + gk] : B[gk * ldb + gn]) : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      T a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[k][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[k][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t gm = m0 + ty + 16 * i;
    if (gm >= M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t gn = n0 + tx + 16 * j;
      if (gn >= N) continue;
      T* c = C + gm * ldc + gn;
      *c = accumulate ? *c + acc[i][j] : acc[i][j];
    }
  }
}
template <typename T>
using Kernel = void (*)(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, const T*, bool, T*, int64_t,
                        int64_t, int64_t);
template <typename T>
Kernel<T> kernel_for(bool trans_a, bool trans_b) {
  return trans_a ? (trans_b ? gemm_kernel<T, true, true> : gemm_kernel<T, true, false>)
                 : (trans_b ? gemm_kernel<T, false, true> : gemm_kernel<T, false, false>);
}

inline void check_grid(int64_t M, int64_t N, int64_t grid_m, int64_t grid_n) {
  if (grid_n > 65535 || grid_m > 0x7fffffff)
    throw Error("ERR_WNLSTM_SIZE", "GEMM of " + std::to_string(M) + " x " + std::to_string(N) + " is too large");
}
}  // namespace gemm_detail

// C [splits, M, ldc]: slice z of K (of ceil(K / splits) each) into C + z * M * ldc, for the caller to add.
template <typename T>
void gemm_split_k(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                  int64_t lda, const T* B, int64_t ldb, const T* scale_k, int splits, T* C, int64_t ldc) {
  using namespace gemm_detail;
  if (M <= 0 || N <= 0) return;
  const int64_t grid_m = (M + BM - 1) / BM, grid_n = (N + BN - 1) / BN;
  check_grid(M, N, grid_m, grid_n);
  if (splits < 1 || splits > 65535) throw Error("ERR_WNLSTM_SIZE", "split-K GEMM: " + std::to_string(splits) + " slices");
  if (K <= 0) {
    check(cudaMemset2DAsync(C, size_t(ldc) * sizeof(T), 0, size_t(N) * sizeof(T), size_t(M) * splits, stream), "gemm: zero C");
    return;
  }
  const dim3 grid{unsigned(grid_m), unsigned(grid_n), unsigned(splits)};
  launch("split-K gemm kernel", kernel_for<T>(trans_a, trans_b), grid, THREADS, stream, M, N, K, A, lda, B, ldb, scale_k,
         false, C, ldc, (K + splits - 1) / splits, M * ldc);
}

template <typename T>
void gemm(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, const T* scale_k, bool accumulate, T* C, int64_t ldc) {
  using namespace gemm_detail;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      check(cudaMemset2DAsync(C, size_t(ldc) * sizeof(T), 0, size_t(N) * sizeof(T), size_t(M), stream), "gemm: zero C");
    return;
  }
  const int64_t grid_m = (M + BM - 1) / BM, grid_n = (N + BN - 1) / BN;
  check_grid(M, N, grid_m, grid_n);
  const dim3 grid{unsigned(grid_m), unsigned(grid_n), 1};
  launch("gemm kernel", kernel_for<T>(trans_a, trans_b), grid, THREADS, stream, M, N, K, A, lda, B, ldb, scale_k,
         accumulate, C, ldc, K, int64_t(0));
}

}  // namespace wnlstm::cuda
