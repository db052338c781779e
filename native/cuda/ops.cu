// The CUDA backend of backend.h: the model runtime's memory on the device and the ops of ops.h as kernels,
// all queued on the device's stream. Results equal the CPU backend's up to summation order (the
// reductions run as trees here) and the device's exp; the embedding gradient and the bias gradient add in
// the CPU's order, and dropout draws its masks on the host with the CPU's generator.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "device.h"
#include "gemm.cuh"
#include "wnlstm/backend.h"
#include "wnlstm/cell.h"

namespace wnlstm::cuda {
namespace {

constexpr int kThreads = 256;

__device__ inline float sqrt_(float x) { return sqrtf(x); }
__device__ inline double sqrt_(double x) { return sqrt(x); }
__device__ inline float exp_(float x) { return expf(x); }
__device__ inline double exp_(double x) { return exp(x); }

// The update's constants, computed on the host as the CPU backend does (ops.cc).
template <typename T>
struct Update {
  OptimizerKind kind;
  T lr, wd, scale, eps, momentum, beta1, beta2, c2, step, decay, l2;
  bool first, nesterov;
};

template <typename T>
__global__ void optimizer_update_kernel(Update<T> u, T* p, const T* grads, T* s1, T* s2, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    switch (u.kind) {
      case OptimizerKind::Sgd: {
        T g = grads[i] * u.scale + u.wd * p[i];
        if (u.momentum != T(0)) {
          s1[i] = u.first ? g : u.momentum * s1[i] + g;
          g = u.nesterov ? g + u.momentum * s1[i] : s1[i];
        }
        p[i] -= u.lr * g;
        break;
      }
      case OptimizerKind::Adam:
      case OptimizerKind::AdamW: {
        const T g = grads[i] * u.scale + u.l2 * p[i];
        s1[i] = u.beta1 * s1[i] + (T(1) - u.beta1) * g;
        s2[i] = u.beta2 * s2[i] + (T(1) - u.beta2) * g * g;
        p[i] = p[i] * u.decay - u.step * s1[i] / (sqrt_(s2[i]) / u.c2 + u.eps);
        break;
      }
      case OptimizerKind::RmsProp: {
        const T g = grads[i] * u.scale + u.wd * p[i];
        s1[i] = u.beta1 * s1[i] + (T(1) - u.beta1) * g * g;
        const T d = g / (sqrt_(s1[i]) + u.eps);
        if (u.momentum != T(0)) {
          s2[i] = u.momentum * s2[i] + d;
          p[i] -= u.lr * s2[i];
        } else {
          p[i] -= u.lr * d;
        }
        break;
      }
      case OptimizerKind::Adagrad: {
        const T g = grads[i] * u.scale + u.wd * p[i];
        s1[i] += g * g;
        p[i] -= u.lr * g / (sqrt_(s1[i]) + u.eps);
        break;
      }
    }
  }
}

// Tree sum of one value per thread over the block (kThreads threads); thread 0 gets the total.
template <typename A>
__device__ inline A block_sum(A v, A* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) shared[threadIdx.x] += shared[threadIdx.x + half];
    __syncthreads();
  }
  const A total = shared[0];
  __syncthreads();  // shared is reused by the caller's next reduction
  return total;
}

template <typename A>
__device__ inline A block_max(A v, A* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half && shared[threadIdx.x + half] > shared[threadIdx.x])
      shared[threadIdx.x] = shared[threadIdx.x + half];
    __syncthreads();
  }
  const A total = shared[0];
  __syncthreads();
  return total;
}

constexpr int64_t kSumBlock = 4096;  // as the CPU: blocks of 4096 summed in T, the blocks in double

template <typename T>
__global__ void __launch_bounds__(kThreads) block_squares_kernel(const T* a, int64_t n, double* partial) {
  __shared__ T shared[kThreads];
  const int64_t k = blockIdx.x, end = (k + 1) * kSumBlock < n ? (k + 1) * kSumBlock : n;
  T acc = T(0);
  for (int64_t i = k * kSumBlock + threadIdx.x; i < end; i += kThreads) acc += a[i] * a[i];
  const T total = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[k] = double(total);
}

