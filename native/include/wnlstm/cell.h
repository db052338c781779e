// wnlstm: the C++ contract between the backends and the N-API layer.
//
// Rules for every pointer in this header:
//  - host memory, row-major, element type T (float or double) unless typed otherwise;
//  - sizes: T = time steps, B = batch, I = input size, H = num_units, P = output size (num_proj or H),
//    K = I + P (rows of the LSTM kernel), G = 4H (gate columns, TF order i, j, f, o);
//  - "in" pointers are read only; "out" pointers are fully written; nullptr is allowed only where said.
// Backends throw wnlstm::Error (never exit or abort); the N-API layer turns it into a JS error with a code.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "wnlstm/ops.h"

namespace wnlstm {

struct Error : std::runtime_error {
  Error(std::string code, const std::string& message) : std::runtime_error(message), code(std::move(code)) {}
  std::string code;  // e.g. "ERR_WNLSTM_SHAPE"
};

enum class Activation { Tanh, Sigmoid, Relu, Softsign, Linear };

struct CellConfig {
  int64_t input_size = 0;   // I
  int64_t num_units = 0;    // H
  int64_t num_proj = 0;     // 0 = no projection (P = H)
  bool norm = true;         // weight normalisation of kernel blocks and projection
  bool use_peepholes = false;
  bool has_cell_clip = false;
  double cell_clip = 0;
  bool has_proj_clip = false;  // only meaningful with num_proj
  double proj_clip = 0;
  double forget_bias = 1;
  Activation activation = Activation::Tanh;
  // CUDA, float32: the GEMMs on TF32 tensor cores (inputs rounded to 10 bits of mantissa, fp32 sums), which
  // needs compute capability 8.0; the CPU computes in fp32 whatever this says.
  bool tf32 = false;

  int64_t output_size() const { return num_proj > 0 ? num_proj : num_units; }
};

// One named parameter inside the flat parameter buffer (TF name and TF shape [rows, cols]).
struct ParamInfo {
  std::string name;
  int64_t rows, cols;  // cols == 1 for vectors
  int64_t offset;      // in elements, into the flat buffer
  int64_t size() const { return rows * cols; }
};

// Throws Error("ERR_WNLSTM_CONFIG") for sizes < 1, sizes above the limits below, or bad clips.
void validate_config(const CellConfig& config);
// Parameters in their fixed order: kernel, bias, norm_0, norm_1, w_i_diag, w_f_diag, w_o_diag,
// projection/kernel, projection/norm_0 (each only when the options create it).
std::vector<ParamInfo> param_layout(const CellConfig& config);
int64_t param_count(const CellConfig& config);

// Where each parameter starts in the flat buffer (0 for those the options do not create).
struct ParamOffsets {
  int64_t kernel = 0, bias = 0, norm_0 = 0, norm_1 = 0, w_i = 0, w_f = 0, w_o = 0, proj_kernel = 0, proj_norm = 0;
};
ParamOffsets param_offsets(const CellConfig& config);

// Weight normalisation (SPEC section 2) is a pass that each backend's cell plugs in once per kernel block:
// forward, the column scales s = g / |v| (the cell multiplies by W = V * s); backward, dW turned into dV and
// dg. A block: V [rows, cols] at offset v and its gains g [cols] at offset g, in the flat parameters; `on`
// is false without norm (the scales stay 1) and for a projection the config does not have.
struct NormBlock {
  int64_t v = 0, rows = 0, cols = 0, g = 0;
  bool on = false;
};
struct NormBlocks {
  NormBlock input, recurrent, projection;  // kernel rows [0, I), kernel rows [I, I + P), projection/kernel
};
NormBlocks norm_blocks(const CellConfig& config);

// The checks every backend's forward makes before it touches anything: steps and batch at least 1
// (ERR_WNLSTM_SHAPE), its buffers within kMaxElements (ERR_WNLSTM_SIZE), each sequence length in
// [0, steps] (ERR_WNLSTM_RANGE).
void validate_forward(const CellConfig& config, int64_t steps, int64_t batch, const int32_t* seq_len);

// Sizes above these are refused before any allocation (a typo, not a model).
constexpr int64_t kMaxUnits = 1 << 16;
constexpr int64_t kMaxElements = int64_t(1) << 31;  // per buffer the cell allocates

// A CPU cell's parameters: its own buffer, or a model's arena once bound.
template <typename T>
class ParamStorage {
 public:
  explicit ParamStorage(int64_t n) : own_(size_t(n), T(0)), data_(own_.data()), n_(n) {}
  ParamStorage(const ParamStorage&) = delete;
  ParamStorage& operator=(const ParamStorage&) = delete;
  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return n_; }
  T* begin() { return data_; }
  T* end() { return data_ + n_; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + n_; }
  T& operator[](int64_t i) { return data_[i]; }
  const T& operator[](int64_t i) const { return data_[i]; }
  void bind(T* storage, std::shared_ptr<void> owner) {
    std::copy(data_, data_ + n_, storage);
    data_ = storage;
    owner_ = std::move(owner);
    std::vector<T>().swap(own_);
  }
  int64_t memory_bytes() const { return int64_t(own_.capacity() * sizeof(T)); }  // a bound arena is the model's

