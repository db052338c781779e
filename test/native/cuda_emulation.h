// A CPU stand-in for the CUDA runtime and for kernel launches, so that the CUDA backend's own code
// (native/cuda/, compiled as C++ with WNLSTM_CUDA_EMULATION) runs where there is no GPU and can be
// checked against the CPU backend (test/native/cuda_vs_cpu.cc, run by test/cuda-emulation.test.ts).
//
// Each block runs its threads as fibers (ucontext) on one OS thread: a fiber runs until it reaches
// __syncthreads() or returns, and the block's next round starts when every live fiber has arrived, which
// is exactly the barrier's meaning. A cooperative launch runs every block's fibers at once, so that a
// grid-wide barrier (grid_sync) can wait for all of them. A static __shared__ becomes a function-local
// static, shared by the fibers of the block (blocks run one after another); dynamic shared memory is each
// block's own. Device memory is host memory filled with NaN bytes when allocated, so a kernel that reads
// what nobody wrote poisons the results instead of passing by luck.
// What this cannot check: real concurrency between blocks and threads, the GPU's memory model, and speed.
#pragma once

#include <math.h>
#include <ucontext.h>

#include <cmath>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <functional>
#include <memory>
#include <stdexcept>
#include <tuple>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __launch_bounds__(...)
#define __syncthreads() ::emu::sync_threads()
// Loads that bypass L1 (data other blocks wrote during the launch): plain loads here.
template <typename T>
inline T __ldcg(const T* p) { return *p; }

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline dim3 threadIdx, blockIdx, blockDim, gridDim;

enum cudaError_t {
  cudaSuccess = 0, cudaErrorMemoryAllocation = 2, cudaErrorNotReady = 600, cudaErrorIllegalAddress = 700, cudaErrorLaunchFailure = 719,
  cudaErrorHardwareStackError = 714, cudaErrorIllegalInstruction = 715, cudaErrorMisalignedAddress = 716,
  cudaErrorInvalidAddressSpace = 717, cudaErrorInvalidPc = 718, cudaErrorAssert = 710
};
enum cudaMemcpyKind { cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3 };
using cudaStream_t = struct EmulatedStream*;
constexpr unsigned cudaStreamNonBlocking = 1;

inline const char* cudaGetErrorName(cudaError_t e) {
  return e == cudaSuccess ? "cudaSuccess" : e == cudaErrorMemoryAllocation ? "cudaErrorMemoryAllocation"
         : e == cudaErrorIllegalAddress ? "cudaErrorIllegalAddress" : "cudaErrorLaunchFailure";
}
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : e == cudaErrorMemoryAllocation ? "out of memory" : "a kernel fault";
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* device) { return *device = 0, cudaSuccess; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return *s = nullptr, cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16, cudaDevAttrComputeCapabilityMajor = 75 };
// A small device of compute capability 9.0: 4 SMs, so that the kernels sized by it split their work even on
// the tests' small shapes.
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  return *value = attr == cudaDevAttrComputeCapabilityMajor ? 9 : 4, cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t* free, size_t* total) { return *free = *total = size_t(1) << 34, cudaSuccess; }
template <typename T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  *p = static_cast<T*>(std::malloc(bytes ? bytes : 1));
  if (!*p) return cudaErrorMemoryAllocation;
  std::memset(static_cast<void*>(*p), 0xff, bytes);  // NaN in float and double, -1 in int32
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) { return std::free(p), cudaSuccess; }
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) { return cudaMalloc(p, bytes); }
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) { return cudaFree(p); }
inline cudaError_t cudaMallocHost(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
inline cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }
using cudaMemPool_t = struct EmulatedPool*;
enum cudaMemPoolAttr { cudaMemPoolAttrReleaseThreshold = 4, cudaMemPoolAttrReservedMemCurrent = 5, cudaMemPoolAttrUsedMemCurrent = 7 };
inline cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int) { return *pool = nullptr, cudaSuccess; }
inline cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t, cudaMemPoolAttr, void*) { return cudaSuccess; }
inline cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t, cudaMemPoolAttr, void* value) {
  return *static_cast<uint64_t*>(value) = 0, cudaSuccess;
}
// Events: every copy and kernel is done when its call returns, so an event has always passed.
using cudaEvent_t = struct EmulatedEvent*;
constexpr unsigned cudaEventDisableTiming = 2;
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return *e = nullptr, cudaSuccess; }
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventQuery(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventDestroy(cudaEvent_t) { return cudaSuccess; }
// Stream capture into graphs: while a capture is on, launches, copies and sets are recorded with their
// arguments as they are then (a graph replays exactly those), and a graph launch runs them in order.
namespace emu {
struct Graph {
  std::vector<std::function<void()>> nodes;
};
inline Graph*& capturing() {
  static Graph* graph = nullptr;
  return graph;
}
// Runs `op` now, or records it in the graph being captured.
inline void now_or_captured(std::function<void()> op) {
  if (Graph* g = capturing()) g->nodes.push_back(std::move(op));
  else op();
}
}  // namespace emu
using cudaGraph_t = emu::Graph*;
using cudaGraphExec_t = emu::Graph*;
enum cudaStreamCaptureMode { cudaStreamCaptureModeThreadLocal = 1 };
inline cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) {
  if (emu::capturing()) throw std::logic_error("a capture inside a capture");
  emu::capturing() = new emu::Graph;
  return cudaSuccess;
}
inline cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t* graph) {
  *graph = emu::capturing();
  emu::capturing() = nullptr;
  return cudaSuccess;
}
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  *exec = new emu::Graph(*graph);
  return cudaSuccess;
}
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t) {
  for (const auto& node : exec->nodes) node();
  return cudaSuccess;
}
inline cudaError_t cudaGraphDestroy(cudaGraph_t graph) { return delete graph, cudaSuccess; }
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) { return delete exec, cudaSuccess; }

inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  emu::now_or_captured([=] { std::memcpy(dst, src, bytes); });
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  emu::now_or_captured([=] { std::memset(dst, value, bytes); });
  return cudaSuccess;
}
inline cudaError_t cudaMemset2DAsync(void* dst, size_t pitch, int value, size_t width, size_t height, cudaStream_t) {
  emu::now_or_captured([=] {
    for (size_t r = 0; r < height; ++r) std::memset(static_cast<char*>(dst) + r * pitch, value, width);
  });
  return cudaSuccess;
}

namespace emu {

struct Fiber {
  static constexpr size_t kStack = 256 * 1024;
  ucontext_t context;
  std::unique_ptr<char[]> stack{new char[kStack]};  // not zeroed: only the pages a kernel uses are touched
  dim3 thread, block;
  unsigned block_index = 0;
  enum class Wait { None, Block, Grid } wait = Wait::None;
  bool done = false;
};

// What one lane hands to a warp's mma.sync.
struct MmaLane {
  uint32_t a[4], b[2];
  float d[4];
};

struct Scheduler {
  ucontext_t main;
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  const std::function<void()>* body = nullptr;
  std::vector<std::vector<unsigned char>> shared;  // each block's dynamic shared memory
  std::vector<std::vector<MmaLane>> mma;           // each block's lanes at an mma.sync
};
inline Scheduler& scheduler() {
  static Scheduler s;
  return s;
}

inline void fiber_entry() {
  Scheduler& s = scheduler();
  (*s.body)();
  s.current->done = true;  // returning resumes uc_link: the scheduler
}

inline void wait(Fiber::Wait kind) {
  Scheduler& s = scheduler();
  Fiber* self = s.current;
  self->wait = kind;
  swapcontext(&self->context, &s.main);
}
inline void sync_threads() { wait(Fiber::Wait::Block); }
// A grid-wide barrier: only in a cooperative launch, where every block of the grid runs at once.
inline void grid_sync() { wait(Fiber::Wait::Grid); }
inline void* dynamic_shared() { return scheduler().shared[scheduler().current->block_index].data(); }

// TF32 (cvt.rna.tf32.f32): 10 bits of mantissa, rounded to nearest with ties away from zero.
inline uint32_t to_tf32(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fffffffu;  // NaN
  if ((bits & 0x7f800000u) != 0x7f800000u) bits += 0x1000u;   // half of the 13 dropped bits (magnitude)
  return bits & 0xffffe000u;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, d = a.b + d, as a warp computes it: every lane hands
// over its fragments (the PTX ISA's layout for m16n8k8 .tf32, with group = lane / 4, quad = lane % 4:
// a0 A[group][quad], a1 A[group+8][quad], a2 A[group][quad+4], a3 A[group+8][quad+4]; b0 B[quad][group],
// b1 B[quad+4][group]; d0 D[group][2 quad], d1 D[group][2 quad+1], d2 D[group+8][2 quad], d3 D[group+8][2 quad+1])
// and gets its part of D; each product is exact (TF32 inputs), each sum rounded to fp32, in k order. The
// warps of a block call it together (as the kernels do), so the exchange waits at block barriers.
inline void mma_m16n8k8_tf32(float d[4], const uint32_t a[4], const uint32_t b[2]) {
  Scheduler& s = scheduler();
  std::vector<MmaLane>& lanes = s.mma[s.current->block_index];
  const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z), warp = tid / 32 * 32;
  MmaLane& me = lanes[tid];
  std::memcpy(me.a, a, sizeof me.a), std::memcpy(me.b, b, sizeof me.b), std::memcpy(me.d, d, sizeof me.d);
  sync_threads();
  const unsigned lane = tid % 32, group = lane / 4, quad = lane % 4;
  auto value = [](uint32_t bits) { float f; std::memcpy(&f, &bits, sizeof f); return f; };
  float out[4];
  for (unsigned r = 0; r < 4; ++r) {
    const unsigned row = group + (r >= 2 ? 8 : 0), col = 2 * quad + (r & 1);
    float acc = me.d[r];
    for (unsigned k = 0; k < 8; ++k) {
      const MmaLane& from_a = lanes[warp + (row % 8) * 4 + k % 4];
      const MmaLane& from_b = lanes[warp + col * 4 + k % 4];
      acc = std::fma(value(from_a.a[(row >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0)]), value(from_b.b[k >= 4 ? 1 : 0]), acc);
    }
    out[r] = acc;
  }
  sync_threads();
  std::memcpy(d, out, sizeof out);
}

// Runs the fibers of `blocks` (indices into the grid, x fastest) until all return, with CUDA's barrier
// semantics: a block's __syncthreads() releases when every thread of that block waits there, a grid_sync()
// when every thread of the grid does.
inline void run_blocks(dim3 grid, dim3 block, const std::vector<unsigned>& blocks) {
  Scheduler& s = scheduler();
  const unsigned threads = block.x * block.y * block.z, n = unsigned(blocks.size()) * threads;
  if (s.fibers.size() < n) s.fibers.resize(n);
  for (unsigned k = 0; k < n; ++k) {
    Fiber& f = s.fibers[k];
    const unsigned i = k % threads, b = blocks[k / threads];
    f.thread = dim3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
    f.block = dim3(b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y));
    f.block_index = k / threads;
    f.done = false, f.wait = Fiber::Wait::None;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = Fiber::kStack;
    f.context.uc_link = &s.main;
    makecontext(&f.context, fiber_entry, 0);
  }
  for (;;) {
    for (unsigned k = 0; k < n; ++k) {  // every fiber that can go on, until it waits or returns
      Fiber& f = s.fibers[k];
      if (f.done || f.wait != Fiber::Wait::None) continue;
      threadIdx = f.thread, blockIdx = f.block;
      s.current = &f;
      swapcontext(&s.main, &f.context);
    }
    bool live = false, released = false, at_grid = true;
    for (unsigned b = 0; b < blocks.size(); ++b) {
      unsigned finished = 0, at_block = 0;
      for (unsigned i = 0; i < threads; ++i) {
        const Fiber& f = s.fibers[b * threads + i];
        finished += f.done;
        at_block += !f.done && f.wait == Fiber::Wait::Block;
        at_grid = at_grid && (f.done || f.wait == Fiber::Wait::Grid);
      }
      live = live || finished < threads;
      if (at_block == 0) continue;
      if (at_block + finished < threads) throw std::logic_error("a block's threads wait at different barriers");
      if (finished) throw std::logic_error("__syncthreads() not reached by every thread of a block");
      for (unsigned i = 0; i < threads; ++i) s.fibers[b * threads + i].wait = Fiber::Wait::None;
      released = true;
    }
    if (!live) return;
    if (released) continue;
    if (!at_grid) throw std::logic_error("the threads of a grid wait at different barriers");
    for (unsigned k = 0; k < n; ++k)
      if (s.fibers[k].done) throw std::logic_error("grid_sync() not reached by every thread of the grid");
    for (unsigned k = 0; k < n; ++k) s.fibers[k].wait = Fiber::Wait::None;
  }
}

