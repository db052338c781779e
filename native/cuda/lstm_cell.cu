// The CUDA backend: TF's (WeightNorm)LSTMCell over a sequence, forward and backward, with the same
// contract (cell.h) and results as the CPU backend. Handwritten kernels only (no cuBLAS or cuDNN).
//
// Forward: the input part x.Vx of all T steps is one GEMM; then one fused kernel per step computes h.Vh
// for a tile of rows and units (all four gates), applies the weight-norm column scales s = g/|v| after the
// products, and does the gates, cell, clipping, peepholes and output in its epilogue. No normalised copy
// of the weights is ever built. Backward runs the steps in reverse with fused pointwise kernels and GEMMs
// that scale by s on the fly, then computes the weight gradients as large GEMMs over all T*B rows, and
// turns them into dV and dg in a per-column kernel (SPEC section 2).
//
// Weights, gradients, saved activations and states live on the device across steps and calls. The host
// forms (forward, backward) copy their arguments through pinned staging; the device forms, which the model
// runtime uses, take device buffers and queue everything on the device's stream without waiting.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "device.h"
#include "gemm.cuh"
#include "wnlstm/cell.h"

namespace wnlstm::cuda {
namespace {

constexpr double kNormEpsilon = 1e-12;  // TF's l2_normalize: rsqrt(max(sum v^2, eps))

// ---- Activations (precise library functions: the CPU backend's float approximations are within a few ulp).

__device__ inline float exp_(float x) { return expf(x); }
__device__ inline double exp_(double x) { return exp(x); }
__device__ inline float tanh_(float x) { return tanhf(x); }
__device__ inline double tanh_(double x) { return tanh(x); }

template <typename T>
__device__ inline T sigmoid(T x) { return T(1) / (T(1) + exp_(-x)); }

template <Activation A, typename T>
__device__ inline T activate(T x) {
  if constexpr (A == Activation::Tanh) return tanh_(x);
  if constexpr (A == Activation::Sigmoid) return sigmoid(x);
  if constexpr (A == Activation::Relu) return x > T(0) ? x : T(0);
  if constexpr (A == Activation::Softsign) return x / (T(1) + (x < T(0) ? -x : x));
  if constexpr (A == Activation::Linear) return x;
}

// The derivative in terms of the activation's output y = act(x).
template <Activation A, typename T>
__device__ inline T activate_grad(T y) {
  if constexpr (A == Activation::Tanh) return T(1) - y * y;
  if constexpr (A == Activation::Sigmoid) return y * (T(1) - y);
  if constexpr (A == Activation::Relu) return y > T(0) ? T(1) : T(0);
  if constexpr (A == Activation::Softsign) {
    const T m = T(1) - (y < T(0) ? -y : y);
    return m * m;
  }
  if constexpr (A == Activation::Linear) return T(1);
}

template <typename T>
__device__ inline T clip(T x, T c) { return x < -c ? -c : (x > c ? c : x); }

__device__ inline bool finished(const int32_t* seq_len, int64_t t, int64_t b) { return seq_len && t >= seq_len[b]; }

// ---- Small kernels.

template <typename T>
__global__ void fill_kernel(T* p, int64_t n, T value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = value;
}

// ---- Reductions over rows, for every column: blocks of 32 columns x 8 row lanes (a warp reads 32
// consecutive columns of one row). Lane l adds rows l, l + 8, ... in double; the lanes are then added in a
// fixed order, so that every run gives the same result.
constexpr int kColumns = 32, kLanes = 8, kReduceThreads = kColumns * kLanes;

struct ReduceThread {
  int column, lane;
  __device__ ReduceThread() : column(int(threadIdx.x) % kColumns), lane(int(threadIdx.x) / kColumns) {}
};

// The total over the lanes of each lane's partial sum, for every thread of the column.
__device__ inline double lanes_total(double partial, double (*shared)[kColumns], const ReduceThread& me) {
  shared[me.lane][me.column] = partial;
  __syncthreads();
  double total = 0;
  for (int l = 0; l < kLanes; ++l) total += shared[l][me.column];
  __syncthreads();  // shared is reused by the next reduction
  return total;
}

inline unsigned column_blocks(int64_t cols) { return unsigned((cols + kColumns - 1) / kColumns); }

// sumsq[j] = sum_r V[r,j]^2 (in double), s[j] = g[j] / |v_j|, for V [rows, cols].
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) column_norms_kernel(const T* V, int64_t rows, int64_t cols,
                                                                      const T* g, T* sumsq, T* s) {
  __shared__ double shared[kLanes][kColumns];
  const ReduceThread me;
  const int64_t j = int64_t(blockIdx.x) * kColumns + me.column;
  double acc = 0;
  if (j < cols)
    for (int64_t r = me.lane; r < rows; r += kLanes) acc += double(V[r * cols + j]) * double(V[r * cols + j]);
  const double total = lanes_total(acc, shared, me);
  if (me.lane == 0 && j < cols) {
    sumsq[j] = T(total);
    s[j] = T(double(g[j]) / sqrt(total > kNormEpsilon ? total : kNormEpsilon));
  }
}

// dW (in place in dV) -> dV, and dg, per column: dg = (dW . v)/|v|, dV = s dW - (g dg/|v|^2) v.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) weight_norm_grad_kernel(const T* V, int64_t rows, int64_t cols,
                                                                          const T* g, const T* sumsq, const T* s,
                                                                          T* dV, T* dg) {
  __shared__ double shared[kLanes][kColumns];
  const ReduceThread me;
  const int64_t j = int64_t(blockIdx.x) * kColumns + me.column;
  double acc = 0;
  if (j < cols)
    for (int64_t r = me.lane; r < rows; r += kLanes) acc += double(dV[r * cols + j]) * double(V[r * cols + j]);
  const double dot = lanes_total(acc, shared, me);
  if (j >= cols) return;
  const double ss = double(sumsq[j]), norm = sqrt(ss > kNormEpsilon ? ss : kNormEpsilon);
  if (me.lane == 0) dg[j] = T(dot / norm);
  // Below eps, |v| is a constant.
  const double coef = ss >= kNormEpsilon ? double(g[j]) * dot / (norm * norm * norm) : 0.0, sj = double(s[j]);
  for (int64_t r = me.lane; r < rows; r += kLanes)
    dV[r * cols + j] = T(sj * double(dV[r * cols + j]) - coef * double(V[r * cols + j]));
}

// out[j] = sum_r M[r, j] (in double).
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) column_sums_kernel(const T* M, int64_t rows, int64_t cols, T* out) {
  __shared__ double shared[kLanes][kColumns];
  const ReduceThread me;
  const int64_t j = int64_t(blockIdx.x) * kColumns + me.column;
  double acc = 0;
  if (j < cols)
    for (int64_t r = me.lane; r < rows; r += kLanes) acc += double(M[r * cols + j]);
  const double total = lanes_total(acc, shared, me);
  if (me.lane == 0 && j < cols) out[j] = T(total);
}

// Peephole gradients over all T*B rows: dwi = sum dz_i c_prev, dwf = sum dz_f c_prev, dwo = sum dz_o c_next.
template <typename T>
__global__ void __launch_bounds__(kReduceThreads) peephole_grads_kernel(const T* dz, const T* cs, int64_t rows,
                                                                        int64_t B, int64_t H, T* dwi, T* dwf,
                                                                        T* dwo) {
  __shared__ double shared[kLanes][kColumns];
  const ReduceThread me;
  const int64_t u = int64_t(blockIdx.x) * kColumns + me.column, G = 4 * H;
  double si = 0, sf = 0, so = 0;
  if (u < H) {
    for (int64_t r = me.lane; r < rows; r += kLanes) {
      const double cp = double(cs[r * H + u]), cn = double(cs[(r + B) * H + u]);
      si += double(dz[r * G + u]) * cp;
      sf += double(dz[r * G + 2 * H + u]) * cp;
      so += double(dz[r * G + 3 * H + u]) * cn;
    }
  }
  const double ti = lanes_total(si, shared, me), tf = lanes_total(sf, shared, me), to = lanes_total(so, shared, me);
  if (me.lane == 0 && u < H) dwi[u] = T(ti), dwf[u] = T(tf), dwo[u] = T(to);
}

// ---- The fused forward step.

template <typename T>
struct StepForward {
  int64_t B, H, P, t;
  T* z;                       // [B,G] in: x.Vx of this step (unscaled); out: gate activations (in place)
  const T *h_prev, *c_prev;   // [B,P], [B,H]
  const T* vh;                // [P,G] recurrent block of the kernel (unnormalised)
  const T *s0, *s1, *bias;    // [G]
  const T *wi, *wf, *wo;      // [H] peepholes, or null
  T forget_bias, cell_clip;   // cell_clip = +inf when none
  const int32_t* seq_len;     // [B] or null
  T *c_raw, *c_next;          // [B,H] out
  T* hh;                      // [B,H] out: sigma(o) act(c); without a projection this is h_next
  T* y;                       // [B,P] out (this step's outputs), only without a projection
  bool proj;
};

