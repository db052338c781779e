// CUDA plumbing for the CUDA backend: every runtime call and kernel launch is checked and turned into a
// wnlstm::Error (so a JS error with a code, never an abort), and device memory is owned by RAII buffers.
#pragma once

#ifdef WNLSTM_CUDA_EMULATION
#include "cuda_emulation.h"  // the tests' CPU stand-in for the runtime and for launch() (test/native/)
#else
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

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

inline int current_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

// The stream that every cell and model on a device uses, so that their work is ordered without host waits
// (created on first use and kept for the process). Its memory pool keeps what is freed for reuse: a free
// or a regrow never hands memory back to the driver, which would stall the device.
inline cudaStream_t device_stream(int device) {
  static std::mutex mutex;
  static std::vector<std::pair<int, cudaStream_t>> streams;
  std::lock_guard<std::mutex> lock(mutex);
  for (const auto& [d, s] : streams)
    if (d == device) return s;
  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  cudaMemPool_t pool;
  if (cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
    uint64_t keep = UINT64_MAX;
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
  }
  cudaGetLastError();  // clear what a refused attribute call may have left
  streams.emplace_back(device, stream);
  return stream;
}

// Device memory of n elements of the current device, allocated and freed in order on its stream, grown on
// demand and freed with its owner. Contents are undefined after a resize that grows it.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() : stream_(device_stream(current_device())) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  T* resize(int64_t n) {
    if (n > capacity_) {
      release();
      check(cudaMallocAsync(reinterpret_cast<void**>(&ptr_), size_t(n) * sizeof(T), stream_),
            ("cudaMallocAsync of " + std::to_string(n * int64_t(sizeof(T)) >> 20) + " MiB").c_str());
      capacity_ = n;
    }
    size_ = n;
    return ptr_;
  }
  void release() {
    if (ptr_) cudaFreeAsync(ptr_, stream_);
    ptr_ = nullptr, capacity_ = size_ = 0;
  }
  T* data() const { return ptr_; }
  int64_t size() const { return size_; }
  int64_t capacity() const { return capacity_; }

 private:
  cudaStream_t stream_;
  T* ptr_ = nullptr;
  int64_t capacity_ = 0, size_ = 0;
};

// Pinned host memory for the few host <-> device copies: an upload is copied into it and goes up
// asynchronously from there; the space is handed out at increasing offsets and reused once the stream has
// synchronised (which a download does anyway).
class Staging {
 public:
  explicit Staging(cudaStream_t stream) : stream_(stream) {}
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  ~Staging() {
    if (base_) cudaStreamSynchronize(stream_), cudaFreeHost(base_);
  }

  void upload(void* device, const void* host, size_t bytes) {
    if (bytes == 0) return;
    void* p = take(bytes);
    std::memcpy(p, host, bytes);
    check(cudaMemcpyAsync(device, p, bytes, cudaMemcpyHostToDevice, stream_), "copy to the device");
  }
  // Waits for the stream (and so for everything queued before).
  void download(void* host, const void* device, size_t bytes) {
    if (bytes == 0) return synchronize();
    void* p = take(bytes);
    check(cudaMemcpyAsync(p, device, bytes, cudaMemcpyDeviceToHost, stream_), "copy to the host");
    synchronize();
    std::memcpy(host, p, bytes);
  }
  void synchronize() {
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    used_ = 0;
  }
  size_t capacity() const { return capacity_; }

 private:
  void* take(size_t bytes) {
    bytes = (bytes + 255) / 256 * 256;
    if (used_ + bytes > capacity_) {
      synchronize();  // no queued copy reads it any more
      if (bytes > capacity_) {
        if (base_) cudaFreeHost(base_);
        base_ = nullptr, capacity_ = 0;
        const size_t size = std::max(bytes, size_t(1) << 20);
        check(cudaMallocHost(reinterpret_cast<void**>(&base_), size), "cudaMallocHost (staging)");
        capacity_ = size;
      }
    }
    char* p = base_ + used_;
    used_ += bytes;
    return p;
  }

  cudaStream_t stream_;
  char* base_ = nullptr;
  size_t used_ = 0, capacity_ = 0;
};

}  // namespace wnlstm::cuda
