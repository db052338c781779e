// CUDA plumbing for the CUDA backend: every runtime call and kernel launch is checked and turned into a
// wnlstm::Error (so a JS error with a code, never an abort), and device memory is owned by RAII buffers.
#pragma once

#ifdef WNLSTM_CUDA_EMULATION
#include "cuda_emulation.h"  // the tests' CPU stand-in for the runtime and for launch() (test/native/)
#else
#include <cuda_runtime_api.h>
#endif

#include <cstdint>
#include <string>
#include <utility>

#include "wnlstm/cell.h"

namespace wnlstm::cuda {

// Throws for a failed runtime call: ERR_WNLSTM_OUT_OF_MEMORY for allocation failures, ERR_WNLSTM_CUDA else.
inline void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so that the next call starts clean
  const std::string message = std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  throw Error(err == cudaErrorMemoryAllocation ? "ERR_WNLSTM_OUT_OF_MEMORY" : "ERR_WNLSTM_CUDA", message);
}

// After a <<<...>>> launch: a bad configuration shows up here, not at the launch.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

#ifndef WNLSTM_CUDA_EMULATION
// Every kernel launch goes through here (one place, which the tests' CPU emulation also implements):
// kernel<<<grid, block, 0, stream>>>(args...), then the check.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, unsigned block, cudaStream_t stream,
            Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
  check_launch(name);
}
#endif

// Grid size for a grid-stride loop over n items with 256-thread blocks.
inline unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + 255) / 256;
  return unsigned(blocks < 1 ? 1 : blocks > 65535 * 16 ? 65535 * 16 : blocks);
}

// A non-blocking stream of the current device, destroyed (after its work) with its owner.
class Stream {
 public:
  Stream() { check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  operator cudaStream_t() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// Device memory of n elements, grown on demand and freed with its owner. Contents are undefined after
// a resize that grows it.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr_); }

  T* resize(int64_t n) {
    if (n > capacity_) {
      cudaFree(ptr_);
      ptr_ = nullptr, capacity_ = 0;
      check(cudaMalloc(&ptr_, size_t(n) * sizeof(T)),
            ("cudaMalloc of " + std::to_string(n * int64_t(sizeof(T)) >> 20) + " MiB").c_str());
      capacity_ = n;
    }
    size_ = n;
    return ptr_;
  }
  T* data() const { return ptr_; }
  int64_t size() const { return size_; }
  int64_t capacity() const { return capacity_; }

 private:
  T* ptr_ = nullptr;
  int64_t capacity_ = 0, size_ = 0;
};

}  // namespace wnlstm::cuda