 private:
  std::vector<T> own_;
  T* data_;
  int64_t n_;
  std::shared_ptr<void> owner_;
};

template <typename T>
class Cell {
 public:
  using value_type = T;
  virtual ~Cell() = default;
  virtual const CellConfig& config() const = 0;

  // params: [param_count] in param_layout order.
  virtual void get_params(T* out) const = 0;
  // Writes params[offset, offset + count) from `in`.
  virtual void set_params(const T* in, int64_t offset, int64_t count) = 0;

  // Runs `steps` steps over a batch.
  //   x [T,B,I] in; c0 [B,H], h0 [B,P] in (nullptr = zeros);
  //   seq_len [B] in, each in [0, T] (nullptr = all T): past its length a row outputs zeros and keeps
  //   its state, as TF's dynamic_rnn;
  //   y [T,B,P] out; c [B,H], h [B,P] out: the state after each row's last valid step.
  // training = true keeps what backward() needs (until the next training forward).
  virtual void forward(int64_t steps, int64_t batch, const T* x, const T* c0, const T* h0,
                       const int32_t* seq_len, T* y, T* c, T* h, bool training) = 0;

  // Gradients of the last training forward.
  //   dy [T,B,P] in; dc [B,H], dh [B,P] in: gradients of the final state (nullptr = zeros);
  //   grads [param_count] out, by param_layout; dx [T,B,I], dc0 [B,H], dh0 [B,P] out.
  // Throws Error("ERR_WNLSTM_NO_FORWARD") when there is no training forward to differentiate.
  virtual void backward(const T* dy, const T* dc, const T* dh, T* grads, T* dx, T* dc0, T* dh0) = 0;

  // "cpu" or "cuda:<index>": the backend (backend.h) whose memory device_forward, device_backward and
  // bind_params take.
  virtual std::string device() const { return "cpu"; }

  // forward and backward over buffers in the backend's memory (what the model runtime keeps): the same
  // contract, with every pointer (seq_len too) in device memory on CUDA. On the CPU they are the same calls.
  virtual void device_forward(int64_t steps, int64_t batch, const T* x, const T* c0, const T* h0,
                              const int32_t* seq_len, T* y, T* c, T* h, bool training) {
    forward(steps, batch, x, c0, h0, seq_len, y, c, h, training);
  }
  virtual void device_backward(const T* dy, const T* dc, const T* dh, T* grads, T* dx, T* dc0, T* dh0) {
    backward(dy, dc, dh, grads, dx, dc0, dh0);
  }

