#include "kernels.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "thread_pool.h"
#include "wnlstm/cell.h"

namespace wnlstm::cpu {
namespace generic { template <typename T> Kernels<T> make_kernels(); }
namespace avx2 { template <typename T> Kernels<T> make_kernels(); }
namespace avx512 { template <typename T> Kernels<T> make_kernels(); }

namespace {

enum class Isa { Generic, Avx2, Avx512 };

Isa detect_isa() {
  Isa best = Isa::Generic;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) best = Isa::Avx512;
  else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::Avx2;
#endif
  // WNLSTM_CPU_ISA=generic|avx2 picks a lower variant (to test each one); never one the CPU lacks.
  const char* env = std::getenv("WNLSTM_CPU_ISA");
  Isa wanted = !env ? best : std::strcmp(env, "generic") == 0 ? Isa::Generic
                           : std::strcmp(env, "avx2") == 0   ? Isa::Avx2
                                                             : best;
  return std::min(wanted, best);
}

Isa isa() {
  static const Isa chosen = detect_isa();
  return chosen;
}

}  // namespace

template <typename T>
const Kernels<T>& kernels() {
  static const Kernels<T> chosen = [] {
    switch (isa()) {
      case Isa::Avx512: return avx512::make_kernels<T>();
      case Isa::Avx2: return avx2::make_kernels<T>();
      default: return generic::make_kernels<T>();
    }
  }();
  return chosen;
}
template const Kernels<float>& kernels<float>();
template const Kernels<double>& kernels<double>();

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
          const T* B, int64_t ldb, bool accumulate, T* C, int64_t ldc) {
  const SerialGemm<T> run = kernels<T>().gemm;
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

template <typename T>
void PackedMatrix<T>::pack(bool trans_b, const T* B, int64_t ldb, int64_t k, int64_t n) {
  K = k, N = n;
  storage_.resize(kernels<T>().packed_size(K, N) + 64 / sizeof(T));
  const uintptr_t address = reinterpret_cast<uintptr_t>(storage_.data());
  aligned_ = reinterpret_cast<T*>((address + 63) / 64 * 64);
  kernels<T>().pack_b(trans_b, B, ldb, K, N, aligned_);
}
template struct PackedMatrix<float>;
template struct PackedMatrix<double>;

template <typename T>
void gemm(bool trans_a, int64_t M, const T* A, int64_t lda, const PackedMatrix<T>& B, bool accumulate, T* C,
          int64_t ldc) {
  const Kernels<T>& k = kernels<T>();
  const int threads = num_threads();
  // Column slices in whole packed panels (multiples of nr), one per thread.
  const int64_t panels = (B.N + k.nr - 1) / k.nr;
  const int tasks = (threads == 1 || double(M) * B.N * B.K < 64.0 * 64 * 64) ? 1 : int(std::min<int64_t>(threads, panels));
  parallel_for(tasks, [&](int task) {
    const int64_t p0 = panels * task / tasks, p1 = panels * (task + 1) / tasks;
    const int64_t j0 = p0 * k.nr, j1 = std::min(B.N, p1 * k.nr);
    const T* packed = B.data();
    k.gemm_prepacked(trans_a, M, B.N, B.K, A, lda, 1, &packed, j0, j1 - j0, accumulate, &C, ldc);
  });
}
template void gemm<float>(bool, int64_t, const float*, int64_t, const PackedMatrix<float>&, bool, float*, int64_t);
template void gemm<double>(bool, int64_t, const double*, int64_t, const PackedMatrix<double>&, bool, double*, int64_t);

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
