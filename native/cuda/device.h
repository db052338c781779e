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
#include <tuple>
#include <utility>
#include <vector>

#include "wnlstm/cell.h"

namespace wnlstm::cuda {

// A kernel fault (an illegal address, a failed assertion, ...) leaves the process's CUDA context unusable:
// every later call would fail with the same error. The first one is kept here, so that later calls fail at
// once with what happened and what to do, instead of with a confusing error of their own.
inline bool is_sticky(cudaError_t err) {
  return err == cudaErrorIllegalAddress || err == cudaErrorLaunchFailure || err == cudaErrorHardwareStackError ||
         err == cudaErrorIllegalInstruction || err == cudaErrorMisalignedAddress ||
         err == cudaErrorInvalidAddressSpace || err == cudaErrorInvalidPc || err == cudaErrorAssert;
}
struct Fault {
  std::mutex mutex;
  std::string message;  // empty until a kernel fault
};
inline Fault& fault() {
  static Fault f;
  return f;
}

// Throws for a failed runtime call: ERR_WNLSTM_OUT_OF_MEMORY for allocation failures, ERR_WNLSTM_CUDA else.
inline void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so that the next call starts clean
  std::string message = std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  if (is_sticky(err)) {
    Fault& f = fault();
    std::lock_guard<std::mutex> lock(f.mutex);
    if (f.message.empty()) f.message = message;
    throw Error("ERR_WNLSTM_CUDA", "a CUDA kernel faulted (" + f.message + "): the process's CUDA context is " +
                                       "unusable from now on, so every CUDA call here will fail; restart the " +
                                       "process (CPU cells and models keep working meanwhile)");
  }
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

// A cooperative launch (every block resident at once, so that the kernel may use grid_sync), with
// `shared_bytes` of dynamic shared memory; the caller has checked that the grid fits (cooperative_blocks).
// Returns false, having launched nothing, where the device still cannot hold the grid at once.
template <typename... Params, typename... Args>
bool launch_cooperative(const char* name, void (*kernel)(Params...), dim3 grid, unsigned block, size_t shared_bytes,
                        cudaStream_t stream, Args&&... args) {
  std::tuple<Params...> values(std::forward<Args>(args)...);
  void* pointers[sizeof...(Params)];
  std::apply([&](auto&... v) {
    int i = 0;
    ((pointers[i++] = static_cast<void*>(&v)), ...);
  }, values);
  check(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(shared_bytes)), name);
  const cudaError_t err =
      cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, dim3(block), pointers, shared_bytes, stream);
  if (err == cudaErrorCooperativeLaunchTooLarge) {  // fewer SMs than the occupancy query saw (MPS limits, say)
    cudaGetLastError();
    return false;
  }
  check(err, name);
  return true;
}

// How many blocks of `kernel` can be resident at once on the device (0 where it has no cooperative launch).
template <typename... Params>
int cooperative_blocks(void (*kernel)(Params...), int device, unsigned block, size_t shared_bytes) {
  int cooperative = 0, optin = 0, sms = 0, per_sm = 0;
  check(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  if (!cooperative || shared_bytes > size_t(optin)) return 0;
  check(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(shared_bytes)), "cudaFuncSetAttribute");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, int(block), shared_bytes),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return per_sm * sms;
}

// ---- Device side of a cooperative launch.

// A barrier for every thread of a cooperative grid: a count of the blocks that have arrived, and a generation
// that the last one to arrive moves on, which the others wait for. count and generation: device memory,
// zero before the first use; the barrier leaves count at zero. Every block's writes before it are visible to
// every block after it.
struct GridBarrier {
  unsigned* count;
  unsigned* generation;  // in another 128-byte line than count: the spinning reads do not slow the arrivals
};
__device__ inline void grid_sync(GridBarrier b) {
  __syncthreads();
  if (threadIdx.x == 0) {
    volatile unsigned* generation = b.generation;
    const unsigned seen = *generation;
    __threadfence();  // the block's writes (ordered before this thread by the barrier above) go first
    if (atomicAdd(b.count, 1u) == gridDim.x * gridDim.y * gridDim.z - 1) {
      atomicExch(b.count, 0u);
      __threadfence();
      atomicAdd(b.generation, 1u);
    } else {
      while (*generation == seen) __nanosleep(32);
    }
    __threadfence();
  }
  __syncthreads();
}

