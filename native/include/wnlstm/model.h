// The model runtime: a model's parameters, gradients and optimizer state live here, each in one flat
// buffer (an arena), and a whole training step (embedding, dropout, the stacked cells, the head, the loss,
// all backward passes) runs here, so that per step only the inputs and labels go in and the loss comes out.
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

// The loss of a model's head: softmax cross-entropy over classes, or squared error over values.
enum class Loss { CrossEntropy, SquaredError };

// How the first layer projects its embedded inputs (x . Wx, the bulk of that layer's input work):
//  - Rows: each step's embedded row, as any layer's input (N rows x E x 4H multiply-adds, and as many for
//    each of its two gradients);
//  - Table: the embedding's V rows once per batch, then the row of each id gathered, and in the backward
//    the gradient summed by id before the two gradient products (V instead of N rows each): the same
//    values for a fraction of the work when the vocabulary is small against the batch (a character model).
//    Not with dropout on the input, which makes each step's row its own.
//  - Auto: Table when 2V <= N and the input has no dropout in this step.
enum class EmbeddingProjection { Auto, Table, Rows };

struct SequenceModelConfig {
  int64_t vocab_size = 0;  // > 0: token ids in, through an embedding [vocab_size, input_size]; 0: features in
  int64_t input_size = 0;  // the embedding's width, or the features per step
  int64_t hidden_size = 0, layers = 0;
  int64_t output_size = 0;  // the head's outputs: classes (cross-entropy) or values (squared error)
  bool per_step = true;     // the head on every step's output (a language model, tagging, forecasting), or
                            // on each row's last valid output (classifying or scoring whole sequences)
  Loss loss = Loss::CrossEntropy;
  double dropout = 0;  // on the input, between layers and before the head
  // Each layer runs two cells, one over each sequence forward and one over it reversed (within its
  // length), and outputs both directions' h side by side [.., 2H]; the last-step head takes the forward
  // cell's final h and the backward cell's (its state after the sequence's first step).
  bool bidirectional = false;
  EmbeddingProjection embedding_projection = EmbeddingProjection::Auto;  // with token ids
  int64_t directions() const { return bidirectional ? 2 : 1; }
};

// One batch of sequences for SequenceModel::step, all host memory, time-major. A head row is one step of
// one sequence (per_step: steps*batch rows, row t*batch + b) or one sequence (batch rows).
template <typename T>
struct Batch {
  int64_t steps = 0, batch = 0;
  const int32_t* ids = nullptr;      // [steps*batch], each in [0, vocab_size) (with an embedding)
  const T* features = nullptr;       // [steps*batch, input_size] (without)
  const int32_t* lengths = nullptr;  // [batch], each in [0, steps]: the steps past a row's length are
                                     // padding (no output, no loss); nullptr = all steps
  const int32_t* labels = nullptr;   // cross-entropy: a class per head row, in [0, output_size), -1 = no loss
  const T* targets = nullptr;        // squared error: [head rows, output_size]
  const T* state_in = nullptr;       // [layers][directions][c [B,H], h [B,H]], nullptr = zeros
  T* state_out = nullptr;            // the same shape, out (nullptr: not wanted)
  T* outputs = nullptr;              // the head's outputs [head rows, output_size], out (logits or values;
                                     // nullptr: not wanted)
};

// A recurrent sequence model: embedding [V,E] (or float features) -> dropout -> stacked cells -> dropout ->
// head (dense kernel [H*directions,O], bias [O]) -> loss. With per_step heads and cross-entropy over the
// vocabulary it is Zaremba et al.'s RNN language model. Arena blocks, in order: "embedding" (with ids),
// "lstm_<l>" and, bidirectional, "lstm_<l>_backward" (each cell's parameters in param_layout order), "dense"
// (kernel, then bias).
template <typename T>
class SequenceModel {
 public:
  using value_type = T;
  // cells: one per layer and direction (layer by layer, forward first); layer 0 takes input_size inputs,
  // each next one hidden_size * directions; all have hidden_size units and no projection, and all live on
  // one device (ERR_WNLSTM_CONFIG otherwise). The model runs on that device's
  // backend; the cells' parameters move into its arena (bind_params).
  SequenceModel(const SequenceModelConfig& config, std::vector<std::shared_ptr<Cell<T>>> cells);

  const SequenceModelConfig& config() const { return cfg_; }
  Arena<T>& arena() { return *arena_; }
  const Arena<T>& arena() const { return *arena_; }
  // Rows of the head for a batch: steps*batch (per_step) or batch.
  int64_t head_rows(int64_t steps, int64_t batch) const { return cfg_.per_step ? steps * batch : batch; }

  // One batch (see Batch); the inputs, labels and lengths are checked (ERR_WNLSTM_RANGE) before anything
  // changes. With `train`: dropout on, and the gradients of the mean loss accumulate into the arena's
  // gradients (on CUDA still queued when this returns; whatever reads them waits). Returns the mean loss
  // over the rows that have one (per output value for squared error; NaN without labels or targets).
  double step(const Batch<T>& batch, bool train);

  // Rows of the embedding: ids [N] (checked) -> out [N,E], host memory.
  void embed(const int32_t* ids, int64_t N, T* out);
  // The head on given outputs of the last layer: h [N,H*directions] -> out [N,O], host memory.
  void head(const T* h, int64_t N, T* out);

  // After the arena's parameters changed in place: the cells rebuild what they derive from them.
  void params_changed();
  // One optimizer update over the whole arena.
  void update(const OptimizerStep& step);

  Rng model_rng;  // dropout on the input and before the head (lib/lm.ts's model rng)
  Rng stack_rng;  // dropout between layers (lib/layers.ts's StackedLSTM rng)

  int64_t memory_bytes() const;

 private:
  void check_ids(const int32_t* ids, int64_t n, int32_t lowest, int64_t limit, const char* what) const;

  SequenceModelConfig cfg_;
  std::shared_ptr<Backend<T>> backend_;
  std::shared_ptr<Arena<T>> arena_;
  std::vector<std::shared_ptr<Cell<T>>> cells_;
  int64_t embedding_ = 0, dense_ = 0;  // arena offsets
  std::vector<int64_t> cell_offsets_;
  // Per step, reused (backend memory): layer inputs and outputs, dropout masks, the state, the head's outputs
  // and the gradients flowing back (grad_[0] and grad_[1] take turns as a layer's dy and dx).
  std::vector<Buffer<T>> inputs_, outputs_, masks_;
  // Bidirectional: per layer, the reversed input and each direction's outputs (kept for the backward).
  std::vector<Buffer<T>> reversed_, direction_out_;
  Buffer<T> head_, head_mask_, logits_, targets_, grad_[2], dlast_, cell_grads_, dc0_, dh0_, state_in_, state_out_,
      rows_in_, rows_out_, last_, scratch_[6];  // scratch: a bidirectional layer's temporaries
  // The first layer's projected table (EmbeddingProjection::Table): [V,4H], its gradient, a direction's
  // gathered (then reversed) rows [N,4H], and the embedding's gradient from it [V,E].
  Buffer<T> table_, table_grad_, table_rows_, table_dembedding_;
  // Each cell's input in the last forward ([N,I], the model's buffers), for its backward.
  std::vector<const T*> cell_inputs_;
  Buffer<int32_t> lengths_;
  std::vector<int32_t> labels_;  // host: the labels with padding rows skipped
};

}  // namespace wnlstm