// out[0] = sum of v[0, n) in double, one block.
__global__ void __launch_bounds__(kThreads) sum_kernel(const double* v, int64_t n, double* out) {
  __shared__ double shared[kThreads];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) acc += v[i];
  const double total = block_sum(acc, shared);
  if (threadIdx.x == 0) out[0] = total;
}

// One block per row: max, exp and sum, the row's loss (double) and the gradient in place.
template <typename T>
__global__ void __launch_bounds__(kThreads) softmax_cross_entropy_kernel(T* logits, const int32_t* targets, int64_t N,
                                                                         int64_t V, T scale, double* row_loss) {
  __shared__ T shared[kThreads];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    T* z = logits + r * V;
    const int32_t target = targets[r];
    if (target < 0) {
      for (int64_t v = threadIdx.x; v < V; v += kThreads) z[v] = T(0);
      if (threadIdx.x == 0) row_loss[r] = 0;
      continue;  // the same for every thread of the block
    }
    const T target_logit = z[target];
    T m = z[0];
    for (int64_t v = threadIdx.x; v < V; v += kThreads) m = z[v] > m ? z[v] : m;
    const T max = block_max(m, shared);
    T acc = T(0);
    for (int64_t v = threadIdx.x; v < V; v += kThreads) {
      z[v] = exp_(z[v] - max);
      acc += z[v];
    }
    const T sum = block_sum(acc, shared);
    const T inv = scale / sum;
    for (int64_t v = threadIdx.x; v < V; v += kThreads) z[v] = v == target ? z[v] * inv - scale : z[v] * inv;
    if (threadIdx.x == 0) row_loss[r] = log(double(sum)) - (double(target_logit) - double(max));
  }
}

template <typename T>
__global__ void gather_rows_kernel(const T* table, int64_t D, const int32_t* ids, int64_t N, T* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * D; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = table[int64_t(ids[i / D]) * D + i % D];
}

// groups: [U] table rows, [U + 1] starts into order, [N] positions grouped by row in increasing order.
// Each (row, column) adds its positions' gradients in that order: the CPU's sum, without atomics.
template <typename T>
__global__ void scatter_add_rows_kernel(const T* dy, int64_t D, const int32_t* groups, int64_t U, T* dtable) {
  const int32_t *rows = groups, *starts = groups + U, *order = groups + 2 * U + 1;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < U * D; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t u = i / D, k = i % D;
    T* cell = dtable + int64_t(rows[u]) * D + k;
    T acc = *cell;
    for (int32_t j = starts[u]; j < starts[u + 1]; ++j) acc += dy[int64_t(order[j]) * D + k];
    *cell = acc;
  }
}

template <typename T>
__global__ void broadcast_rows_kernel(const T* b, int64_t N, int64_t O, T* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * O; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = b[i % O];
}

// db[j] += sum_n dy[n, j], one thread per column, rows in order (the CPU's sum).
template <typename T>
__global__ void add_column_sums_kernel(const T* dy, int64_t N, int64_t O, T* db) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= O) return;
  T acc = db[j];
  for (int64_t n = 0; n < N; ++n) acc += dy[n * O + j];
  db[j] = acc;
}

template <typename T>
__global__ void dropout_kernel(T* x, T* mask, const uint8_t* keep, int64_t n, T scale) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    mask[i] = keep[i] ? scale : T(0);
    x[i] *= mask[i];
  }
}

template <typename T>
__global__ void multiply_kernel(T* x, const T* mask, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] *= mask[i];
}

