// The CUDA backend's GEMM (no cuBLAS: the addon needs only the driver):
//   C[M,N] = (accumulate ? C : 0) + op(A)[M,K] * diag(scale_k) * op(B)[K,N],  row-major,
// op(A) = A or A^T (trans_a; A is then [K,M]), same for B; scale_k [K] may be null. The scale lets the
// backward multiply by the normalised weights W = V * s without building them: dz . W^T = (dz * s) . V^T.
// 64 x 64 output tiles, 16-deep slices staged in shared memory, 4 x 4 outputs per thread; any sizes.
#pragma once

#include <type_traits>
#include <utility>

#include "device.h"

namespace wnlstm::cuda {

namespace gemm_detail {
constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;

// TF32: an fp32 value rounded to 10 bits of mantissa (cvt.rna: to nearest, ties away from zero), as the
// tensor cores read it.
__device__ inline uint32_t to_tf32(float x) {
#if defined(WNLSTM_CUDA_EMULATION)
  return emu::to_tf32(x);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#else
  return __float_as_uint(x);  // not reached: the TF32 kernels run only on sm_80 and later
#endif
}

// d += a . b for one 16 x 8 x 8 tile, the warp's fragments in the layout of the PTX ISA's mma.m16n8k8 .tf32
// (group = lane / 4, quad = lane % 4): a = A[group (+8 in a1, a3)][quad (+4 in a2, a3)], b = B[quad (+4 in
// b1)][group], d = D[group (+8 in d2, d3)][2 quad (+1 in d1, d3)]. Every lane of the warp must call it.
__device__ inline void mma_m16n8k8_tf32(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#if defined(WNLSTM_CUDA_EMULATION)
  emu::mma_m16n8k8_tf32(d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // not reached: the TF32 kernels run only on sm_80 and later
#endif
}

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
// ---- TF32 tensor cores (sm_80 and later; opt-in: about 10 bits of each input's mantissa, fp32 sums).
// The same contract as gemm_kernel, on 64 x 64 tiles of 4 warps, each warp 32 x 32 as 2 x 4 mma.sync
// m16n8k8 tiles; 16-deep slices staged in shared memory, already rounded to TF32.
constexpr int TBM = 64, TBN = 64, TBK = 16, TF32_THREADS = 128, TPAD = 8;  // pad: conflict-free fragment loads

template <bool TA, bool TB>
__global__ void __launch_bounds__(TF32_THREADS)
    gemm_tf32_kernel(int64_t M, int64_t N, int64_t K, const float* __restrict__ A, int64_t lda,
                     const float* __restrict__ B, int64_t ldb, const float* __restrict__ scale_k, bool accumulate,
                     float* __restrict__ C, int64_t ldc, int64_t k_chunk, int64_t c_stride) {
  __shared__ uint32_t As[TBK][TBM + TPAD];
  __shared__ uint32_t Bs[TBK][TBN + TPAD];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, group = lane / 4, quad = lane % 4;
  const int wm = (warp / 2) * 32, wn = (warp % 2) * 32;  // the warp's 32 x 32 in the block's tile
  const int64_t m0 = int64_t(blockIdx.x) * TBM, n0 = int64_t(blockIdx.y) * TBN;
  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

  const int64_t k_begin = int64_t(blockIdx.z) * k_chunk, k_end = k_begin + k_chunk < K ? k_begin + k_chunk : K;
  C += int64_t(blockIdx.z) * c_stride;
  for (int64_t k0 = k_begin; k0 < k_end; k0 += TBK) {
    for (int i = tid; i < TBM * TBK; i += TF32_THREADS) {
      const int m = TA ? i % TBM : i / TBK, k = TA ? i / TBM : i % TBK;
      const int64_t gm = m0 + m, gk = k0 + k;
      float v = 0.0f;
      if (gm < M && gk < k_end) {
        v = TA ? A[gk * lda + gm] : A[gm * lda + gk];
        if (scale_k) v *= scale_k[gk];
      }
      As[k][m] = to_tf32(v);
    }
    for (int i = tid; i < TBK * TBN; i += TF32_THREADS) {
      const int n = TB ? i / TBK : i % TBN, k = TB ? i % TBK : i / TBN;
      const int64_t gn = n0 + n, gk = k0 + k;
      Bs[k][n] = to_tf32((gn < N && gk < k_end) ? (TB ? B[gn * ldb + gk] : B[gk * ldb + gn]) : 0.0f);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < TBK; kk += 8) {
      uint32_t a[2][4], b[4][2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int r = wm + 16 * i + group;
        a[i][0] = As[kk + quad][r], a[i][1] = As[kk + quad][r + 8];
        a[i][2] = As[kk + quad + 4][r], a[i][3] = As[kk + quad + 4][r + 8];
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = wn + 8 * j + group;
        b[j][0] = Bs[kk + quad][c], b[j][1] = Bs[kk + quad + 4][c];
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_m16n8k8_tf32(acc[i][j], a[i], b[j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {  // the accumulator fragment: rows group (+8), columns 2*quad (+1)
        const int64_t gm = m0 + wm + 16 * i + group + (r >= 2 ? 8 : 0), gn = n0 + wn + 8 * j + 2 * quad + (r & 1);
        if (gm >= M || gn >= N) continue;
        float* c = C + gm * ldc + gn;
        *c = accumulate ? *c + acc[i][j][r] : acc[i][j][r];
      }
}

template <typename T>
using Kernel = void (*)(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, const T*, bool, T*, int64_t,
                        int64_t, int64_t);
// The kernel and its block: TF32 tensor cores for float where asked, else the fp32/fp64 one.
template <typename T>
std::pair<Kernel<T>, int> kernel_for(bool trans_a, bool trans_b, bool tf32) {
  if constexpr (std::is_same_v<T, float>) {
    if (tf32)
      return {trans_a ? (trans_b ? gemm_tf32_kernel<true, true> : gemm_tf32_kernel<true, false>)
                      : (trans_b ? gemm_tf32_kernel<false, true> : gemm_tf32_kernel<false, false>),
              TF32_THREADS};
  }
  return {trans_a ? (trans_b ? gemm_kernel<T, true, true> : gemm_kernel<T, true, false>)
                  : (trans_b ? gemm_kernel<T, false, true> : gemm_kernel<T, false, false>),
          THREADS};
}

inline void check_grid(int64_t M, int64_t N, int64_t grid_m, int64_t grid_n) {
  if (grid_n > 65535 || grid_m > 0x7fffffff)
    throw Error("ERR_WNLSTM_SIZE", "GEMM of " + std::to_string(M) + " x " + std::to_string(N) + " is too large");
}
}  // namespace gemm_detail

// C [splits, M, ldc]: slice z of K (of ceil(K / splits) each) into C + z * M * ldc, for the caller to add.
// tf32: TF32 tensor cores for float (the tiles are the same size: BM = TBM, BN = TBN).
template <typename T>
void gemm_split_k(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                  int64_t lda, const T* B, int64_t ldb, const T* scale_k, int splits, T* C, int64_t ldc,
                  bool tf32 = false) {
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
  const auto [kernel, threads] = kernel_for<T>(trans_a, trans_b, tf32);
  launch("split-K gemm kernel", kernel, grid, threads, stream, M, N, K, A, lda, B, ldb, scale_k, false, C, ldc,
         (K + splits - 1) / splits, M * ldc);
}

template <typename T>
void gemm(cudaStream_t stream, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, const T* scale_k, bool accumulate, T* C, int64_t ldc, bool tf32 = false) {
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
  const auto [kernel, threads] = kernel_for<T>(trans_a, trans_b, tf32);
  launch("gemm kernel", kernel, grid, threads, stream, M, N, K, A, lda, B, ldb, scale_k, accumulate, C, ldc, K,
         int64_t(0));
}

}  // namespace wnlstm::cuda