// The launch's dynamic shared memory.
template <typename T>
__device__ inline T* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  return reinterpret_cast<T*>(shared_bytes);
}
#else
struct GridBarrier {
  unsigned* count;
  unsigned* generation;
};
inline void grid_sync(GridBarrier) { emu::grid_sync(); }
template <typename T>
T* dynamic_shared() {
  return static_cast<T*>(emu::dynamic_shared());
}
template <typename... Params>
int cooperative_blocks(void (*)(Params...), int, unsigned, size_t shared_bytes) {
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  return shared_bytes <= 227 * 1024 ? 2 * sms : 0;  // the emulated device: 2 blocks per SM fit
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

// Before making an object on `device`: ERR_WNLSTM_BACKEND_UNAVAILABLE where CUDA cannot be used (with the
// reason), ERR_WNLSTM_CONFIG for an index the machine has no device for.
inline void require_device(int device) {
  const CudaStatus status = cuda_status();
  if (!status.available)
    throw Error("ERR_WNLSTM_BACKEND_UNAVAILABLE", "backend 'cuda' is not available: " + status.reason);
  const int count = int(status.devices.size());
  if (device < 0 || device >= count)
    throw Error("ERR_WNLSTM_CONFIG", "there is no CUDA device " + std::to_string(device) + " (this machine has " +
                                         std::to_string(count) + ": 0 to " + std::to_string(count - 1) + ")");
}

inline int multiprocessors(int device) {
  int n = 0;
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return n;
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

// A cell's per-step launches as one CUDA graph. run() queues what `record` launches on `stream` (the cell's
// stream variable, which every launch of it reads): directly, the first time a key is seen; captured into a
// graph and instantiated, when the same key comes twice in a row; and from then on as that graph, one launch
// instead of T, while the key stays the same. The key must hold every pointer and size the launches use (a
// graph replays its arguments as they were captured). The capture runs on a stream of its own, so that what
// other objects queue meanwhile on the device's shared stream is neither captured nor delayed.
class StepGraph {
 public:
  StepGraph() = default;
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  ~StepGraph() {
    if (exec_) cudaGraphExecDestroy(exec_);  // freed when a launch still in flight completes
    if (capture_) cudaStreamDestroy(capture_);
  }

  template <typename Record>
  void run(cudaStream_t& stream, const std::vector<int64_t>& key, Record&& record) {
    if (exec_ && key == captured_) return check(cudaGraphLaunch(exec_, stream), "cudaGraphLaunch");
    const bool again = key == last_;
    last_ = key;
    if (!again) return record();
    if (!capture_) check(cudaStreamCreateWithFlags(&capture_, cudaStreamNonBlocking), "cudaStreamCreate");
    const cudaStream_t shared = stream;
    stream = capture_;  // record() launches on the capture stream: nothing runs, everything is recorded
    cudaGraph_t graph = nullptr;
    try {
      check(cudaStreamBeginCapture(capture_, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
      try {
        record();
      } catch (...) {
        cudaStreamEndCapture(capture_, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      check(cudaStreamEndCapture(capture_, &graph), "cudaStreamEndCapture");
    } catch (...) {
      stream = shared;
      throw;
    }
    stream = shared;
    cudaGraphExec_t exec = nullptr;
#if defined(CUDART_VERSION) && CUDART_VERSION < 12000
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, nullptr, nullptr, 0);
#else
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
#endif
    cudaGraphDestroy(graph);
    check(err, "cudaGraphInstantiate");
    if (exec_) cudaGraphExecDestroy(exec_);
    exec_ = exec, captured_ = key;
    check(cudaGraphLaunch(exec_, stream), "cudaGraphLaunch");
  }

 private:
  std::vector<int64_t> last_, captured_;
  cudaGraphExec_t exec_ = nullptr;
  cudaStream_t capture_ = nullptr;
};

// Makes `device` current for its scope and restores the caller's device after (for the paths, like frees in
// destructors, that may run on any thread with any device current).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cudaGetDevice(&previous_);
    if (previous_ != device) cudaSetDevice(device);
    changed_ = previous_ != device;
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(previous_);
  }

 private:
  int previous_ = 0;
  bool changed_ = false;
};

// Device memory of n elements of the current device, allocated and freed in order on its stream, grown on
// demand and freed with its owner. Contents are undefined after a resize that grows it.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() : device_(current_device()), stream_(device_stream(device_)) {}
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
    if (ptr_) {
      const DeviceGuard guard(device_);
      cudaFreeAsync(ptr_, stream_);
    }
    ptr_ = nullptr, capacity_ = size_ = 0;
  }
  T* data() const { return ptr_; }
  int64_t size() const { return size_; }
  int64_t capacity() const { return capacity_; }

 private:
  int device_;
  cudaStream_t stream_;
  T* ptr_ = nullptr;
  int64_t capacity_ = 0, size_ = 0;
};

// Pinned buffers that copies queued on some stream may still read: each is freed once the event recorded
// after those copies has passed, checked whenever pinned memory is handed out or waited for. (Freeing at
// once would need a wait for the stream, which on the main thread would stall the event loop.)
class PinnedGraveyard {
 public:
  static PinnedGraveyard& instance() {
    static PinnedGraveyard g;
    return g;
  }
  void bury(char* p, cudaStream_t stream) {
    cudaEvent_t done = nullptr;
    if (cudaEventCreateWithFlags(&done, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventRecord(done, stream) != cudaSuccess) {
      cudaGetLastError();
      cudaStreamSynchronize(stream);  // no event: wait (rare, and only if the runtime is failing)
      cudaFreeHost(p);
      if (done) cudaEventDestroy(done);
      return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    graves_.push_back({done, p});
  }
  void collect() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < graves_.size();) {
      if (cudaEventQuery(graves_[i].done) == cudaErrorNotReady) {
        ++i;
        continue;
      }
      cudaFreeHost(graves_[i].p);
      cudaEventDestroy(graves_[i].done);
      graves_[i] = graves_.back();
      graves_.pop_back();
    }
    cudaGetLastError();  // a not-ready query leaves an error to clear
  }

 private:
  struct Grave {
    cudaEvent_t done;
    char* p;
  };
  std::mutex mutex_;
  std::vector<Grave> graves_;
};

// Pinned host memory for the uploads of one owner, safe to use from several threads (an object's calls on
// the main thread and its async calls on the thread pool): an upload is copied into it and goes up
// asynchronously from there. Space is handed out at increasing offsets and reused from the start once the
// stream has been seen idle with no upload queued since; when it is full a buffer twice as large replaces
// it (the old one freed when its copies are done). Downloads go straight into the caller's memory.
class Staging {
 public:
  explicit Staging(cudaStream_t stream) : stream_(stream) {}
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  ~Staging() {
    if (base_) PinnedGraveyard::instance().bury(base_, stream_);
  }

  void upload(void* device, const void* host, size_t bytes) {
    if (bytes == 0) return;
    std::lock_guard<std::mutex> lock(mutex_);
    char* p = take(bytes);
    std::memcpy(p, host, bytes);
    check(cudaMemcpyAsync(device, p, bytes, cudaMemcpyHostToDevice, stream_), "copy to the device");
    ++queued_;
  }
  // Waits for the stream (and so for everything queued before).
  void download(void* host, const void* device, size_t bytes) {
    if (bytes) check(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream_), "copy to the host");
    synchronize();
  }
  void synchronize() {
    uint64_t queued_before = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queued_before = queued_;
    }
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");  // without the lock: uploads go on
    std::lock_guard<std::mutex> lock(mutex_);
    if (queued_ == queued_before) used_ = 0;  // every copy from the buffer is done
  }
  size_t capacity() const { return capacity_; }

 private:
  char* take(size_t bytes) {  // with mutex_ held
    bytes = (bytes + 255) / 256 * 256;
    if (used_ + bytes > capacity_) {
      PinnedGraveyard::instance().collect();
      if (base_) PinnedGraveyard::instance().bury(base_, stream_);
      base_ = nullptr;
      const size_t size = std::max({bytes, 2 * capacity_, size_t(1) << 20});
      capacity_ = used_ = 0;
      check(cudaMallocHost(reinterpret_cast<void**>(&base_), size), "cudaMallocHost (staging)");
      capacity_ = size;
    }
    char* p = base_ + used_;
    used_ += bytes;
    return p;
  }

  cudaStream_t stream_;
  std::mutex mutex_;
  char* base_ = nullptr;
  size_t used_ = 0, capacity_ = 0;
  uint64_t queued_ = 0;  // uploads queued so far
};

}  // namespace wnlstm::cuda
