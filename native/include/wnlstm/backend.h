// A backend's memory and the ops of ops.h over it. The model runtime (model.h) runs a whole training step
// through this interface, so the same code runs on the CPU (host memory, the host ops) and on CUDA (device
// memory, kernels on one stream per device).
//
// Rules: every T* argument of an op lives in the backend's memory; token ids and targets (int32_t*) are host
// memory, which the backend copies where it needs them. Same shapes and in/out conventions as ops.h. Ops are
// queued in order; download() and the ops that return a number wait for the work before them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "wnlstm/ops.h"

namespace wnlstm {

class Memory {
 public:
  virtual ~Memory() = default;
  // "cpu" or "cuda:<index>".
  virtual std::string device() const = 0;
  // True when the backend's memory is host memory (no copies needed to read it).
  virtual bool is_host() const = 0;
  // Contents undefined; ERR_WNLSTM_OUT_OF_MEMORY when it cannot.
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* p) noexcept = 0;
  virtual void upload(void* dst, const void* host, size_t bytes) = 0;
  // Complete when it returns.
  virtual void download(void* host, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void zero(void* dst, size_t bytes) = 0;
  // Returns when the work queued on this device so far is done (a no-op on the CPU, where it always is).
  virtual void synchronize() = 0;
};

// n elements of E in a backend's memory, grown on demand (contents undefined after it grows), freed with
// its owner.
template <typename E>
class Buffer {
 public:
  explicit Buffer(std::shared_ptr<Memory> memory) : memory_(std::move(memory)) {}
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& o) noexcept : memory_(o.memory_), ptr_(o.ptr_), size_(o.size_), capacity_(o.capacity_) {
    o.ptr_ = nullptr, o.size_ = o.capacity_ = 0;
  }
  ~Buffer() { release(); }

  E* resize(int64_t n) {
    if (n > capacity_) {
      release();
      ptr_ = static_cast<E*>(memory_->allocate(size_t(n) * sizeof(E)));
      capacity_ = n;
    }
    size_ = n;
    return ptr_;
  }
  void release() {
    if (ptr_) memory_->release(ptr_);
    ptr_ = nullptr, size_ = capacity_ = 0;
  }
  E* data() const { return ptr_; }
  int64_t size() const { return size_; }
  int64_t bytes() const { return capacity_ * int64_t(sizeof(E)); }

 private:
  std::shared_ptr<Memory> memory_;
  E* ptr_ = nullptr;
  int64_t size_ = 0, capacity_ = 0;
};

template <typename T>
class Backend : public Memory {
 public:
  virtual void optimizer_update(const OptimizerStep& step, T* params, const T* grads, T* s1, T* s2, int64_t n) = 0;
  virtual double sum_squares(const T* a, int64_t n) = 0;
  virtual double softmax_cross_entropy(T* logits, const int32_t* targets, int64_t N, int64_t V, double grad_scale) = 0;
  // Squared error of pred [N,O] against target [N,O] over the rows whose keep[r] is not 0 (keep: host
  // memory, nullptr = every row). Returns the sum (double); overwrites pred with d(sum * grad_scale)/d pred,
  // 0 on the skipped rows.
  virtual double squared_error(T* pred, const T* target, const int32_t* keep, int64_t N, int64_t O,
                               double grad_scale) = 0;
  virtual void embedding_forward(const T* table, int64_t D, const int32_t* ids, int64_t N, T* out) = 0;
  virtual void embedding_backward(const T* dy, int64_t D, const int32_t* ids, int64_t N, T* dtable) = 0;
  virtual void dense_forward(const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O, T* y) = 0;
  virtual void dense_backward(const T* x, const T* W, const T* dy, int64_t N, int64_t I, int64_t O, T* dW, T* db,
                              T* dx) = 0;
  // The mask is drawn on the host (the same sfc32 draws as ops.h's dropout, so every backend gives the same
  // masks for a seed) and applied where x lives.
  virtual void dropout(T* x, T* mask, int64_t n, double rate, Rng& rng) = 0;
  virtual void apply_mask(T* x, const T* mask, int64_t n) = 0;
  // y[i] += x[i].
  virtual void add(T* y, const T* x, int64_t n) = 0;
  // Each sequence in time-reversed order within its length (a bidirectional layer's backward direction):
  // x, out [steps,B,D]; out[t,b] = x[len_b - 1 - t, b] for t < len_b, else 0. lengths: host memory
  // (nullptr = all steps). out must not alias x.
  virtual void reverse_sequences(const T* x, const int32_t* lengths, int64_t steps, int64_t B, int64_t D, T* out) = 0;
  // out [N, Da + Db] = the columns of a [N,Da], then those of b [N,Db]; split_columns undoes it.
  virtual void concat_columns(const T* a, int64_t Da, const T* b, int64_t Db, int64_t N, T* out) = 0;
  virtual void split_columns(const T* in, int64_t Da, int64_t Db, int64_t N, T* a, T* b) = 0;
};

// A new backend for `device` ("cpu" or "cuda:<index>"); each model has its own (its scratch is not shared).
// ERR_WNLSTM_BACKEND_UNAVAILABLE for CUDA in a build or on a machine without it.
template <typename T>
std::shared_ptr<Backend<T>> make_backend(const std::string& device);
template <typename T>
std::shared_ptr<Backend<T>> make_cpu_backend();
template <typename T>
std::shared_ptr<Backend<T>> make_cuda_backend(int device);

}  // namespace wnlstm
