// The model runtime: a model's parameters, gradients and optimizer state live here, each in one flat
// buffer (an arena), and a whole training step (embedding, dropout, the stacked cells, softmax layer,
// loss, all backward passes) runs here, so that per step only token ids go in and the loss comes out.
// Everything runs on the cells' backend (backend.h): on CUDA the arena, the activations and every op stay
// on the device, and only the ids, the state and the loss cross the bus.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "wnlstm/backend.h"
#include "wnlstm/cell.h"
#include "wnlstm/ops.h"

namespace wnlstm {

// Parameters, gradients and optimizer state of a model, each one flat buffer in the backend's memory;
// blocks are named ranges of them (the same range in each). One contiguous gradient buffer is also what an
// all-reduce over devices needs. Host copies go through read() and write().
template <typename T>
class Arena {
 public:
  enum class Part { Params, Grads, S1, S2 };  // S1, S2: the optimizer's state, absent until needed
  struct Block {
    std::string name;
    int64_t offset, size;
  };

  // Parameters and gradients start at zero.
  Arena(std::shared_ptr<Backend<T>> backend, std::vector<Block> blocks);

  Backend<T>& backend() const { return *backend_; }
  const std::vector<Block>& blocks() const { return blocks_; }
  // Throws ERR_WNLSTM_UNKNOWN_WEIGHT for a name the model does not have.
  const Block& block(const std::string& name) const;
  int64_t size() const { return size_; }
  T* params() { return params_.data(); }
  T* grads() { return grads_.data(); }
  bool has(Part part) const { return buffer(part).data() != nullptr; }

  // Host copies of [offset, offset + n) of a part; write() creates absent state (zeros) first.
  void read(Part part, int64_t offset, int64_t n, T* host) const;
  void write(Part part, int64_t offset, int64_t n, const T* host);
  void zero(Part part, int64_t offset, int64_t n);
  // Drops the optimizer's state (a new optimizer starts from zeros).
  void clear_state();
  // Sum of squared gradients, block by block (sum_squares of each, added in block order).
  double grad_sum_squares() const;
  // One fused update of every parameter; creates the state buffers (zeros) the kind needs.
  void update(const OptimizerStep& step);
  int64_t memory_bytes() const;

 private:
  Buffer<T>& buffer(Part part) const;
  void ensure(Part part);

  std::shared_ptr<Backend<T>> backend_;
  std::vector<Block> blocks_;
  int64_t size_ = 0;
  mutable Buffer<T> params_, grads_, s1_, s2_;
};

struct LanguageModelConfig {
  int64_t vocab_size = 0, embedding_size = 0, hidden_size = 0, layers = 0;
  double dropout = 0;  // on the embedding output, between layers and before the softmax layer
};

// Zaremba et al.'s RNN language model: embedding [V,E] -> dropout -> cells -> dropout -> softmax layer
// (kernel [H,V], bias [V]) -> softmax cross-entropy. Arena blocks, in order: "embedding", "lstm_<l>" (each
// cell's parameters in param_layout order), "dense" (kernel, then bias).
template <typename T>
class LanguageModel {
 public:
  using value_type = T;
  // cells: layer 0 takes embedding_size inputs, each next one hidden_size; all have hidden_size units and
  // no projection, and all live on one device (ERR_WNLSTM_CONFIG otherwise). The model runs on that
  // device's backend; the cells' parameters move into its arena (bind_params).
  LanguageModel(const LanguageModelConfig& config, std::vector<std::shared_ptr<Cell<T>>> cells);

  const LanguageModelConfig& config() const { return cfg_; }
  Arena<T>& arena() { return *arena_; }
  const Arena<T>& arena() const { return *arena_; }

  // One window of `batch` streams over `steps` steps. inputs, targets [steps*batch] in, time-major; each
  // input in [0, V), each target in [0, V) or -1 (no loss); ERR_WNLSTM_RANGE before anything changes.
  // state_in [layers][c [B,H], h [B,H]] in (nullptr = zeros); state_out, same shape, out (all host memory).
  // With `train`: dropout on, and the gradients of the mean loss accumulate into the arena's gradients
  // (on CUDA still queued when this returns; whatever reads them waits). Returns the mean loss over the
  // window's tokens (nats).
  double step(int64_t steps, int64_t batch, const int32_t* inputs, const int32_t* targets, const T* state_in,
              T* state_out, bool train);

  // Rows of the embedding: ids [N] (checked) -> out [N,E], host memory.
  void embed(const int32_t* ids, int64_t N, T* out);
  // The softmax layer's logits: h [N,H] -> out [N,V], host memory.
  void logits(const T* h, int64_t N, T* out);

  // After the arena's parameters changed in place: the cells rebuild what they derive from them.
  void params_changed();
  // One optimizer update over the whole arena.
  void update(const OptimizerStep& step);

  Rng model_rng;  // dropout on the embedding and before the softmax layer (lib/lm.ts's model rng)
  Rng stack_rng;  // dropout between layers (lib/layers.ts's StackedLSTM rng)

  int64_t memory_bytes() const;

 private:
  void check_ids(const int32_t* ids, int64_t n, int32_t lowest, const char* what) const;

  LanguageModelConfig cfg_;
  std::shared_ptr<Backend<T>> backend_;
  std::shared_ptr<Arena<T>> arena_;
  std::vector<std::shared_ptr<Cell<T>>> cells_;
  int64_t embedding_ = 0, dense_ = 0;  // arena offsets
  std::vector<int64_t> cell_offsets_;
  // Per step, reused (backend memory): layer inputs and outputs, dropout masks, the state, logits and the
  // gradients flowing back (grad_[0] and grad_[1] take turns as a layer's dy and dx).
  std::vector<Buffer<T>> inputs_, outputs_, masks_;
  Buffer<T> head_, head_mask_, logits_, grad_[2], cell_grads_, dc0_, dh0_, state_in_, state_out_, rows_in_, rows_out_;
};

}  // namespace wnlstm
