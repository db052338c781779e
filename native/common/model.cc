// The model runtime of model.h, over any backend's memory, ops and cells.
#include "wnlstm/model.h"

#include <algorithm>
#include <limits>
#include <string>

namespace wnlstm {

template <typename T>
std::shared_ptr<Backend<T>> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend<T>();
  if (device.rfind("cuda:", 0) == 0) return make_cuda_backend<T>(std::stoi(device.substr(5)));
  throw Error("ERR_WNLSTM_CONFIG", "unknown device '" + device + "'");
}
template std::shared_ptr<Backend<float>> make_backend<float>(const std::string&);
template std::shared_ptr<Backend<double>> make_backend<double>(const std::string&);

template <typename T>
Arena<T>::Arena(std::shared_ptr<Backend<T>> backend, std::vector<Block> blocks)
    : backend_(std::move(backend)), blocks_(std::move(blocks)), params_(backend_), grads_(backend_), s1_(backend_),
      s2_(backend_) {
  for (const Block& b : blocks_) size_ = std::max(size_, b.offset + b.size);
  for (Buffer<T>* buf : {&params_, &grads_}) backend_->zero(buf->resize(size_), size_t(size_) * sizeof(T));
}

template <typename T>
const typename Arena<T>::Block& Arena<T>::block(const std::string& name) const {
  for (const Block& b : blocks_)
    if (b.name == name) return b;
  std::string names;
  for (const Block& b : blocks_) names += (names.empty() ? "" : ", ") + b.name;
  throw Error("ERR_WNLSTM_UNKNOWN_WEIGHT", "this model has no block '" + name + "' (it has: " + names + ")");
}

template <typename T>
Buffer<T>& Arena<T>::buffer(Part part) const {
  switch (part) {
    case Part::Params: return params_;
    case Part::Grads: return grads_;
    case Part::S1: return s1_;
    case Part::S2: break;
  }
  return s2_;
}

template <typename T>
void Arena<T>::ensure(Part part) {
  Buffer<T>& b = buffer(part);
  if (!b.data()) backend_->zero(b.resize(size_), size_t(size_) * sizeof(T));
}

template <typename T>
void Arena<T>::read(Part part, int64_t offset, int64_t n, T* host) const {
  backend_->download(host, buffer(part).data() + offset, size_t(n) * sizeof(T));
}

template <typename T>
void Arena<T>::write(Part part, int64_t offset, int64_t n, const T* host) {
  ensure(part);
  backend_->upload(buffer(part).data() + offset, host, size_t(n) * sizeof(T));
}

template <typename T>
void Arena<T>::zero(Part part, int64_t offset, int64_t n) {
  if (has(part)) backend_->zero(buffer(part).data() + offset, size_t(n) * sizeof(T));
}

template <typename T>
void Arena<T>::clear_state() {
  s1_.release(), s2_.release();
}

template <typename T>
double Arena<T>::grad_sum_squares() const {
  double sum = 0;
  for (const Block& b : blocks_) sum += backend_->sum_squares(grads_.data() + b.offset, b.size);
  return sum;
}

template <typename T>
void Arena<T>::update(const OptimizerStep& step) {
  if (step.needs_s1()) ensure(Part::S1);
  if (step.needs_s2()) ensure(Part::S2);
  backend_->optimizer_update(step, params_.data(), grads_.data(), s1_.data(), s2_.data(), size_);
}

template <typename T>
int64_t Arena<T>::memory_bytes() const {
  return params_.bytes() + grads_.bytes() + s1_.bytes() + s2_.bytes();
}

namespace {
// The backend of the cells' device (all the cells must share it).
template <typename T>
std::shared_ptr<Backend<T>> backend_of(const std::vector<std::shared_ptr<Cell<T>>>& cells) {
  if (cells.empty()) throw Error("ERR_WNLSTM_CONFIG", "the model needs one cell per layer");
  for (const auto& cell : cells)
    if (cell->device() != cells[0]->device())
      throw Error("ERR_WNLSTM_CONFIG", "the model's cells must all be on one device (found " + cells[0]->device() +
                                           " and " + cell->device() + ")");
  return make_backend<T>(cells[0]->device());
}
}  // namespace

