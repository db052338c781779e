// The model runtime: a model's parameters, gradients and optimizer state live here, each in one flat
// buffer (an arena), and a whole training step (embedding, dropout, the stacked cells, softmax layer,
// loss, all backward passes) runs here, so that per step only token ids go in and the loss comes out.
// The cells are the backend's (cell.h); the ops around them are the host ops of ops.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "wnlstm/cell.h"
#include "wnlstm/ops.h"

namespace wnlstm {

// Parameters, gradients and optimizer state of a model, each one flat host buffer; blocks are named
// ranges of them (the same range in each). One contiguous gradient buffer is also what an all-reduce
// over devices needs.
template <typename T>
struct Arena {
  struct Block {
    std::string name;
    int64_t offset, size;
  };
  std::vector<Block> blocks;
  std::vector<T> params, grads;
  std::vector<T> s1, s2;  // the optimizer's state: empty until an update needs it

  // Appends a block of `size` zeros (before any cell is bound: the buffers never move after that).
  void add(const std::string& name, int64_t size);
  // Throws ERR_WNLSTM_UNKNOWN_WEIGHT for a name the model does not have.
  const Block& block(const std::string& name) const;
  // Sum of squared gradients, block by block (sum_squares of each, added in block order).
  double grad_sum_squares() const;
  // One fused update of every parameter; creates the state buffers (zeros) the kind needs.
  void update(const OptimizerStep& step);
  int64_t memory_bytes() const;
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
  // cells: layer 0 takes embedding_size inputs, each next one hidden_size; all have hidden_size units and
  // no projection (ERR_WNLSTM_CONFIG otherwise). Their parameters move into the arena (bind_params).
  LanguageModel(const LanguageModelConfig& config, std::vector<std::shared_ptr<Cell<T>>> cells);

  const LanguageModelConfig& config() const { return cfg_; }
  Arena<T>& arena() { return *arena_; }
  const Arena<T>& arena() const { return *arena_; }

  // One window of `batch` streams over `steps` steps. inputs, targets [steps*batch] in, time-major; each
  // input in [0, V), each target in [0, V) or -1 (no loss); ERR_WNLSTM_RANGE before anything changes.
  // state_in [layers][c [B,H], h [B,H]] in (nullptr = zeros); state_out, same shape, out. With `train`:
  // dropout on, and the gradients of the mean loss accumulate into arena().grads. Returns the mean loss
  // over the window's tokens (nats).
  double step(int64_t steps, int64_t batch, const int32_t* inputs, const int32_t* targets, const T* state_in,
              T* state_out, bool train);

  // Rows of the embedding: ids [N] (checked) -> out [N,E].
  void embed(const int32_t* ids, int64_t N, T* out) const;
  // The softmax layer's logits: h [N,H] -> out [N,V].
  void logits(const T* h, int64_t N, T* out) const;

  // After arena().params changed in place: the cells rebuild what they derive from them.
  void params_changed();
  // One optimizer update over the whole arena.
  void update(const OptimizerStep& step);

  Rng model_rng;  // dropout on the embedding and before the softmax layer (lib/lm.ts's model rng)
  Rng stack_rng;  // dropout between layers (lib/layers.ts's StackedLSTM rng)

  int64_t memory_bytes() const;

 private:
  void check_ids(const int32_t* ids, int64_t n, int32_t lowest, const char* what) const;

  LanguageModelConfig cfg_;
  std::shared_ptr<Arena<T>> arena_;
  std::vector<std::shared_ptr<Cell<T>>> cells_;
  int64_t embedding_ = 0, dense_ = 0;  // arena offsets
  std::vector<int64_t> cell_offsets_;
  // Per step, reused: layer inputs and outputs, dropout masks, logits and the gradients flowing back.
  std::vector<std::vector<T>> inputs_, outputs_, masks_;
  std::vector<T> head_, head_mask_, logits_, dh_, dx_, cell_grads_, dc0_, dh0_;
};

}  // namespace wnlstm