// The pointwise part of a step for row b, unit u, given the unscaled products h.Vh of its four gates: the
// weight-norm scales, bias, gates, cell, clipping, peepholes and outputs.
template <typename T, Activation A>
__device__ inline void cell_forward(const StepForward<T>& p, int64_t b, int64_t u, const T* rec) {
  const int64_t H = p.H, G = 4 * H, P = p.P;
  const T wi = p.wi ? p.wi[u] : T(0), wf = p.wf ? p.wf[u] : T(0), wo = p.wo ? p.wo[u] : T(0);
  T* zr = p.z + b * G;
  T pre[4];
  for (int g = 0; g < 4; ++g) {
    const int64_t col = g * H + u;
    pre[g] = zr[col] * p.s0[col] + rec[g] * p.s1[col] + p.bias[col];
  }
  const T c = p.c_prev[b * H + u];
  const T gi = sigmoid(pre[0] + wi * c);
  const T aj = activate<A>(pre[1]);
  const T gf = sigmoid(pre[2] + p.forget_bias + wf * c);
  const T raw = c * gf + gi * aj;
  const T clipped = clip(raw, p.cell_clip);
  const T go = sigmoid(pre[3] + wo * clipped);
  const T out = go * activate<A>(clipped);
  zr[u] = gi, zr[H + u] = aj, zr[2 * H + u] = gf, zr[3 * H + u] = go;
  if (p.c_raw) p.c_raw[b * H + u] = raw;
  const bool done = finished(p.seq_len, p.t, b);  // past its length: state carried, output zero
  p.c_next[b * H + u] = done ? c : clipped;
  if (p.proj) {
    p.hh[b * H + u] = out;
  } else {
    const T h = done ? p.h_prev[b * P + u] : out;
    p.hh[b * H + u] = h;
    p.y[b * P + u] = done ? T(0) : h;
  }
}

constexpr int kRows = 16, kUnits = 32, kDepth = 32, kStepThreads = 256;  // tile: 16 rows x 32 units x 4 gates

// Block (bx, by): batch rows [bx*16, +16), units [by*32, +32). Thread: unit lane = tid % 32, rows
// tid/32 and tid/32 + 8; it accumulates h.Vh for its two rows and four gates, then does their pointwise.
template <typename T, Activation A>
__global__ void __launch_bounds__(kStepThreads) step_forward_kernel(StepForward<T> p) {
  __shared__ T hs[kRows][kDepth];
  __shared__ T ws[kDepth][4][kUnits];
  const int tid = threadIdx.x, lane = tid % kUnits, wrow = tid / kUnits;
  const int64_t r0 = int64_t(blockIdx.x) * kRows, u0 = int64_t(blockIdx.y) * kUnits;
  const int64_t H = p.H, G = 4 * H, P = p.P;
  T acc[2][4];
#pragma unroll
  for (int q = 0; q < 2; ++q)
#pragma unroll
    for (int g = 0; g < 4; ++g) acc[q][g] = T(0);

  for (int64_t k0 = 0; k0 < P; k0 += kDepth) {
    for (int i = tid; i < kRows * kDepth; i += kStepThreads) {
      const int r = i / kDepth, k = i % kDepth;
      const int64_t gr = r0 + r, gk = k0 + k;
      hs[r][k] = (gr < p.B && gk < P) ? p.h_prev[gr * P + gk] : T(0);
    }
    for (int i = tid; i < kDepth * 4 * kUnits; i += kStepThreads) {
      const int u = i % kUnits, g = (i / kUnits) % 4, k = i / (4 * kUnits);
      const int64_t gu = u0 + u, gk = k0 + k;
      ws[k][g][u] = (gu < H && gk < P) ? p.vh[gk * G + g * H + gu] : T(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < kDepth; ++k) {
      const T h0 = hs[wrow][k], h1 = hs[wrow + 8][k];
#pragma unroll
      for (int g = 0; g < 4; ++g) {
        const T w = ws[k][g][lane];
        acc[0][g] += h0 * w;
        acc[1][g] += h1 * w;
      }
    }
    __syncthreads();
  }

  const int64_t u = u0 + lane;
  if (u >= H) return;
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int64_t b = r0 + wrow + 8 * q;
    if (b < p.B) cell_forward<T, A>(p, b, u, acc[q]);
  }
}

// The same step in two launches, for batches too small to give the fused kernel a block per SM: h.Vh as a
// split-K GEMM into [splits, B, G] (run before), then this kernel adds the slices in order and does the
// pointwise, one thread per (row, unit).
template <typename T, Activation A>
__global__ void step_gates_kernel(StepForward<T> p, const T* parts, int splits) {
  const int64_t n = p.B * p.H, G = 4 * p.H;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / p.H, u = i % p.H;
    T rec[4];
    for (int g = 0; g < 4; ++g) {
      T sum = T(0);
      for (int s = 0; s < splits; ++s) sum += parts[(s * p.B + b) * G + g * p.H + u];
      rec[g] = sum;
    }
    cell_forward<T, A>(p, b, u, rec);
  }
}

// With a projection: pre = (hh.Vp) * sp in place, h_next = clip(pre) (or h_prev past the row's length), y.
template <typename T>
__global__ void projection_output_kernel(int64_t B, int64_t P, int64_t t, T* pre, const T* sp, T proj_clip,
                                         const int32_t* seq_len, const T* h_prev, T* h_next, T* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * P; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / P, j = i % P;
    const T v = pre[i] * sp[j];
    pre[i] = v;
    const bool done = finished(seq_len, t, b);
    h_next[i] = done ? h_prev[i] : clip(v, proj_clip);
    y[i] = done ? T(0) : h_next[i];
  }
}

// ---- The persistent forward: one cooperative launch for every step of a sequence (no projection). Block k
// owns units [k*U, (k+1)*U) and keeps their columns of Vh (all four gates) in shared memory for the whole
// sequence; at each step it reads the whole h of the step before (from L2: other blocks wrote it) and does
// its units' products and pointwise work, and the blocks meet at a grid barrier between steps. Where a step
// is too little work to fill the GPU (small batches), this replaces T launches and T reloads of Vh with one.
constexpr int kPersistentThreads = 256;

template <typename T>
struct PersistentForward {
  StepForward<T> step;   // the step's constants (B, H = P, scales, bias, peepholes, clips, lengths)
  int64_t steps, units;  // units: U, per block
  bool training;         // every step's state kept (slot t), or two slots taking turns
  T *z, *cs, *hs, *c_raw, *y;  // the whole sequence's buffers, as recur() lays them out
  GridBarrier barrier;
};

// Shared memory, in T: the weight slice, P rows of 4U (+1: a warp reading consecutive rows hits distinct banks),
// each thread's four partial sums, and a chunk of kChunk columns of h for every row.
constexpr int64_t kChunk = 64;
template <typename T>
size_t persistent_shared_bytes(int64_t P, int64_t U, int64_t B) {
  return size_t(P * (4 * U + 1) + 4 * kPersistentThreads + B * kChunk) * sizeof(T);
}