template <typename T>
SequenceModel<T>::SequenceModel(const SequenceModelConfig& config, std::vector<std::shared_ptr<Cell<T>>> cells)
    : cfg_(config), backend_(backend_of(cells)), cells_(std::move(cells)), head_(backend_), head_mask_(backend_),
      logits_(backend_), targets_(backend_), grad_{Buffer<T>(backend_), Buffer<T>(backend_)}, dlast_(backend_),
      cell_grads_(backend_), dc0_(backend_), dh0_(backend_), state_in_(backend_), state_out_(backend_),
      rows_in_(backend_), rows_out_(backend_), last_(backend_),
      scratch_{Buffer<T>(backend_), Buffer<T>(backend_), Buffer<T>(backend_), Buffer<T>(backend_), Buffer<T>(backend_),
               Buffer<T>(backend_)}, table_(backend_), table_grad_(backend_), table_rows_(backend_),
      table_dembedding_(backend_), lengths_(backend_) {
  const int64_t V = cfg_.vocab_size, E = cfg_.input_size, H = cfg_.hidden_size, O = cfg_.output_size;
  const int64_t D = cfg_.directions();
  auto fail = [](const std::string& m) { throw Error("ERR_WNLSTM_CONFIG", m); };
  if (V < 0 || E < 1 || H < 1 || O < 1 || cfg_.layers < 1)
    fail("inputSize, hiddenSize, outputSize and layers must be at least 1");
  if (double(V) * E > double(kMaxElements) || double(O) * H * D > double(kMaxElements))
    fail("the embedding or the head would exceed " + std::to_string(kMaxElements) + " elements");
  if (!(cfg_.dropout >= 0 && cfg_.dropout < 1)) fail("dropout must be in [0, 1)");
  if (int64_t(cells_.size()) != cfg_.layers * D) fail("the model needs one cell per layer and direction");
  for (size_t k = 0; k < cells_.size(); ++k) {
    const CellConfig& c = cells_[k]->config();
    if (c.input_size != (k < size_t(D) ? E : H * D) || c.num_units != H || c.num_proj != 0)
      fail("cell " + std::to_string(k) + " does not fit the model (inputs, units or projection)");
  }
  std::vector<typename Arena<T>::Block> blocks;
  int64_t size = 0;
  auto add = [&](const std::string& name, int64_t n) {
    blocks.push_back({name, size, n});
    size += n;
  };
  if (V > 0) add("embedding", V * E);
  for (size_t k = 0; k < cells_.size(); ++k) {
    cell_offsets_.push_back(size);
    add("lstm_" + std::to_string(k / D) + (k % D ? "_backward" : ""), param_count(cells_[k]->config()));
  }
  dense_ = size;
  add("dense", H * D * O + O);
  arena_ = std::make_shared<Arena<T>>(backend_, std::move(blocks));
  for (size_t k = 0; k < cells_.size(); ++k)
    cells_[k]->bind_params(arena_->params() + cell_offsets_[k], std::shared_ptr<void>(arena_));
  for (int64_t l = 0; l < cfg_.layers; ++l)
    for (auto* group : {&inputs_, &outputs_, &masks_, &reversed_}) group->emplace_back(backend_);
  for (size_t k = 0; k < cells_.size(); ++k) direction_out_.emplace_back(backend_);
  cell_inputs_.assign(cells_.size(), nullptr);
}

template <typename T>
void SequenceModel<T>::check_ids(const int32_t* ids, int64_t n, int32_t lowest, int64_t limit, const char* what) const {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < lowest || ids[i] >= limit)
      throw Error("ERR_WNLSTM_RANGE", std::string(what) + " " + std::to_string(ids[i]) + " (at " + std::to_string(i) +
                                          ") is outside [" + std::to_string(lowest) + ", " + std::to_string(limit) + ")");
}