// Runs body once per thread of every block of the grid: block after block, or (cooperative) all blocks at
// once, interleaved at every barrier. Each block gets `shared_bytes` of dynamic shared memory (NaN bytes, as
// device memory). A static __shared__ array is one for all blocks: only kernels without grid_sync() use them.
inline void run_grid(dim3 grid, dim3 block, const std::function<void()>& body, bool cooperative = false,
                     size_t shared_bytes = 0) {
  Scheduler& s = scheduler();
  s.body = &body;
  gridDim = grid, blockDim = block;
  const unsigned blocks = grid.x * grid.y * grid.z;
  s.shared.assign(cooperative ? blocks : 1, std::vector<unsigned char>(shared_bytes, 0xff));
  s.mma.assign(cooperative ? blocks : 1, std::vector<MmaLane>(block.x * block.y * block.z));
  if (cooperative) {
    std::vector<unsigned> all(blocks);
    for (unsigned b = 0; b < blocks; ++b) all[b] = b;
    run_blocks(grid, block, all);
    return;
  }
  for (unsigned b = 0; b < blocks; ++b) {
    std::fill(s.shared[0].begin(), s.shared[0].end(), 0xff);
    run_blocks(grid, block, {b});
  }
}

}  // namespace emu

namespace wnlstm::cuda {
// The emulated launch: arguments are converted to the kernel's parameter types, as <<<...>>> does.
template <typename... Params, typename... Args>
void launch(const char*, void (*kernel)(Params...), dim3 grid, unsigned block, cudaStream_t, Args&&... args) {
  emu::now_or_captured([kernel, grid, block, values = std::tuple<Params...>(Params(args)...)] {
    const std::function<void()> body = [&] { std::apply(kernel, values); };
    emu::run_grid(grid, dim3(block), body);
  });
}
// A cooperative launch: every block at once (so grid_sync() can wait for all), with dynamic shared memory.
template <typename... Params, typename... Args>
bool launch_cooperative(const char*, void (*kernel)(Params...), dim3 grid, unsigned block, size_t shared_bytes,
                        cudaStream_t, Args&&... args) {
  emu::now_or_captured([kernel, grid, block, shared_bytes, values = std::tuple<Params...>(Params(args)...)] {
    const std::function<void()> body = [&] { std::apply(kernel, values); };
    emu::run_grid(grid, dim3(block), body, true, shared_bytes);
  });
  return true;
}
}  // namespace wnlstm::cuda