template <typename T, Activation A>
__global__ void __launch_bounds__(kPersistentThreads) persistent_forward_kernel(PersistentForward<T> p) {
  const int64_t B = p.step.B, H = p.step.H, P = p.step.P, G = 4 * H, U = p.units, u0 = int64_t(blockIdx.x) * U;
  const int64_t row = 4 * U + 1;
  const int tid = threadIdx.x;
  T* ws = dynamic_shared<T>();                    // ws[k * row + g * U + u]: Vh[k, g*H + u0 + u]
  T* partial = ws + P * row;                      // [4][threads]
  T* h_chunk = partial + 4 * kPersistentThreads;  // [B][kChunk]: columns [c0, c0 + kChunk) of h_prev
  for (int64_t i = tid; i < P * 4 * U; i += kPersistentThreads) {
    const int64_t k = i / (4 * U), g = (i / U) % 4, u = i % U;
    ws[k * row + g * U + u] = u0 + u < H ? p.step.vh[k * G + g * H + u0 + u] : T(0);
  }
  __syncthreads();
  // Thread: one (row, unit) pair of `lanes` at a time, and one of `slices` parts of each chunk of k (slices > 1
  // when the pairs are fewer than the threads: their sums are then added in slice order).
  const int64_t pairs = B * U;
  const int64_t fit = pairs >= kPersistentThreads ? 1 : kPersistentThreads / pairs;
  const int slices = int(fit < kChunk ? fit : kChunk);
  const int lanes = kPersistentThreads / slices, lane = tid % lanes, slice = tid / lanes;
  const int64_t kk0 = kChunk * slice / slices, kk1 = kChunk * (slice + 1) / slices;
  auto slot = [&](int64_t t) { return p.training ? t : (t & 1); };
  for (int64_t t = 0; t < p.steps; ++t) {
    StepForward<T> sp = p.step;
    sp.t = t;
    sp.z = p.z + t * B * G;
    sp.h_prev = p.hs + slot(t) * B * P, sp.c_prev = p.cs + slot(t) * B * H;
    sp.c_raw = p.c_raw ? p.c_raw + t * B * H : nullptr;
    sp.c_next = p.cs + slot(t + 1) * B * H;
    sp.hh = p.hs + slot(t + 1) * B * P;
    sp.y = p.y + t * B * P;
    for (int64_t first = 0; first < pairs; first += lanes) {
      const int64_t pair = first + lane, b = pair / U, u = pair % U;
      const bool mine = pair < pairs && slice < slices;
      T acc[4] = {T(0), T(0), T(0), T(0)};
      for (int64_t c0 = 0; c0 < P; c0 += kChunk) {
        // h of the step before, which other blocks wrote: past L1, each chunk read once, coalesced.
        for (int64_t i = tid; i < B * kChunk; i += kPersistentThreads) {
          const int64_t r = i / kChunk, k = c0 + i % kChunk;
          h_chunk[i] = k < P ? __ldcg(sp.h_prev + r * P + k) : T(0);
        }
        __syncthreads();
        for (int64_t kk = kk0; mine && kk < kk1 && c0 + kk < P; ++kk) {
          const T h = h_chunk[b * kChunk + kk];
          const T* w = ws + (c0 + kk) * row + u;
#pragma unroll
          for (int g = 0; g < 4; ++g) acc[g] += h * w[g * U];
        }
        __syncthreads();
      }
#pragma unroll
      for (int g = 0; g < 4; ++g) partial[g * kPersistentThreads + tid] = acc[g];
      __syncthreads();
      if (slice == 0 && pair < pairs && u0 + u < H) {
        T rec[4];
#pragma unroll
        for (int g = 0; g < 4; ++g) {
          T sum = T(0);
          for (int q = 0; q < slices; ++q) sum += partial[g * kPersistentThreads + q * lanes + lane];
          rec[g] = sum;
        }
        cell_forward<T, A>(sp, b, u0 + u, rec);
      }
      __syncthreads();
    }
    grid_sync(p.barrier);
  }
}

// ---- Backward step kernels.

// dtot = dh + dy for live rows, 0 for finished ones.
template <typename T>
__global__ void output_grad_kernel(int64_t B, int64_t P, int64_t t, const int32_t* seq_len, const T* dh, const T* dy,
                                   T* dtot) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * P; i += int64_t(gridDim.x) * blockDim.x)
    dtot[i] = finished(seq_len, t, i / P) ? T(0) : dh[i] + dy[i];
}

// The projection clip passes the gradient where -clip <= pre <= clip (TF's clip_by_value).
template <typename T>
__global__ void projection_clip_grad_kernel(int64_t n, const T* pre, T proj_clip, const T* dtot, T* dpre) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dpre[i] = (pre[i] >= -proj_clip && pre[i] <= proj_clip) ? dtot[i] : T(0);
}

template <typename T>
struct StepBackward {
  int64_t B, H, t;
  const T* gates;                     // [B,G] activations i, j, f, o
  const T *c_prev, *c_raw, *c_next;   // [B,H]
  const T *dhh, *dc;                  // [B,H]: dL/d hh of this step, dL/d c_next from later steps
  const T *wi, *wf, *wo;              // [H] or null
  T cell_clip;
  const int32_t* seq_len;
  T* dz;                              // [B,G] out: dL/d pre-activations
  T* dc_prev;                         // [B,H] out
  // The fused step (no projection) finds dL/d h of this step itself instead of reading dhh:
  const T* parts;     // [splits,B,H]: the split-K slices of the step after's dz . Wh^T (null at the last step)
  int splits;
  const T* dh_final;  // [B,H] or null: dL/d h of the last step (from after the sequence)
  const T* dh_next;   // [B,H]: dL/d h of the step after (passed through by rows that finished there)
  const T* dy;        // [B,H]: this step's output gradient
  T* dh;              // [B,H] out: dL/d h of this step
};

// The pointwise backward of element i = b*H + u of a live row, given dL/d hh.
template <typename T, Activation A>
__device__ inline void cell_backward(const StepBackward<T>& p, int64_t i, T dh) {
  const int64_t H = p.H, G = 4 * H, b = i / H, u = i % H;
  T* dzr = p.dz + b * G;
  const T* gr = p.gates + b * G;
  const T gi = gr[u], aj = gr[H + u], gf = gr[2 * H + u], go = gr[3 * H + u];
  const T wi = p.wi ? p.wi[u] : T(0), wf = p.wf ? p.wf[u] : T(0), wo = p.wo ? p.wo[u] : T(0);
  const T ac = activate<A>(p.c_next[i]);
  const T d_o = dh * ac * go * (T(1) - go);
  const T d_c = p.dc[i] + dh * go * activate_grad<A>(ac) + d_o * wo;
  const T d_raw = (p.c_raw[i] >= -p.cell_clip && p.c_raw[i] <= p.cell_clip) ? d_c : T(0);
  const T d_i = d_raw * aj * gi * (T(1) - gi);
  const T d_j = d_raw * gi * activate_grad<A>(aj);
  const T d_f = d_raw * p.c_prev[i] * gf * (T(1) - gf);
  dzr[u] = d_i, dzr[H + u] = d_j, dzr[2 * H + u] = d_f, dzr[3 * H + u] = d_o;
  p.dc_prev[i] = d_raw * gf + d_i * wi + d_f * wf;
}

// A row past its length: the step is the identity on the state.
template <typename T>
__device__ inline void identity_backward(const StepBackward<T>& p, int64_t i) {
  const int64_t H = p.H, b = i / H, u = i % H;
  T* dzr = p.dz + b * 4 * H;
  dzr[u] = dzr[H + u] = dzr[2 * H + u] = dzr[3 * H + u] = T(0);
  p.dc_prev[i] = p.dc[i];
}

template <typename T, Activation A>
__global__ void step_backward_kernel(StepBackward<T> p) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < p.B * p.H; i += int64_t(gridDim.x) * blockDim.x) {
    if (finished(p.seq_len, p.t, i / p.H)) identity_backward(p, i);
    else cell_backward<T, A>(p, i, p.dhh[i]);
  }
}

// dL/d h of a step: the split-K slices of the step after, added in order, or what a row that finished
// there passes through.
template <typename T>
__device__ inline T state_grad(const T* parts, int splits, int64_t n, const int32_t* seq_len, int64_t t_after,
                               int64_t b, const T* dh_after, int64_t i) {
  if (finished(seq_len, t_after, b)) return dh_after[i];
  T sum = T(0);
  for (int s = 0; s < splits; ++s) sum += parts[s * n + i];
  return sum;
}

// One step of the backward without a projection, in one launch: dL/d h from the step after's slices, then
// the pointwise backward (the step's dz . Wh^T follows as a split-K GEMM).
template <typename T, Activation A>
__global__ void fused_step_backward_kernel(StepBackward<T> p) {
  const int64_t n = p.B * p.H;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / p.H;
    const T dh = p.parts ? state_grad(p.parts, p.splits, n, p.seq_len, p.t + 1, b, p.dh_next, i)
                         : (p.dh_final ? p.dh_final[i] : T(0));
    p.dh[i] = dh;
    if (finished(p.seq_len, p.t, b)) identity_backward(p, i);
    else cell_backward<T, A>(p, i, dh + p.dy[i]);
  }
}

// ---- The persistent backward (no projection): one cooperative launch for every step, in reverse. Block k
// owns the units of the forward's block k and keeps the same columns of Vh in shared memory. Each step it
// finds dL/d h of its units (the shares of dz . Wh^T that every block left at the step after, added in block
// order), does their pointwise backward, and leaves its own share of this step's dz . Wh^T for every unit:
// (dz * s1) over its columns times their rows of Vh^T. The shares alternate between two buffers by the step's
// parity, so one grid barrier per step suffices.
template <typename T>
struct PersistentBackward {
  StepBackward<T> step;  // the constants: B, H, peepholes, cell clip, lengths
  int64_t steps, units;
  const T *gates, *cs, *c_raw, *dys, *vh, *s1;  // the saved forward ([T,B,G], [T+1,B,H], [T,B,H]), dy [T,B,H]
  const T *dc_final, *dh_final;                 // [B,H] or null
  T* dz;                                        // [T,B,G] out
  T *dc, *dh;                                   // [2][B,H] work, by parity (each block only its units)
  T* shares;                                    // [2][blocks][B,H]
  T *dc0, *dh0;                                 // [B,H] out
  GridBarrier barrier;
};

// Shared memory: the weight slice, H rows of 4U (+1, as the forward's), then this step's dz * s1 of the
// block's columns [B][4][U].
template <typename T>
size_t persistent_backward_shared_bytes(int64_t H, int64_t B, int64_t U) {
  return size_t(H * (4 * U + 1) + B * 4 * U) * sizeof(T);
}