template <typename T>
__global__ void add_kernel(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

template <typename T>
__global__ void reverse_sequences_kernel(const T* x, const int32_t* lengths, int64_t steps, int64_t B, int64_t D, T* out) {
  const int64_t n = steps * B * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / (B * D), b = (i / D) % B, d = i % D, len = lengths ? lengths[b] : steps;
    out[i] = t < len ? x[((len - 1 - t) * B + b) * D + d] : T(0);
  }
}

// concat: out [N, Da+Db] from a and b; split (concat = false): a and b from out.
template <typename T>
__global__ void columns_kernel(T* a, int64_t Da, T* b, int64_t Db, int64_t N, T* out, bool concat) {
  const int64_t W = Da + Db, n = N * W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / W, c = i % W;
    T* part = c < Da ? a + r * Da + c : b + r * Db + (c - Da);
    if (concat) out[i] = *part;
    else *part = out[i];
  }
}

// One block per row: the row's squared error (double) and the gradient in place; skipped rows get zeros.
template <typename T>
__global__ void __launch_bounds__(kThreads) squared_error_kernel(T* pred, const T* target, const int32_t* keep,
                                                                 int64_t N, int64_t O, T scale, double* row_loss) {
  __shared__ double shared[kThreads];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    T* p = pred + r * O;
    const bool kept = !keep || keep[r];
    double acc = 0;
    for (int64_t o = threadIdx.x; o < O; o += kThreads) {
      const T d = p[o] - target[r * O + o];
      acc += double(d) * double(d);
      p[o] = kept ? T(2) * scale * d : T(0);
    }
    const double total = block_sum(acc, shared);
    if (threadIdx.x == 0) row_loss[r] = kept ? total : 0.0;
  }
}

template <typename T>
class CudaBackend final : public Backend<T> {
 public:
  explicit CudaBackend(int device) : device_(device) {}

  std::string device() const override { return "cuda:" + std::to_string(device_); }
  bool is_host() const override { return false; }

  void* allocate(size_t bytes) override {
    use_device();
    void* p = nullptr;
    check(cudaMallocAsync(&p, bytes ? bytes : 1, stream_), ("cudaMallocAsync of " + std::to_string(bytes >> 20) + " MiB").c_str());
    return p;
  }
  void release(void* p) noexcept override {  // from any thread (a tensor's finalizer), with any device current
    const DeviceGuard guard(device_);
    cudaFreeAsync(p, stream_);
  }
  void upload(void* dst, const void* host, size_t bytes) override {
    use_device();
    staging_.upload(dst, host, bytes);
  }
  void download(void* host, const void* src, size_t bytes) override {
    use_device();
    staging_.download(host, src, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    use_device();
    if (bytes) check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "copy on the device");
  }
  void zero(void* dst, size_t bytes) override {
    use_device();
    if (bytes) check(cudaMemsetAsync(dst, 0, bytes, stream_), "zero device memory");
  }
  void synchronize() override {
    use_device();
    staging_.synchronize();  // waits without holding the staging's lock: other threads' uploads go on
  }

  void optimizer_update(const OptimizerStep& s, T* p, const T* g, T* s1, T* s2, int64_t n) override {
    use_device();
    Update<T> u{};
    u.kind = s.kind, u.lr = T(s.lr), u.wd = T(s.weight_decay), u.scale = T(s.grad_scale), u.eps = T(s.eps);
    u.momentum = T(s.momentum), u.beta1 = T(s.beta1), u.beta2 = T(s.beta2);
    u.first = s.t == 1, u.nesterov = s.nesterov;
    u.c2 = T(std::sqrt(1 - std::pow(s.beta2, double(s.t))));
    u.step = T(s.lr) / T(1 - std::pow(s.beta1, double(s.t)));
    const bool decoupled = s.kind == OptimizerKind::AdamW;
    u.decay = decoupled ? T(1) - u.lr * u.wd : T(1), u.l2 = decoupled ? T(0) : u.wd;
    launch("optimizer update kernel", optimizer_update_kernel<T>, grid_for(n), kThreads, stream_, u, p, g, s1, s2, n);
  }