template <typename T>
double SequenceModel<T>::step(const Batch<T>& in, bool train) {
  const int64_t steps = in.steps, batch = in.batch, N = steps * batch, E = cfg_.input_size, H = cfg_.hidden_size;
  const int64_t O = cfg_.output_size, L = cfg_.layers, per = batch * H, R = head_rows(steps, batch);
  const bool ce = cfg_.loss == Loss::CrossEntropy;
  if (steps < 1 || batch < 1) throw Error("ERR_WNLSTM_SHAPE", "a batch needs at least one step and one sequence");
  if (double(N) * double(std::max({E, 4 * H, O})) > double(kMaxElements))
    throw Error("ERR_WNLSTM_SIZE", "steps x batch x width exceeds " + std::to_string(kMaxElements));
  if (cfg_.vocab_size > 0 ? !in.ids : !in.features)
    throw Error("ERR_WNLSTM_TYPE", cfg_.vocab_size > 0 ? "this model takes token ids" : "this model takes features");
  const bool has_loss = ce ? in.labels != nullptr : in.targets != nullptr;
  if (train && !has_loss) throw Error("ERR_WNLSTM_TYPE", ce ? "training needs labels" : "training needs targets");
  if (in.ids) check_ids(in.ids, N, 0, cfg_.vocab_size, "token id");
  if (in.lengths) check_ids(in.lengths, batch, 0, steps + 1, "sequence length");
  // The rows that have a loss: a per-step head skips the padding (steps past a row's length).
  const int32_t* labels = in.labels;
  std::vector<int32_t>& keep = labels_;
  if (ce && labels) {
    check_ids(labels, R, -1, O, "label");
    if (in.lengths && cfg_.per_step) {
      keep.assign(labels, labels + R);
      for (int64_t t = 0; t < steps; ++t)
        for (int64_t b = 0; b < batch; ++b)
          if (t >= in.lengths[b]) keep[size_t(t * batch + b)] = -1;
      labels = keep.data();
    }
  } else if (!ce && in.lengths && cfg_.per_step) {
    keep.assign(size_t(R), 1);
    for (int64_t t = 0; t < steps; ++t)
      for (int64_t b = 0; b < batch; ++b) keep[size_t(t * batch + b)] = t < in.lengths[b];
  } else {
    keep.clear();
  }
  int64_t counted = R;
  if (ce && labels) counted = std::count_if(labels, labels + R, [](int32_t y) { return y >= 0; });
  if (!ce && !keep.empty()) counted = std::count(keep.begin(), keep.end(), 1);
  const double per_row = ce ? 1.0 : double(O), scale = counted > 0 ? 1.0 / (double(counted) * per_row) : 0.0;

  Backend<T>& be = *backend_;
  const bool drop = train && cfg_.dropout > 0;
  const int64_t D = cfg_.directions(), HD = H * D, S = L * D;  // S: cells, one state each
  T* params = arena_->params();
  T* grads = arena_->grads();
  const T* states = nullptr;
  if (in.state_in) {
    states = state_in_.resize(2 * S * per);
    be.upload(state_in_.data(), in.state_in, size_t(2 * S * per) * sizeof(T));
  }
  const int32_t* lengths = nullptr;
  if (in.lengths) {
    lengths = lengths_.resize(batch);
    be.upload(lengths_.data(), in.lengths, size_t(batch) * sizeof(int32_t));
  }
  T* next = state_out_.resize(2 * S * per);

  // The first layer's inputs: each step's embedded row, or rows of the projected table (model.h).
  const int64_t V = cfg_.vocab_size, G = 4 * H;
  const EmbeddingProjection projection = cfg_.embedding_projection;
  const bool table = in.ids && !drop && double(V) * double(std::max(G, E)) <= double(kMaxElements) &&
                     (projection == EmbeddingProjection::Table ||
                      (projection == EmbeddingProjection::Auto && 2 * V <= N));

  // Forward, in the order the JS layers drew their dropout masks: input, between layers, head.
  T* x0 = table ? nullptr : inputs_[0].resize(N * E);  // the table's path embeds no rows
  if (in.ids && !table) be.embedding_forward(params + embedding_, E, in.ids, N, x0);
  else if (!in.ids) be.upload(x0, in.features, size_t(N * E) * sizeof(T));
  if (drop) be.dropout(x0, masks_[0].resize(N * E), N * E, cfg_.dropout, model_rng);
  for (int64_t l = 0; l < L; ++l) {
    const int64_t I = l == 0 ? E : HD;
    const T* x = l == 0 ? x0 : outputs_[l - 1].data();  // a copy only where dropout changes it
    if (l > 0 && drop) {
      T* kept = inputs_[l].resize(N * I);
      be.copy(kept, x, size_t(N * I) * sizeof(T));
      be.dropout(kept, masks_[l].resize(N * I), N * I, cfg_.dropout, stack_rng);
      x = kept;
    }
    T* out = outputs_[l].resize(N * HD);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      const T* c0 = states ? states + 2 * k * per : nullptr;
      const T* h0 = states ? c0 + per : nullptr;
      T* c = next + 2 * k * per;
      T* y = D == 1 ? out : direction_out_[k].resize(N * H);
      if (l == 0 && table) {  // the projection of each id's row is that row of the projected table
        T* zx = cells_[k]->input_gates(steps, batch, train);
        cells_[k]->project_inputs(V, params + embedding_, table_.resize(V * G));
        if (d == 0) {
          be.embedding_forward(table_.data(), G, in.ids, N, zx);
        } else {  // reversed, as the backward direction reads each sequence
          be.embedding_forward(table_.data(), G, in.ids, N, table_rows_.resize(N * G));
          be.reverse_sequences(table_rows_.data(), in.lengths, steps, batch, G, zx);
        }
        cell_inputs_[k] = nullptr;
        cells_[k]->forward_projected(steps, batch, c0, h0, lengths, y, c, c + per, train);
      } else {
        const T* xin = x;
        if (d == 1) {  // the backward direction reads each sequence reversed
          T* reversed = reversed_[l].resize(N * I);
          be.reverse_sequences(x, in.lengths, steps, batch, I, reversed);
          xin = reversed;
        }
        cell_inputs_[k] = xin;
        if (train) {  // the passes over the model's own input (the cell keeps no copy)
          cells_[k]->project_inputs(N, xin, cells_[k]->input_gates(steps, batch, true));
          cells_[k]->forward_projected(steps, batch, c0, h0, lengths, y, c, c + per, true);
        } else {  // the cell's own forward, which may project by chunks of steps (less memory)
          cells_[k]->device_forward(steps, batch, xin, c0, h0, lengths, y, c, c + per, false);
        }
      }
    }
    if (D == 2) {  // both directions' outputs side by side, the backward one in the sequence's order
      T* back = scratch_[0].resize(N * H);
      be.reverse_sequences(direction_out_[l * D + 1].data(), in.lengths, steps, batch, H, back);
      be.concat_columns(direction_out_[l * D].data(), H, back, H, N, out);
    }
  }
  // The head's input: every output of the last layer, or its cells' final h (the forward cell's at each
  // row's last valid step; the backward cell's after the row's first step).
  const T* h = outputs_.back().data();
  if (!cfg_.per_step) {
    const T* final_h = next + 2 * (S - D) * per + per;
    h = final_h;
    if (D == 2) be.concat_columns(final_h, H, final_h + 2 * per, H, batch, last_.resize(batch * HD)), h = last_.data();
  }
  if (drop) {
    T* kept = head_.resize(R * HD);
    be.copy(kept, h, size_t(R * HD) * sizeof(T));
    be.dropout(kept, head_mask_.resize(R * HD), R * HD, cfg_.dropout, model_rng);
    h = kept;
  }
  T* logits = logits_.resize(R * O);
  const T* kernel = params + dense_;
  be.dense_forward(h, kernel, kernel + HD * O, R, HD, O, logits);
  if (in.outputs) be.download(in.outputs, logits, size_t(R * O) * sizeof(T));
  double loss = std::numeric_limits<double>::quiet_NaN();
  if (has_loss) {
    double sum;
    if (ce) {
      sum = be.softmax_cross_entropy(logits, labels, R, O, scale);
    } else {
      T* target = targets_.resize(R * O);
      be.upload(target, in.targets, size_t(R * O) * sizeof(T));
      sum = be.squared_error(logits, target, keep.empty() ? nullptr : keep.data(), R, O, scale);
    }
    loss = counted > 0 ? sum / (double(counted) * per_row) : 0.0;
  }
  if (in.state_out) be.download(in.state_out, next, size_t(2 * S * per) * sizeof(T));
  if (!train) return loss;

  // Backward: logits now holds d loss / d logits; grad_[k] is the gradient flowing into the layer below.
  T* dh = (cfg_.per_step ? grad_[0] : dlast_).resize(R * HD);
  be.dense_backward(h, kernel, logits, R, HD, O, grads + dense_, grads + dense_ + HD * O, dh);
  if (drop) be.apply_mask(dh, head_mask_.data(), R * HD);
  // The last layer's final-state gradients, per direction (a last-step head), and no loss on its outputs.
  const T* dfinal[2] = {nullptr, nullptr};
  if (!cfg_.per_step) {
    be.zero(grad_[0].resize(N * HD), size_t(N * HD) * sizeof(T));
    if (D == 1) dfinal[0] = dlast_.data();
    else be.split_columns(dlast_.data(), H, H, batch, scratch_[4].resize(per), scratch_[5].resize(per)),
         dfinal[0] = scratch_[4].data(), dfinal[1] = scratch_[5].data();
  }
  auto run_backward = [&](int64_t k, const T* dy, const T* dh_final, T* dx) {
    const int64_t n = param_count(cells_[k]->config());
    T* g = cell_grads_.resize(n);
    const T* dz = cells_[k]->backward_projected(dy, nullptr, dh_final, g, dc0_.resize(per), dh0_.resize(per));
    if (cell_inputs_[k]) {
      cells_[k]->project_inputs_backward(N, cell_inputs_[k], dz, g, dx);
    } else {  // the projected table: dz summed by id is its gradient, from which the kernel's and the embedding's
      if (k == 1) {  // the backward direction's dz is in reversed order
        be.reverse_sequences(dz, in.lengths, steps, batch, G, table_rows_.resize(N * G));
        dz = table_rows_.data();
      }
      T* dtable = table_grad_.resize(V * G);
      be.zero(dtable, size_t(V * G) * sizeof(T));
      be.embedding_backward(dz, G, in.ids, N, dtable);
      T* dembedding = table_dembedding_.resize(V * E);
      cells_[k]->project_inputs_backward(V, params + embedding_, dtable, g, dembedding);
      be.add(grads + embedding_, dembedding, V * E);
    }
    be.add(grads + cell_offsets_[k], g, n);
  };
  int k = 0;
  for (int64_t l = L; l-- > 0;) {
    const int64_t I = l == 0 ? E : HD;
    const bool top = l == L - 1;
    T* dx = l == 0 && table ? nullptr : grad_[1 - k].resize(N * I);  // the table's path has no dx
    const T* dy = grad_[k].data();
    if (D == 1) {
      run_backward(l, dy, top ? dfinal[0] : nullptr, dx);
    } else {  // undo the concatenation and the reversals of the forward
      T* dy_forward = scratch_[0].resize(N * H);
      T* dy_backward = scratch_[1].resize(N * H);
      be.split_columns(dy, H, H, N, dy_forward, dy_backward);
      T* dy_reversed = scratch_[2].resize(N * H);
      be.reverse_sequences(dy_backward, in.lengths, steps, batch, H, dy_reversed);
      run_backward(l * D, dy_forward, top ? dfinal[0] : nullptr, dx);
      T* dx_reversed = dx ? scratch_[3].resize(N * I) : nullptr;
      run_backward(l * D + 1, dy_reversed, top ? dfinal[1] : nullptr, dx_reversed);
      if (dx) {
        T* dx_backward = scratch_[1].resize(N * I);
        be.reverse_sequences(dx_reversed, in.lengths, steps, batch, I, dx_backward);
        be.add(dx, dx_backward, N * I);
      }
    }
    if (drop) be.apply_mask(dx, masks_[l].data(), N * I);
    k = 1 - k;
  }
  if (in.ids && !table) be.embedding_backward(grad_[k].data(), E, in.ids, N, grads + embedding_);
  return loss;
}