template <typename T, Activation A>
__global__ void __launch_bounds__(kPersistentThreads) persistent_backward_kernel(PersistentBackward<T> p) {
  const int64_t B = p.step.B, H = p.step.H, G = 4 * H, U = p.units, u0 = int64_t(blockIdx.x) * U, n = B * H;
  const int64_t blocks = gridDim.x;
  const int tid = threadIdx.x;
  const int64_t row = 4 * U + 1;
  T* ws = dynamic_shared<T>();  // ws[k * row + g * U + u]: Vh[k, g*H + u0 + u]
  T* dzs = ws + H * row;        // dzs[(b * 4 + g) * U + u]: (dz * s1)[b, g*H + u0 + u] of this step
  for (int64_t i = tid; i < H * 4 * U; i += kPersistentThreads) {
    const int64_t k = i / (4 * U), g = (i / U) % 4, u = i % U;
    ws[k * row + g * U + u] = u0 + u < H ? p.vh[k * G + g * H + u0 + u] : T(0);
  }
  // This block's (row, unit) pairs: i = b*H + u0 + pair % U.
  auto own = [&](int64_t pair, int64_t& b, int64_t& u) {
    b = pair / U, u = u0 + pair % U;
    return pair < B * U && u < H;
  };
  for (int64_t pair = tid; pair < B * U; pair += kPersistentThreads) {
    int64_t b, u;
    if (own(pair, b, u)) p.dc[b * H + u] = p.dc_final ? p.dc_final[b * H + u] : T(0);
  }
  __syncthreads();
  for (int64_t t = p.steps - 1; t >= 0; --t) {
    const int in = int((p.steps - 1 - t) & 1), out = in ^ 1;
    StepBackward<T> sb = p.step;
    sb.t = t;
    sb.gates = p.gates + t * B * G;
    sb.c_prev = p.cs + t * B * H, sb.c_next = p.cs + (t + 1) * B * H, sb.c_raw = p.c_raw + t * B * H;
    sb.dc = p.dc + in * n, sb.dc_prev = p.dc + out * n;
    sb.dz = p.dz + t * B * G;
    const T* after = p.shares + ((t + 1) & 1) * blocks * n;  // the step after's shares
    for (int64_t pair = tid; pair < B * U; pair += kPersistentThreads) {
      int64_t b, u;
      const bool mine = own(pair, b, u);
      const int64_t i = b * H + u;
      if (mine) {
        T dh;
        if (t == p.steps - 1) {
          dh = p.dh_final ? p.dh_final[i] : T(0);
        } else if (finished(p.step.seq_len, t + 1, b)) {
          dh = p.dh[((t + 1) & 1) * n + i];  // a row that finished there passes its gradient through
        } else {
          dh = T(0);
          for (int64_t q = 0; q < blocks; ++q) dh += __ldcg(after + q * n + i);
        }
        p.dh[(t & 1) * n + i] = dh;
        if (finished(p.step.seq_len, t, b)) identity_backward(sb, i);
        else cell_backward<T, A>(sb, i, dh + p.dys[t * n + i]);
      }
      for (int g = 0; g < 4; ++g)
        dzs[(b * 4 + g) * U + pair % U] = mine ? sb.dz[b * G + g * H + u] * p.s1[g * H + u] : T(0);
    }
    __syncthreads();
    T* share = p.shares + (t & 1) * blocks * n + int64_t(blockIdx.x) * n;
    for (int64_t i = tid; i < n; i += kPersistentThreads) {
      const int64_t b = i / H, k = i % H;
      T acc = T(0);
      for (int g = 0; g < 4; ++g)
        for (int64_t u = 0; u < U; ++u) acc += dzs[(b * 4 + g) * U + u] * ws[k * row + g * U + u];
      share[i] = acc;
    }
    grid_sync(p.barrier);
  }
  // The initial state's gradients: step 0's shares (or what a row of length 0 passes through), and dc.
  const int last = int((p.steps - 1) & 1) ^ 1;  // the parity step 0 wrote dc_prev into
  for (int64_t pair = tid; pair < B * U; pair += kPersistentThreads) {
    int64_t b, u;
    if (!own(pair, b, u)) continue;
    const int64_t i = b * H + u;
    T dh = T(0);
    if (finished(p.step.seq_len, 0, b)) dh = p.dh[i];
    else for (int64_t q = 0; q < blocks; ++q) dh += __ldcg(p.shares + q * n + i);
    p.dh0[i] = dh;
    p.dc0[i] = p.dc[last * n + i];
  }
}

// dL/d h0 after the fused steps: the first step's slices, or dL/d h of step 0 where a row has length 0.
template <typename T>
__global__ void initial_state_grad_kernel(const T* parts, int splits, int64_t B, int64_t H, const int32_t* seq_len,
                                          const T* dh_first, T* dh0) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * H; i += int64_t(gridDim.x) * blockDim.x)
    dh0[i] = state_grad(parts, splits, B * H, seq_len, 0, i / H, dh_first, i);
}

// Past a row's length dh passes through unchanged (the GEMM gave 0 there, from dz = 0).
template <typename T>
__global__ void carry_state_grad_kernel(int64_t B, int64_t P, int64_t t, const int32_t* seq_len, const T* dh,
                                        T* dh_prev) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * P; i += int64_t(gridDim.x) * blockDim.x)
    if (finished(seq_len, t, i / P)) dh_prev[i] = dh[i];
}

// ---- Weight normalisation's pass on one kernel block (cell.h's NormBlock), on the device of the thread that
// makes it, queued on that device's stream.
template <typename T>
class WeightNorm {
 public:
  explicit WeightNorm(const NormBlock& b) : b_(b) {
    sumsq_.resize(b.cols);
    launch("fill kernel", fill_kernel<T>, grid_for(b.cols), 256, stream_, s_.resize(b.cols), b.cols, T(1));
  }
  // The column scales of the current parameters (device memory).
  void forward(const T* params) {
    if (b_.on)
      launch("column norms kernel", column_norms_kernel<T>, column_blocks(b_.cols), kReduceThreads, stream_,
             params + b_.v, b_.rows, b_.cols, params + b_.g, sumsq_.data(), s_.data());
  }
  // grads holds dW in V's place: it becomes dV, and g's place gets dg (the scales of the last forward()).
  void backward(const T* params, T* grads) {
    if (b_.on)
      launch("weight norm gradient kernel", weight_norm_grad_kernel<T>, column_blocks(b_.cols), kReduceThreads,
             stream_, params + b_.v, b_.rows, b_.cols, params + b_.g, sumsq_.data(), s_.data(), grads + b_.v,
             grads + b_.g);
  }
  const T* scales() const { return s_.data(); }
  int64_t memory_bytes() const { return (sumsq_.capacity() + s_.capacity()) * int64_t(sizeof(T)); }

 private:
  NormBlock b_;
  cudaStream_t stream_ = device_stream(current_device());
  DeviceBuffer<T> sumsq_, s_;
};

// ---- The cell.

