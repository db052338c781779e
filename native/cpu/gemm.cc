#include "gemm.h"

#include <algorithm>

#include "thread_pool.h"
#include "wnlstm/cell.h"

namespace wnlstm::cpu {
namespace generic { template <typename T> SerialGemm<T> serial_gemm(); }
namespace avx2 { template <typename T> SerialGemm<T> serial_gemm(); }
namespace avx512 { template <typename T> SerialGemm<T> serial_gemm(); }

namespace {

enum class Isa { Generic, Avx2, Avx512 };

Isa detect_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Generic;
}

Isa isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

template <typename T>
SerialGemm<T> kernel() {
  static const SerialGemm<T> chosen = [] {
    switch (isa()) {
      case Isa::Avx512: return avx512::serial_gemm<T>();
      case Isa::Avx2: return avx2::serial_gemm<T>();
      default: return generic::serial_gemm<T>();
    }
  }();
  return chosen;
}

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, bool accumulate, T* C, int64_t ldc) {
  const SerialGemm<T> run = kernel<T>();
  const int threads = num_threads();
  // Small products are not worth waking the pool.
  if (threads == 1 || double(M) * N * K < 64.0 * 64 * 64) {
    run(trans_a, trans_b, M, N, K, A, lda, B, ldb, accumulate, C, ldc);
    return;
  }
  // Split along the longer side into one slice per thread, in multiples of 32 (whole register tiles).
  const bool split_n = N >= M;
  const int64_t extent = split_n ? N : M;
  const int64_t step = std::max<int64_t>(32, ((extent + threads - 1) / threads + 31) / 32 * 32);
  const int tasks = int((extent + step - 1) / step);
  parallel_for(tasks, [&](int task) {
    const int64_t lo = task * step, len = std::min(step, extent - lo);
    if (split_n)
      run(trans_a, trans_b, M, len, K, A, lda, trans_b ? B + lo * ldb : B + lo, ldb, accumulate, C + lo, ldc);
    else
      run(trans_a, trans_b, len, N, K, trans_a ? A + lo : A + lo * lda, lda, B, ldb, accumulate,
          C + lo * ldc, ldc);
  });
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                          int64_t, bool, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t, const double*,
                           int64_t, bool, double*, int64_t);

}  // namespace wnlstm::cpu

namespace wnlstm {
const char* cpu_isa() {
  switch (cpu::isa()) {
    case cpu::Isa::Avx512: return "avx512";
    case cpu::Isa::Avx2: return "avx2";
    default: return "generic";
  }
}
int cpu_threads() { return cpu::num_threads(); }
}  // namespace wnlstm