template <typename T>
void SequenceModel<T>::embed(const int32_t* ids, int64_t N, T* out) {
  if (cfg_.vocab_size == 0) throw Error("ERR_WNLSTM_CONFIG", "this model has no embedding (it takes features)");
  check_ids(ids, N, 0, cfg_.vocab_size, "token id");
  const int64_t E = cfg_.input_size;
  T* rows = backend_->is_host() ? out : rows_out_.resize(N * E);
  backend_->embedding_forward(arena_->params() + embedding_, E, ids, N, rows);
  if (rows != out) backend_->download(out, rows, size_t(N * E) * sizeof(T));
}

template <typename T>
void SequenceModel<T>::head(const T* h, int64_t N, T* out) {
  const int64_t H = cfg_.hidden_size * cfg_.directions(), O = cfg_.output_size;
  const T* kernel = arena_->params() + dense_;
  if (backend_->is_host()) return backend_->dense_forward(h, kernel, kernel + H * O, N, H, O, out);
  T* x = rows_in_.resize(N * H);
  backend_->upload(x, h, size_t(N * H) * sizeof(T));
  T* y = rows_out_.resize(N * O);
  backend_->dense_forward(x, kernel, kernel + H * O, N, H, O, y);
  backend_->download(out, y, size_t(N * O) * sizeof(T));
}

template <typename T>
void SequenceModel<T>::params_changed() {
  for (auto& cell : cells_) cell->params_changed();
}

template <typename T>
void SequenceModel<T>::update(const OptimizerStep& step) {
  arena_->update(step);
  params_changed();
}

template <typename T>
int64_t SequenceModel<T>::memory_bytes() const {
  int64_t n = arena_->memory_bytes() + lengths_.bytes();
  for (const auto* group : {&inputs_, &outputs_, &masks_, &reversed_, &direction_out_})
    for (const Buffer<T>& b : *group) n += b.bytes();
  for (const Buffer<T>& b : scratch_) n += b.bytes();
  for (const Buffer<T>* b : {&head_, &head_mask_, &logits_, &targets_, &grad_[0], &grad_[1], &dlast_, &cell_grads_,
                             &dc0_, &dh0_, &state_in_, &state_out_, &rows_in_, &rows_out_, &last_, &table_,
                             &table_grad_, &table_rows_, &table_dembedding_})
    n += b->bytes();
  return n;
}

template class Arena<float>;
template class Arena<double>;
template class SequenceModel<float>;
template class SequenceModel<double>;

}  // namespace wnlstm