template <typename T>
class CudaCell final : public Cell<T> {
 public:
  explicit CudaCell(const CellConfig& config)
      : cfg_(checked(config)), norm_input_(norm_blocks(cfg_).input), norm_recurrent_(norm_blocks(cfg_).recurrent),
        norm_projection_(norm_blocks(cfg_).projection) {
    if (cfg_.tf32) {
      if (!std::is_same_v<T, float>) throw Error("ERR_WNLSTM_CONFIG", "precision 'tf32' is for float32 cells");
      int major = 0;
      check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_), "cudaDeviceGetAttribute");
      if (major < 8)
        throw Error("ERR_WNLSTM_CONFIG", "precision 'tf32' needs a GPU of compute capability 8.0 or later (Ampere); "
                                         "this one is " + std::to_string(major) + ".x");
#ifndef WNLSTM_CUDA_EMULATION
      // The code this GPU runs must have been compiled for 8.0 or later too (a build for older GPUs only would
      // JIT their PTX, in which the tensor-core path is a trap).
      cudaFuncAttributes attributes{};
      check(cudaFuncGetAttributes(&attributes, reinterpret_cast<const void*>(gemm_detail::gemm_tf32_kernel<false, false>)),
            "cudaFuncGetAttributes");
      if (attributes.ptxVersion < 80)
        throw Error("ERR_WNLSTM_CONFIG", "precision 'tf32' needs the addon built for compute capability 8.0 or later "
                                         "(the code this GPU runs was compiled for " + std::to_string(attributes.ptxVersion) + ")");
#endif
    }
    I_ = cfg_.input_size, H_ = cfg_.num_units, P_ = cfg_.output_size(), G_ = 4 * H_;
    off_ = param_offsets(cfg_);
    const int64_t n = param_count(cfg_);
    params_ = own_params_.resize(n);
    check(cudaMemsetAsync(params_, 0, n * sizeof(T), stream_), "zero parameters");
    sync("cell setup");
  }

  const CellConfig& config() const override { return cfg_; }
  std::string device() const override { return "cuda:" + std::to_string(device_); }

  void get_params(T* out) const override {
    const_cast<CudaCell*>(this)->use_device();
    const_cast<Staging&>(staging_).download(out, params_, param_count(cfg_) * sizeof(T));
  }

  void set_params(const T* in, int64_t offset, int64_t count) override {
    if (offset < 0 || count < 0 || offset + count > param_count(cfg_))
      throw Error("ERR_WNLSTM_SHAPE", "parameter range out of bounds");
    use_device();
    upload(params_ + offset, in, count);
    sync("set parameters");
    params_changed();
  }

  // storage: device memory of this cell's device (a model's arena).
  void bind_params(T* storage, std::shared_ptr<void> owner) override {
    use_device();
    check(cudaMemcpyAsync(storage, params_, param_count(cfg_) * sizeof(T), cudaMemcpyDeviceToDevice, stream_),
          "copy parameters into the arena");
    params_ = storage;
    params_owner_ = std::move(owner);
    own_params_.release();
    params_changed();
  }

  void params_changed() override {
    scales_dirty_ = true;
    saved_steps_ = saved_batch_ = 0;  // a backward must see the weights its forward used
  }

  void apply_update(const OptimizerStep& step, const T* grads, T* s1, T* s2) override {
    // The optimizer's state lives in the caller's (host) arrays: the update runs on a host copy.
    std::vector<T> host(size_t(param_count(cfg_)));
    get_params(host.data());
    optimizer_update(step, host.data(), grads, s1, s2, int64_t(host.size()));
    set_params(host.data(), 0, int64_t(host.size()));
  }

  int64_t saved_steps() const override { return saved_steps_; }
  int64_t saved_batch() const override { return saved_batch_; }

  int64_t memory_bytes() const override {  // what is allocated, whatever the last call's shapes
    double n = double(staging_.capacity());
    for (const Activations* a : {&saved_, &scratch_}) {
      for (const DeviceBuffer<T>* b : {&a->x, &a->cs, &a->hs, &a->gates, &a->c_raw, &a->hh, &a->pre})
        n += double(b->capacity()) * sizeof(T);
      n += double(a->len.capacity()) * sizeof(int32_t);
    }
    for (const WeightNorm<T>* w : {&norm_input_, &norm_recurrent_, &norm_projection_}) n += double(w->memory_bytes());
    for (const DeviceBuffer<T>* b : {&own_params_, &grads_, &y_, &dy_,
                                     &dz_, &dpre_, &dx_, &dc_, &dc_prev_, &dh_, &dh_prev_, &dtot_, &dhh_, &parts_, &fwd_parts_, &x_in_,
                                     &persistent_dc_, &persistent_dh_,
                                     &c_in_, &h_in_, &c_out_, &h_out_})
      n += double(b->capacity()) * sizeof(T);
    return int64_t(n);
  }

  // The host form: the arguments go up, run(), the results come down.
  void forward(int64_t steps, int64_t batch, const T* x, const T* c0, const T* h0, const int32_t* seq_len, T* y,
               T* c_out, T* h_out, bool training) override {
    validate_forward(cfg_, steps, batch, seq_len);
    const int64_t B = batch, H = H_, P = P_;
    use_device();
    check_memory(sizeof(T) * double(steps) * double(B) * (I_ + P));
    T* xs = x_in_.resize(steps * B * I_);
    upload(xs, x, steps * B * I_);
    T* c0s = c0 ? c_in_.resize(B * H) : nullptr;
    T* h0s = h0 ? h_in_.resize(B * P) : nullptr;
    if (c0) upload(c0s, c0, B * H);
    if (h0) upload(h0s, h0, B * P);
    int32_t* lens = nullptr;
    if (seq_len) {
      lens = len_in_.resize(B);
      staging_.upload(lens, seq_len, B * sizeof(int32_t));
    }
    T *ys = y_.resize(steps * B * P), *cs = c_out_.resize(B * H), *hs = h_out_.resize(B * P);
    run_forward(steps, B, xs, c0s, h0s, lens, ys, cs, hs, training);
    download(y, ys, steps * B * P);
    download(c_out, cs, B * H);
    download(h_out, hs, B * P);
    sync("forward");
  }

  void device_forward(int64_t steps, int64_t batch, const T* x, const T* c0, const T* h0, const int32_t* seq_len,
                      T* y, T* c_out, T* h_out, bool training) override {
    validate_forward(cfg_, steps, batch, nullptr);  // device lengths are the caller's to check
    use_device();
    run_forward(steps, batch, x, c0, h0, seq_len, y, c_out, h_out, training);
  }

  void backward(const T* dy, const T* dc_in, const T* dh_in, T* grads, T* dx, T* dc0, T* dh0) override {
    require_forward();
    const int64_t rows = saved_steps_ * saved_batch_, B = saved_batch_, H = H_, P = P_;
    use_device();
    T* dys = dy_.resize(rows * P);
    upload(dys, dy, rows * P);
    T* dcs = dc_in ? c_in_.resize(B * H) : nullptr;
    T* dhs = dh_in ? h_in_.resize(B * P) : nullptr;
    if (dc_in) upload(dcs, dc_in, B * H);
    if (dh_in) upload(dhs, dh_in, B * P);
    T *g = grads_.resize(param_count(cfg_)), *dxs = dx_.resize(rows * I_);
    T *dc0s = c_out_.resize(B * H), *dh0s = h_out_.resize(B * P);
    run_backward(dys, dcs, dhs, g, dxs, dc0s, dh0s);
    download(grads, g, param_count(cfg_));
    download(dx, dxs, rows * I_);
    download(dc0, dc0s, B * H);
    download(dh0, dh0s, B * P);
    sync("backward");
  }

  void device_backward(const T* dy, const T* dc_in, const T* dh_in, T* grads, T* dx, T* dc0, T* dh0) override {
    require_forward();
    use_device();
    run_backward(dy, dc_in, dh_in, grads, dx, dc0, dh0);
  }

  T* input_gates(int64_t steps, int64_t batch, bool training) override {
    validate_forward(cfg_, steps, batch, nullptr);
    use_device();
    check_memory(sizeof(T) * double(steps) * double(batch) * G_);
    if (training) saved_steps_ = saved_batch_ = 0;
    return (training ? saved_ : scratch_).gates.resize(steps * batch * G_);
  }

  void project_inputs(int64_t rows, const T* x, T* zx) override {
    use_device();
    // x . Vx: the column scale s0 is applied by the step kernels.
    gemm<T>(stream_, false, false, rows, G_, I_, x, I_, params_ + off_.kernel, G_, nullptr, false, zx, G_, cfg_.tf32);
  }

  void forward_projected(int64_t steps, int64_t batch, const T* c0, const T* h0, const int32_t* seq_len, T* y,
                         T* c_out, T* h_out, bool training) override {
    validate_forward(cfg_, steps, batch, nullptr);  // device lengths are the caller's to check
    if ((training ? saved_ : scratch_).gates.size() != steps * batch * G_)
      throw Error("ERR_WNLSTM_SHAPE", "forward_projected: the input gates were made for other sizes");
    use_device();
    recur(steps, batch, c0, h0, seq_len, y, c_out, h_out, training);
    if (training) saved_x_ = false;  // the caller keeps the inputs
  }

  const T* backward_projected(const T* dy, const T* dc_in, const T* dh_in, T* grads, T* dc0, T* dh0) override {
    require_forward();
    use_device();
    return recur_backward(dy, dc_in, dh_in, grads, dc0, dh0);
  }

  void project_inputs_backward(int64_t rows, const T* x, const T* dz, T* g, T* dx) override {
    if (scales_dirty_) throw Error("ERR_WNLSTM_NO_FORWARD", "the weights changed since the forward");
    use_device();
    const int64_t I = I_, G = G_;
    const T* kernel = params_ + off_.kernel;
    T* dkernel = g + off_.kernel;
    gemm<T>(stream_, true, false, I, G, rows, x, I, dz, G, nullptr, false, dkernel, G, cfg_.tf32);
    if (dx) gemm<T>(stream_, false, true, rows, I, G, dz, G, kernel, G, norm_input_.scales(), false, dx, I, cfg_.tf32);  // (dz * s0) . Vx^T
    norm_input_.backward(params_, g);
  }

 private:
  // forward and backward on device buffers (the contract of cell.h), queued on the stream.
  void run_forward(int64_t steps, int64_t batch, const T* x, const T* c0, const T* h0, const int32_t* seq_len, T* y,
                   T* c_out, T* h_out, bool training) {
    check_memory(sizeof(T) * double(steps) * double(batch) * (I_ + G_ + (training ? 3 * H_ + 2 * P_ : 0)));
    T* z = input_gates(steps, batch, training);
    // Training keeps its own copy of x for the backward.
    const T* xs = x;
    if (training) {
      T* kept = saved_.x.resize(steps * batch * I_);
      copy(kept, x, steps * batch * I_);
      xs = kept;
    }
    project_inputs(steps * batch, xs, z);  // the input part of every step at once
    recur(steps, batch, c0, h0, seq_len, y, c_out, h_out, training);
    if (training) saved_x_ = true;  // inference leaves the saved forward alone
  }

  // The recurrence over the input gates' buffer (already projected).
  void recur(int64_t steps, int64_t batch, const T* c0, const T* h0, const int32_t* seq_len, T* y, T* c_out,
             T* h_out, bool training) {
    const double rows = double(steps) * double(batch);
    const int64_t B = batch, H = H_, P = P_, G = G_;
    const bool proj = cfg_.num_proj > 0;
    check_memory(sizeof(T) * rows * (training ? 3 * H + 2 * P : 0));
    refresh_scales();

    // Training keeps every step (cs[t] is c before step t); inference uses two slots, in its own buffers,
    // so a step() between forward() and backward() changes nothing.
    Activations& a = training ? saved_ : scratch_;
    const int64_t slots = training ? steps + 1 : 2;
    auto slot = [&](int64_t t) { return training ? t : (t & 1); };
    T* cs = a.cs.resize(slots * B * H);
    T* hs = a.hs.resize(slots * B * P);
    T* z = a.gates.data();
    T* c_raw = training ? a.c_raw.resize(steps * B * H) : nullptr;
    T* hh_all = proj ? a.hh.resize((training ? steps : 1) * B * H) : nullptr;
    T* pre_all = proj ? a.pre.resize((training ? steps : 1) * B * P) : nullptr;
    int32_t* lens = nullptr;
    if (seq_len) {
      lens = a.len.resize(B);
      check(cudaMemcpyAsync(lens, seq_len, B * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream_), "copy lengths");
    }
    if (c0) copy(cs, c0, B * H);
    else check(cudaMemsetAsync(cs, 0, B * H * sizeof(T), stream_), "zero c0");
    if (h0) copy(hs, h0, B * P);
    else check(cudaMemsetAsync(hs, 0, B * P * sizeof(T), stream_), "zero h0");

    const T* kernel = params_ + off_.kernel;
    StepForward<T> sp{};
    sp.B = B, sp.H = H, sp.P = P;
    sp.vh = kernel + I_ * G;
    sp.s0 = norm_input_.scales(), sp.s1 = norm_recurrent_.scales(), sp.bias = params_ + off_.bias;
    if (cfg_.use_peepholes) sp.wi = params_ + off_.w_i, sp.wf = params_ + off_.w_f, sp.wo = params_ + off_.w_o;
    sp.forget_bias = T(cfg_.forget_bias);
    sp.cell_clip = cfg_.has_cell_clip ? T(cfg_.cell_clip) : std::numeric_limits<T>::infinity();
    sp.seq_len = lens;
    sp.proj = proj;
    const T proj_clip = cfg_.has_proj_clip ? T(cfg_.proj_clip) : std::numeric_limits<T>::infinity();
    const dim3 grid{unsigned((B + kRows - 1) / kRows), unsigned((H + kUnits - 1) / kUnits), 1};
    // The fused kernel where it has a block for every SM; otherwise split-K and a pointwise kernel.
    // With TF32 the step's product is always a (tensor-core) GEMM: the fused kernel multiplies in fp32.
    const int64_t fused_blocks = cfg_.tf32 ? 0 : int64_t(grid.x) * grid.y;
    const int splits = fused_blocks >= sm_count_ ? 1 : split_k(B, G, P);
    T* parts = fused_blocks >= sm_count_ ? nullptr : fwd_parts_.resize(int64_t(splits) * B * G);
    int64_t units =
        proj ? 0 : persistent_units(B, persistent_forward_for(), [&](int64_t U) { return persistent_shared_bytes<T>(P, U, B); });
    if (units > 0) {  // the whole sequence in one launch (or, where the device cannot hold the grid now, per step)
      const PersistentForward<T> pf{sp, steps, units, training, z, cs, hs, c_raw, y, barrier()};
      if (!launch_cooperative("persistent forward kernel", persistent_forward_for(), dim3(unsigned((H + units - 1) / units)),
                              kPersistentThreads, persistent_shared_bytes<T>(P, units, B), stream_, pf))
        units = 0;
    }
    const auto every_step = [&] {
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t k = training ? t : 0;
        sp.t = t;
        sp.z = z + t * B * G;
        sp.h_prev = hs + slot(t) * B * P, sp.c_prev = cs + slot(t) * B * H;
        sp.c_raw = c_raw ? c_raw + t * B * H : nullptr;
        sp.c_next = cs + slot(t + 1) * B * H;
        T* h_next = hs + slot(t + 1) * B * P;
        sp.hh = proj ? hh_all + k * B * H : h_next;
        sp.y = y + t * B * P;
        if (fused_blocks >= sm_count_) {
          launch_step_forward(grid, sp);
        } else {
          gemm_split_k<T>(stream_, false, false, B, G, P, sp.h_prev, P, sp.vh, G, nullptr, splits, parts, G, cfg_.tf32);
          launch_step_gates(sp, parts, splits);
        }
        if (proj) {
          T* pre = pre_all + k * B * P;
          gemm<T>(stream_, false, false, B, P, H, sp.hh, H, params_ + off_.proj_kernel, P, nullptr, false, pre, P, cfg_.tf32);
          launch("projection output kernel", projection_output_kernel<T>, grid_for(B * P), 256, stream_, B, P, t, pre,
                 norm_projection_.scales(), proj_clip, lens, sp.h_prev, h_next, sp.y);
        }
      }
    };
    if (units == 0)
      forward_graph_.run(stream_, key(steps, B, training, z, cs, hs, c_raw, hh_all, pre_all, y, lens, params_, parts,
                                      splits), every_step);
    copy(c_out, cs + slot(steps) * B * H, B * H);
    copy(h_out, hs + slot(steps) * B * P, B * P);
    if (training) saved_steps_ = steps, saved_batch_ = batch, has_lengths_ = seq_len != nullptr;
  }

  void require_forward() const {
    if (saved_steps_ == 0)
      throw Error("ERR_WNLSTM_NO_FORWARD", "backward needs a training forward first (and the weights unchanged since)");
  }

  void run_backward(const T* dys, const T* dc_in, const T* dh_in, T* g, T* dxs, T* dc0, T* dh0) {
    if (!saved_x_)
      throw Error("ERR_WNLSTM_NO_FORWARD", "backward needs a training forward() first: the last one was a model's, "
                                           "which keeps its inputs itself");
    const T* dz = recur_backward(dys, dc_in, dh_in, g, dc0, dh0);
    project_inputs_backward(saved_steps_ * saved_batch_, saved_.x.data(), dz, g, dxs);
  }

  // Everything of the backward but the input kernel's block and dx; returns dz.
  const T* recur_backward(const T* dys, const T* dc_in, const T* dh_in, T* g, T* dc0, T* dh0) {
    const int64_t steps = saved_steps_, B = saved_batch_, H = H_, P = P_, G = G_, I = I_, rows = steps * B;
    const bool proj = cfg_.num_proj > 0;
    check_memory(sizeof(T) * (double(rows) * (G + 2 * P) + 6.0 * B * (H + P)));
    const Activations& a = saved_;
    const int32_t* lens = has_lengths_ ? a.len.data() : nullptr;
    const T* kernel = params_ + off_.kernel;
    const T proj_clip = cfg_.has_proj_clip ? T(cfg_.proj_clip) : std::numeric_limits<T>::infinity();

    T* dz = dz_.resize(rows * G);
    T* dpre = proj ? dpre_.resize(rows * P) : nullptr;
    T *dc = dc_.resize(B * H), *dc_prev = dc_prev_.resize(B * H);
    T *dh = dh_.resize(B * P), *dh_prev = dh_prev_.resize(B * P);
    T* dtot = dtot_.resize(B * P);
    T* dhh = proj ? dhh_.resize(B * H) : nullptr;
    if (dc_in) copy(dc, dc_in, B * H);
    else check(cudaMemsetAsync(dc, 0, B * H * sizeof(T), stream_), "zero dc");
    if (proj && dh_in) copy(dh, dh_in, B * P);
    else if (proj) check(cudaMemsetAsync(dh, 0, B * P * sizeof(T), stream_), "zero dh");

    StepBackward<T> sb{};
    sb.B = B, sb.H = H;
    if (cfg_.use_peepholes)
      sb.wi = params_ + off_.w_i, sb.wf = params_ + off_.w_f, sb.wo = params_ + off_.w_o;
    sb.cell_clip = cfg_.has_cell_clip ? T(cfg_.cell_clip) : std::numeric_limits<T>::infinity();
    sb.seq_len = lens;
    int64_t units = proj ? 0
        : persistent_units(B, persistent_backward_for(), [&](int64_t U) { return persistent_backward_shared_bytes<T>(H, B, U); });
    if (units > 0) {  // every step in one launch (or, where the device cannot hold the grid now, per step)
      const int64_t blocks = (H + units - 1) / units, n = B * H;
      check_memory(sizeof(T) * double(2 * blocks + 4) * double(n));  // the shares and the state gradients
      const PersistentBackward<T> pb{sb, steps, units, a.gates.data(), a.cs.data(), a.c_raw.data(), dys, kernel + I * G,
                                     norm_recurrent_.scales(), dc, dh_in, dz, persistent_dc_.resize(2 * n),
                                     persistent_dh_.resize(2 * n), parts_.resize(2 * blocks * n), dc, dtot, barrier()};
      if (launch_cooperative("persistent backward kernel", persistent_backward_for(), dim3(unsigned(blocks)),
                             kPersistentThreads, persistent_backward_shared_bytes<T>(H, B, units), stream_, pb))
        dh = dtot;
      else
        units = 0;
    }
    if (units == 0 && !proj) {
      // Two launches a step: the fused pointwise backward (which also adds the slices of the step after),
      // then dz . Wh^T as a split-K GEMM with enough blocks for every SM.
      const int splits = split_k(B, P, G);
      T* parts = parts_.resize(int64_t(splits) * B * P);
      T* dh_of[2] = {dh, dh_prev};  // dL/d h of step t in dh_of[t & 1]
      sb.splits = splits, sb.dh_final = dh_in;
      const auto every_step = [&] {  // dc and dc_prev take turns, starting from dc
        T *dc_step = dc, *dc_next = dc_prev;
        for (int64_t t = steps - 1; t >= 0; --t) {
          sb.t = t;
          sb.gates = a.gates.data() + t * B * G;
          sb.c_prev = a.cs.data() + t * B * H, sb.c_next = a.cs.data() + (t + 1) * B * H;
          sb.c_raw = a.c_raw.data() + t * B * H;
          sb.parts = t == steps - 1 ? nullptr : parts;
          sb.dh_next = dh_of[(t + 1) & 1], sb.dh = dh_of[t & 1], sb.dy = dys + t * B * P;
          sb.dc = dc_step, sb.dz = dz + t * B * G, sb.dc_prev = dc_next;
          launch_step_backward(sb, true);
          gemm_split_k<T>(stream_, false, true, B, P, G, sb.dz, G, kernel + I * G, G, norm_recurrent_.scales(), splits,
                          parts, P, cfg_.tf32);
          std::swap(dc_step, dc_next);
        }
      };
      backward_graph_.run(stream_, key(steps, B, dys, dh_in, dz, dc, dc_prev, dh, dh_prev, parts, splits, params_, lens,
                                       a.gates.data(), a.cs.data(), a.c_raw.data()),
                          every_step);
      if (steps % 2) std::swap(dc, dc_prev);  // the buffer the first step's dc_prev went to
      launch("initial state gradient kernel", initial_state_grad_kernel<T>, grid_for(B * P), 256, stream_, parts,
             splits, B, P, lens, dh_of[0], dtot);
      dh = dtot;
    }
    for (int64_t t = proj ? steps - 1 : -1; t >= 0; --t) {  // with a projection: one step at a time
      launch("output gradient kernel", output_grad_kernel<T>, grid_for(B * P), 256, stream_, B, P, t, lens, dh,
             dys + t * B * P, dtot);
      if (proj) {  // dhh = dpre . Wp^T = (dpre * sp) . Vp^T
        T* dpre_t = dpre + t * B * P;
        launch("projection clip gradient kernel", projection_clip_grad_kernel<T>, grid_for(B * P), 256, stream_,
               B * P, a.pre.data() + t * B * P, proj_clip, dtot, dpre_t);
        gemm<T>(stream_, false, true, B, H, P, dpre_t, P, params_ + off_.proj_kernel, P, norm_projection_.scales(), false,
                dhh, H, cfg_.tf32);
      }
      sb.t = t;
      sb.gates = a.gates.data() + t * B * G;
      sb.c_prev = a.cs.data() + t * B * H, sb.c_next = a.cs.data() + (t + 1) * B * H;
      sb.c_raw = a.c_raw.data() + t * B * H;
      sb.dhh = proj ? dhh : dtot;
      sb.dc = dc, sb.dz = dz + t * B * G, sb.dc_prev = dc_prev;
      launch_step_backward(sb, false);
      // dh_prev = dz . Wh^T = (dz * s1) . Vh^T
      gemm<T>(stream_, false, true, B, P, G, sb.dz, G, kernel + I * G, G, norm_recurrent_.scales(), false, dh_prev, P,
              cfg_.tf32);
      if (lens) {
        launch("state gradient carry kernel", carry_state_grad_kernel<T>, grid_for(B * P), 256, stream_, B, P, t,
               lens, dh, dh_prev);
      }
      std::swap(dc, dc_prev);
      std::swap(dh, dh_prev);
    }

    // Everything that sums over steps: large GEMMs over all T*B rows at once.
    check(cudaMemsetAsync(g, 0, param_count(cfg_) * sizeof(T), stream_), "zero gradients");
    T* dkernel = g + off_.kernel;
    gemm<T>(stream_, true, false, P, G, rows, a.hs.data(), P, dz, G, nullptr, false, dkernel + I * G, G, cfg_.tf32);
    launch("bias gradient kernel", column_sums_kernel<T>, column_blocks(G), kReduceThreads, stream_, dz, rows, G,
           g + off_.bias);
    if (cfg_.use_peepholes) {
      launch("peephole gradient kernel", peephole_grads_kernel<T>, column_blocks(H), kReduceThreads, stream_, dz,
             a.cs.data(), rows, B, H, g + off_.w_i, g + off_.w_f, g + off_.w_o);
    }
    if (proj)
      gemm<T>(stream_, true, false, H, P, rows, a.hh.data(), H, dpre, P, nullptr, false, g + off_.proj_kernel, P, cfg_.tf32);
    norm_recurrent_.backward(params_, g);
    norm_projection_.backward(params_, g);
    copy(dc0, dc, B * H);
    copy(dh0, dh, B * P);
    return dz;
  }

 private:
  void use_device() { check(cudaSetDevice(device_), "cudaSetDevice"); }
  void sync(const char* what) { check(cudaStreamSynchronize(stream_), what); }
  // The host <-> device copies of the host forms go through pinned staging; a download waits for the stream.
  void upload(T* device, const T* host, int64_t n) { staging_.upload(device, host, size_t(n) * sizeof(T)); }
  void download(T* host, const T* device, int64_t n) { staging_.download(host, device, size_t(n) * sizeof(T)); }
  void copy(T* to, const T* from, int64_t n) {
    if (n > 0 && to != from)
      check(cudaMemcpyAsync(to, from, size_t(n) * sizeof(T), cudaMemcpyDeviceToDevice, stream_), "copy on the device");
  }
  void fill(T* p, int64_t n, T value) {
    launch("fill kernel", fill_kernel<T>, grid_for(n), 256, stream_, p, n, value);
  }

  // Refuses a call whose buffers cannot fit in the device's free memory (plus what this cell holds).
  // Free memory counts what the device's pool keeps for reuse (freed by anyone, not returned to the driver).
  void check_memory(double bytes) {
    size_t free = 0, total = 0;
    check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
    cudaMemPool_t pool;
    uint64_t reserved = 0, used = 0;
    if (cudaDeviceGetDefaultMemPool(&pool, device_) == cudaSuccess) {
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &reserved);
      cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used);
    }
    cudaGetLastError();
    const double available = double(free) + double(reserved > used ? reserved - used : 0);
    if (bytes > available + double(held_bytes()))
      throw Error("ERR_WNLSTM_OUT_OF_MEMORY", "this call needs " + std::to_string(int64_t(bytes / 1048576)) +
                                                  " MiB of device memory; " + std::to_string(int64_t(available) >> 20) +
                                                  " MiB are free");
  }
  double held_bytes() const {
    double n = 0;
    for (const Activations* a : {&saved_, &scratch_})
      for (const DeviceBuffer<T>* b : {&a->x, &a->cs, &a->hs, &a->gates, &a->c_raw, &a->hh, &a->pre})
        n += double(b->size());
    for (const DeviceBuffer<T>* b : {&y_, &dy_, &dz_, &dpre_, &dx_, &x_in_}) n += double(b->size());
    return n * sizeof(T);
  }

  void refresh_scales() {
    if (!scales_dirty_) return;
    for (WeightNorm<T>* w : {&norm_input_, &norm_recurrent_, &norm_projection_}) w->forward(params_);
    scales_dirty_ = false;
  }

  // Units per block of the persistent kernels for a batch of B rows, or 0 where they do not apply: by default
  // for batches up to kPersistentBatch whose weight slices fit in one block per SM; WNLSTM_CUDA_RECURRENCE=
  // persistent uses them wherever they fit, =steps never (for tests and benchmarks).
  static constexpr int64_t kPersistentBatch = 64;
  template <typename Kernel, typename Bytes>
  int64_t persistent_units(int64_t B, Kernel kernel, Bytes shared_bytes) {
    const char* env = std::getenv("WNLSTM_CUDA_RECURRENCE");
    const std::string mode = env ? env : "auto";
    if (cfg_.tf32 || mode == "steps" || (mode != "persistent" && B > kPersistentBatch)) return 0;  // fp32 kernels
    const int64_t U = (H_ + sm_count_ - 1) / sm_count_, blocks = (H_ + U - 1) / U;
    return blocks <= cooperative_blocks(kernel, device_, kPersistentThreads, shared_bytes(U)) ? U : 0;
  }

  void (*persistent_backward_for())(PersistentBackward<T>) {
    switch (cfg_.activation) {
      case Activation::Sigmoid: return persistent_backward_kernel<T, Activation::Sigmoid>;
      case Activation::Relu: return persistent_backward_kernel<T, Activation::Relu>;
      case Activation::Softsign: return persistent_backward_kernel<T, Activation::Softsign>;
      case Activation::Linear: return persistent_backward_kernel<T, Activation::Linear>;
      default: return persistent_backward_kernel<T, Activation::Tanh>;
    }
  }

  // A StepGraph key: the sizes, flags and pointers that a sequence of launches uses.
  template <typename... Values>
  static std::vector<int64_t> key(Values... values) {
    std::vector<int64_t> k;
    ((k.push_back(as_key(values))), ...);
    return k;
  }
  template <typename V>
  static int64_t as_key(V v) {
    if constexpr (std::is_pointer_v<V>) return int64_t(reinterpret_cast<uintptr_t>(v));
    else return int64_t(v);
  }

  GridBarrier barrier() {  // count and generation 128 bytes apart
    if (!barrier_.data()) check(cudaMemsetAsync(barrier_.resize(64), 0, 64 * sizeof(unsigned), stream_), "zero the grid barrier");
    return {barrier_.data(), barrier_.data() + 32};
  }

  void (*persistent_forward_for())(PersistentForward<T>) {
    switch (cfg_.activation) {
      case Activation::Sigmoid: return persistent_forward_kernel<T, Activation::Sigmoid>;
      case Activation::Relu: return persistent_forward_kernel<T, Activation::Relu>;
      case Activation::Softsign: return persistent_forward_kernel<T, Activation::Softsign>;
      case Activation::Linear: return persistent_forward_kernel<T, Activation::Linear>;
      default: return persistent_forward_kernel<T, Activation::Tanh>;
    }
  }

  // The step kernels are instantiated per activation; these pick the one of this cell.
  void launch_step_forward(dim3 grid, const StepForward<T>& p) {
    void (*kernel)(StepForward<T>) = step_forward_kernel<T, Activation::Tanh>;
    switch (cfg_.activation) {
      case Activation::Tanh: break;
      case Activation::Sigmoid: kernel = step_forward_kernel<T, Activation::Sigmoid>; break;
      case Activation::Relu: kernel = step_forward_kernel<T, Activation::Relu>; break;
      case Activation::Softsign: kernel = step_forward_kernel<T, Activation::Softsign>; break;
      case Activation::Linear: kernel = step_forward_kernel<T, Activation::Linear>; break;
    }
    launch("step forward kernel", kernel, grid, kStepThreads, stream_, p);
  }

  static const CellConfig& checked(const CellConfig& config) {
    validate_config(config);
    return config;
  }

  void launch_step_backward(const StepBackward<T>& p, bool fused) {
    using Kernel = void (*)(StepBackward<T>);
    auto pick = [&](Kernel plain, Kernel with_state) { return fused ? with_state : plain; };
    Kernel kernel = pick(step_backward_kernel<T, Activation::Tanh>, fused_step_backward_kernel<T, Activation::Tanh>);
    switch (cfg_.activation) {
      case Activation::Tanh: break;
      case Activation::Sigmoid:
        kernel = pick(step_backward_kernel<T, Activation::Sigmoid>, fused_step_backward_kernel<T, Activation::Sigmoid>);
        break;
      case Activation::Relu:
        kernel = pick(step_backward_kernel<T, Activation::Relu>, fused_step_backward_kernel<T, Activation::Relu>);
        break;
      case Activation::Softsign:
        kernel = pick(step_backward_kernel<T, Activation::Softsign>, fused_step_backward_kernel<T, Activation::Softsign>);
        break;
      case Activation::Linear:
        kernel = pick(step_backward_kernel<T, Activation::Linear>, fused_step_backward_kernel<T, Activation::Linear>);
        break;
    }
    launch(fused ? "fused step backward kernel" : "step backward kernel", kernel, grid_for(p.B * p.H), 256, stream_, p);
  }

  // Slices of K for a per-step product [M, K] x [K, N]: enough 64 x 64 tiles for two blocks per SM, each
  // slice at least 16 deep (one shared-memory stage).
  int split_k(int64_t M, int64_t N, int64_t K) const {
    const int64_t tiles = ((M + 63) / 64) * ((N + 63) / 64);
    const int64_t wanted = (2 * int64_t(sm_count_) + tiles - 1) / tiles;
    return int(std::max<int64_t>(1, std::min<int64_t>({wanted, K / 16, 64})));
  }

  void launch_step_gates(const StepForward<T>& p, const T* parts, int splits) {
    using Kernel = void (*)(StepForward<T>, const T*, int);
    Kernel kernel = step_gates_kernel<T, Activation::Tanh>;
    switch (cfg_.activation) {
      case Activation::Tanh: break;
      case Activation::Sigmoid: kernel = step_gates_kernel<T, Activation::Sigmoid>; break;
      case Activation::Relu: kernel = step_gates_kernel<T, Activation::Relu>; break;
      case Activation::Softsign: kernel = step_gates_kernel<T, Activation::Softsign>; break;
      case Activation::Linear: kernel = step_gates_kernel<T, Activation::Linear>; break;
    }
    launch("step gates kernel", kernel, grid_for(p.B * p.H), 256, stream_, p, parts, splits);
  }

  CellConfig cfg_;
  int64_t I_, H_, P_, G_;
  ParamOffsets off_;
  int device_ = current_device();  // the device of the thread that made the cell; every call uses it
  cudaStream_t stream_ = device_stream(device_);
  int sm_count_ = multiprocessors(device_);
  DeviceBuffer<unsigned> barrier_;  // the persistent kernels' grid barrier (count, generation)
  StepGraph forward_graph_, backward_graph_;  // the per-step launches of a forward and of a backward
  DeviceBuffer<T> persistent_dc_, persistent_dh_;  // the persistent backward's state gradients by parity

  // The parameters: its own buffer, or a model's arena (kept alive by params_owner_) once bound.
  DeviceBuffer<T> own_params_;
  T* params_ = nullptr;
  std::shared_ptr<void> params_owner_;
  DeviceBuffer<T> grads_;
  bool scales_dirty_ = true;
  // Weight normalisation of the input, recurrent and projection kernels (scales 1 without norm).
  WeightNorm<T> norm_input_, norm_recurrent_, norm_projection_;

  // What a training forward keeps for backward (shapes for T steps; inference keeps 1 or 2 steps of state).
  struct Activations {
    DeviceBuffer<T> x;      // [T,B,I]
    DeviceBuffer<T> cs;     // [T+1,B,H] c before each step, then the last
    DeviceBuffer<T> hs;     // [T+1,B,P]
    DeviceBuffer<T> gates;  // [T,B,G] x.Vx, then the gate activations
    DeviceBuffer<T> c_raw;  // [T,B,H] c before the cell clip
    DeviceBuffer<T> hh;     // [T,B,H] before the projection (num_proj only)
    DeviceBuffer<T> pre;    // [T,B,P] projection output before its clip (num_proj only)
    DeviceBuffer<int32_t> len;
  };
  Activations saved_, scratch_;
  bool has_lengths_ = false;
  bool saved_x_ = false;  // saved_.x belongs to the saved forward (not so after forward_projected)
  int64_t saved_steps_ = 0, saved_batch_ = 0;

  // Scratch (x_in_ to h_out_: the host forms' arguments and results on the device).
  DeviceBuffer<T> y_, dy_, dz_, dpre_, dx_, dc_, dc_prev_, dh_, dh_prev_, dtot_, dhh_, parts_, fwd_parts_;
  DeviceBuffer<T> x_in_, c_in_, h_in_, c_out_, h_out_;
  DeviceBuffer<int32_t> len_in_;

  Staging staging_{stream_};  // declared last, so destroyed first: it waits for the queued copies
};

}  // namespace
}  // namespace wnlstm::cuda

namespace wnlstm {
template <typename T>
std::unique_ptr<Cell<T>> make_cuda_cell(const CellConfig& config, int device) {
  cuda::require_device(device);
  const cuda::DeviceGuard guard(device);  // the cell takes the current device as its own for every call
  return std::make_unique<cuda::CudaCell<T>>(config);
}
template std::unique_ptr<Cell<float>> make_cuda_cell<float>(const CellConfig&, int);
template std::unique_ptr<Cell<double>> make_cuda_cell<double>(const CellConfig&, int);
}  // namespace wnlstm