  // The cell as two passes, as haste splits it: the input projection of every step at once (one large
  // GEMM), then the recurrence over the projected inputs. forward() is project_inputs() into input_gates()
  // then forward_projected(); backward() is backward_projected() then project_inputs_backward(). A model
  // calls the passes itself: it keeps each layer's input (the cell copies it otherwise), and it can project
  // an embedding's table once and gather rows instead of projecting every step's row (SequenceModel).
  // Every pointer here is in the backend's memory (device memory on CUDA).
  //
  // The buffer [T,B,G] that the next forward_projected(steps, batch, .., training) reads: the input part
  // of the gate pre-activations, for the caller to fill. It belongs to the cell; a training one replaces the
  // saved forward.
  virtual T* input_gates(int64_t steps, int64_t batch, bool training) = 0;
  // zx [rows,G] out = x [rows,I] in, projected by the input kernel in the cell's own scaling (what
  // forward_projected expects; rows of a projected table are the projections of the table's rows).
  virtual void project_inputs(int64_t rows, const T* x, T* zx) = 0;
  // forward()'s contract, over inputs already projected into input_gates(steps, batch, training).
  virtual void forward_projected(int64_t steps, int64_t batch, const T* c0, const T* h0, const int32_t* seq_len,
                                 T* y, T* c, T* h, bool training) = 0;
  // backward()'s contract after a forward_projected, without dx and without the input kernel's block of
  // grads (rows [0, I) of kernel, and norm_0 with norm: project_inputs_backward writes them). Returns dz
  // [T,B,G], the gradient of the projected inputs: the cell's buffer, valid until its next call.
  virtual const T* backward_projected(const T* dy, const T* dc, const T* dh, T* grads, T* dc0, T* dh0) = 0;
  // The input kernel's block of grads for inputs x [rows,I] whose projections have gradient dz [rows,G],
  // with the weights of the last forward; dx [rows,I] out (nullptr: not wanted).
  virtual void project_inputs_backward(int64_t rows, const T* x, const T* dz, T* grads, T* dx) = 0;

  // From now on the parameters live in `storage` [param_count] (a model's arena, in the backend's memory):
  // the current values are copied there, and `owner` keeps the storage alive as long as the cell. Changes
  // made there directly must be followed by params_changed().
  virtual void bind_params(T* storage, std::shared_ptr<void> owner) = 0;
  // The parameters changed in place: rebuild what derives from them (normalised weights, device copy);
  // invalidates the saved forward.
  virtual void params_changed() = 0;

  // One optimizer update of the parameters in place: grads [param_count]; s1, s2 [param_count] the
  // optimizer's state (nullptr where the optimizer has none). Invalidates the saved forward.
  virtual void apply_update(const OptimizerStep& step, const T* grads, T* s1, T* s2) = 0;

  // Sizes of the last training forward (0, 0 when none).
  virtual int64_t saved_steps() const = 0;
  virtual int64_t saved_batch() const = 0;

  // Bytes this cell holds now (parameters, packed weights, saved activations, scratch; device memory on
  // CUDA), reported to the JS garbage collector so that dropped cells are collected under memory pressure.
  virtual int64_t memory_bytes() const = 0;
};

template <typename T>
std::unique_ptr<Cell<T>> make_cpu_cell(const CellConfig& config);
// On CUDA device `device` (an index into CudaStatus::devices). Throws Error("ERR_WNLSTM_BACKEND_UNAVAILABLE")
// when the build has no CUDA or no device answers, Error("ERR_WNLSTM_CONFIG") for an index with no device.
template <typename T>
std::unique_ptr<Cell<T>> make_cuda_cell(const CellConfig& config, int device = 0);

// What the build and the machine offer, for the loader's report.
struct CudaStatus {
  bool compiled = false;   // the addon was built with nvcc
  bool available = false;  // a driver and at least one device answered
  std::string reason;      // why not available (or the device used)
  std::vector<std::string> devices;
  int driver_version = 0;  // e.g. 13000
};
CudaStatus cuda_status();

// Which vector instructions the CPU GEMM uses on this machine ("avx512", "avx2" or "generic").
const char* cpu_isa();
int cpu_threads();

}  // namespace wnlstm