  double sum_squares(const T* a, int64_t n) override {
    use_device();
    const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
    if (blocks == 0) return 0;
    double* partial = partial_.resize(blocks + 1);
    launch("sum of squares kernel", block_squares_kernel<T>, unsigned(blocks), kThreads, stream_, a, n, partial);
    return total(partial, blocks);
  }

  double softmax_cross_entropy(T* logits, const int32_t* targets, int64_t N, int64_t V, double scale) override {
    use_device();
    if (N == 0) return 0;
    int32_t* t = ids_.resize(N);
    staging_.upload(t, targets, size_t(N) * sizeof(int32_t));
    double* losses = partial_.resize(N + 1);
    launch("softmax cross-entropy kernel", softmax_cross_entropy_kernel<T>, unsigned(std::min<int64_t>(N, 65535)),
           kThreads, stream_, logits, t, N, V, T(scale), losses);
    return total(losses, N);
  }

  double squared_error(T* pred, const T* target, const int32_t* keep, int64_t N, int64_t O, double scale) override {
    use_device();
    if (N == 0) return 0;
    int32_t* k = nullptr;
    if (keep) staging_.upload(k = ids_.resize(N), keep, size_t(N) * sizeof(int32_t));
    double* losses = partial_.resize(N + 1);
    launch("squared error kernel", squared_error_kernel<T>, unsigned(std::min<int64_t>(N, 65535)), kThreads, stream_,
           pred, target, k, N, O, T(scale), losses);
    return total(losses, N);
  }

  void embedding_forward(const T* table, int64_t D, const int32_t* ids, int64_t N, T* out) override {
    use_device();
    int32_t* d_ids = ids_.resize(N);
    staging_.upload(d_ids, ids, size_t(N) * sizeof(int32_t));
    launch("embedding forward kernel", gather_rows_kernel<T>, grid_for(N * D), kThreads, stream_, table, D, d_ids, N, out);
  }

  void embedding_backward(const T* dy, int64_t D, const int32_t* ids, int64_t N, T* dtable) override {
    use_device();
    // The positions of each row in increasing order (a counting sort on the host, where the ids are).
    std::vector<int32_t>& g = groups_;
    int32_t highest = 0;
    for (int64_t n = 0; n < N; ++n) highest = std::max(highest, ids[n]);
    count_.assign(size_t(highest) + 2, 0);
    for (int64_t n = 0; n < N; ++n) ++count_[size_t(ids[n]) + 1];
    int64_t U = 0;
    for (size_t v = 1; v < count_.size(); ++v) U += count_[v] > 0;
    g.assign(size_t(2 * U + 1 + N), 0);
    int32_t *rows = g.data(), *starts = g.data() + U, *order = g.data() + 2 * U + 1;
    for (size_t v = 1, u = 0; v < count_.size(); ++v) {
      const int32_t c = count_[v];
      count_[v] = count_[v - 1] + c;  // now: where row v-1's positions start
      if (c > 0) rows[u] = int32_t(v - 1), starts[u] = count_[v - 1], ++u;
    }
    starts[U] = int32_t(N);
    for (int64_t n = 0; n < N; ++n) order[count_[size_t(ids[n])]++] = int32_t(n);
    int32_t* d_groups = groups_device_.resize(int64_t(g.size()));
    staging_.upload(d_groups, g.data(), g.size() * sizeof(int32_t));
    launch("embedding backward kernel", scatter_add_rows_kernel<T>, grid_for(U * D), kThreads, stream_, dy, D,
           d_groups, U, dtable);
  }

  void dense_forward(const T* x, const T* W, const T* b, int64_t N, int64_t I, int64_t O, T* y) override {
    use_device();
    launch("bias rows kernel", broadcast_rows_kernel<T>, grid_for(N * O), kThreads, stream_, b, N, O, y);
    gemm<T>(stream_, false, false, N, O, I, x, I, W, O, nullptr, true, y, O);
  }

  void dense_backward(const T* x, const T* W, const T* dy, int64_t N, int64_t I, int64_t O, T* dW, T* db,
                      T* dx) override {
    use_device();
    gemm<T>(stream_, true, false, I, O, N, x, I, dy, O, nullptr, true, dW, O);
    launch("bias gradient kernel", add_column_sums_kernel<T>, unsigned((O + kThreads - 1) / kThreads), kThreads,
           stream_, dy, N, O, db);
    if (dx) gemm<T>(stream_, false, true, N, I, O, dy, O, W, O, nullptr, false, dx, I);
  }

  void dropout(T* x, T* mask, int64_t n, double rate, Rng& rng) override {
    use_device();
    const double keep = 1 - rate;
    keep_.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) keep_[i] = rng.uniform() < keep;
    uint8_t* d_keep = keep_device_.resize(n);
    staging_.upload(d_keep, keep_.data(), size_t(n));
    launch("dropout kernel", dropout_kernel<T>, grid_for(n), kThreads, stream_, x, mask, d_keep, n, T(1 / keep));
  }

  void apply_mask(T* x, const T* mask, int64_t n) override {
    use_device();
    launch("mask kernel", multiply_kernel<T>, grid_for(n), kThreads, stream_, x, mask, n);
  }

  void add(T* y, const T* x, int64_t n) override {
    use_device();
    launch("add kernel", add_kernel<T>, grid_for(n), kThreads, stream_, y, x, n);
  }

  void reverse_sequences(const T* x, const int32_t* lengths, int64_t steps, int64_t B, int64_t D, T* out) override {
    use_device();
    int32_t* d_lengths = nullptr;
    if (lengths) staging_.upload(d_lengths = ids_.resize(B), lengths, size_t(B) * sizeof(int32_t));
    launch("reverse sequences kernel", reverse_sequences_kernel<T>, grid_for(steps * B * D), kThreads, stream_, x,
           d_lengths, steps, B, D, out);
  }
  void concat_columns(const T* a, int64_t Da, const T* b, int64_t Db, int64_t N, T* out) override {
    use_device();
    launch("concat columns kernel", columns_kernel<T>, grid_for(N * (Da + Db)), kThreads, stream_, const_cast<T*>(a), Da,
           const_cast<T*>(b), Db, N, out, true);
  }
  void split_columns(const T* in, int64_t Da, int64_t Db, int64_t N, T* a, T* b) override {
    use_device();
    launch("split columns kernel", columns_kernel<T>, grid_for(N * (Da + Db)), kThreads, stream_, a, Da, b, Db, N,
           const_cast<T*>(in), false);
  }

 private:
  void use_device() { check(cudaSetDevice(device_), "cudaSetDevice"); }

  // The sum of v[0, n) (double, on the device), brought to the host: waits for the stream.
  double total(double* v, int64_t n) {
    launch("sum kernel", sum_kernel, 1, kThreads, stream_, v, n, v + n);
    double out = 0;
    staging_.download(&out, v + n, sizeof(double));
    return out;
  }

  int device_;
  cudaStream_t stream_ = device_stream(device_);
  DeviceBuffer<double> partial_;
  DeviceBuffer<int32_t> ids_, groups_device_;
  DeviceBuffer<uint8_t> keep_device_;
  std::vector<int32_t> groups_, count_;
  std::vector<uint8_t> keep_;
  Staging staging_{stream_};  // declared last, so destroyed first: it waits for the queued copies
};

}  // namespace
}  // namespace wnlstm::cuda

namespace wnlstm {
template <typename T>
std::shared_ptr<Backend<T>> make_cuda_backend(int device) {
  cuda::require_device(device);
  const cuda::DeviceGuard guard(device);
  return std::make_shared<cuda::CudaBackend<T>>(device);
}
template std::shared_ptr<Backend<float>> make_cuda_backend<float>(int);
template std::shared_ptr<Backend<double>> make_cuda_backend<double>(int);
}  // namespace wnlstm
