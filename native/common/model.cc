// The model runtime of model.h, over any backend's cells and the host ops.
#include "wnlstm/model.h"

#include <algorithm>
#include <string>

namespace wnlstm {

template <typename T>
void Arena<T>::add(const std::string& name, int64_t size) {
  blocks.push_back({name, int64_t(params.size()), size});
  params.resize(params.size() + size_t(size), T(0));
  grads.resize(params.size(), T(0));
}

template <typename T>
const typename Arena<T>::Block& Arena<T>::block(const std::string& name) const {
  for (const Block& b : blocks)
    if (b.name == name) return b;
  std::string names;
  for (const Block& b : blocks) names += (names.empty() ? "" : ", ") + b.name;
  throw Error("ERR_WNLSTM_UNKNOWN_WEIGHT", "this model has no block '" + name + "' (it has: " + names + ")");
}

template <typename T>
double Arena<T>::grad_sum_squares() const {
  double sum = 0;
  for (const Block& b : blocks) sum += sum_squares(grads.data() + b.offset, b.size);
  return sum;
}

template <typename T>
void Arena<T>::update(const OptimizerStep& step) {
  if (step.needs_s1() && s1.empty()) s1.assign(params.size(), T(0));
  if (step.needs_s2() && s2.empty()) s2.assign(params.size(), T(0));
  optimizer_update(step, params.data(), grads.data(), s1.empty() ? nullptr : s1.data(),
                   s2.empty() ? nullptr : s2.data(), int64_t(params.size()));
}

template <typename T>
int64_t Arena<T>::memory_bytes() const {
  return int64_t((params.capacity() + grads.capacity() + s1.capacity() + s2.capacity()) * sizeof(T));
}

template <typename T>
LanguageModel<T>::LanguageModel(const LanguageModelConfig& config, std::vector<std::shared_ptr<Cell<T>>> cells)
    : cfg_(config), arena_(std::make_shared<Arena<T>>()), cells_(std::move(cells)) {
  const int64_t V = cfg_.vocab_size, E = cfg_.embedding_size, H = cfg_.hidden_size;
  auto fail = [](const std::string& m) { throw Error("ERR_WNLSTM_CONFIG", m); };
  if (V < 1 || E < 1 || H < 1 || cfg_.layers < 1) fail("vocabSize, embeddingSize, hiddenSize and layers must be at least 1");
  if (double(V) * E > double(kMaxElements) || double(V) * H > double(kMaxElements))
    fail("the embedding or softmax layer would exceed " + std::to_string(kMaxElements) + " elements");
  if (!(cfg_.dropout >= 0 && cfg_.dropout < 1)) fail("dropout must be in [0, 1)");
  if (int64_t(cells_.size()) != cfg_.layers) fail("the model needs one cell per layer");
  for (size_t l = 0; l < cells_.size(); ++l) {
    const CellConfig& c = cells_[l]->config();
    if (c.input_size != (l == 0 ? E : H) || c.num_units != H || c.num_proj != 0)
      fail("layer " + std::to_string(l) + "'s cell does not fit the model (inputs, units or projection)");
  }
  arena_->add("embedding", V * E);
  for (size_t l = 0; l < cells_.size(); ++l) {
    cell_offsets_.push_back(int64_t(arena_->params.size()));
    arena_->add("lstm_" + std::to_string(l), param_count(cells_[l]->config()));
  }
  dense_ = int64_t(arena_->params.size());
  arena_->add("dense", H * V + V);
  for (size_t l = 0; l < cells_.size(); ++l)
    cells_[l]->bind_params(arena_->params.data() + cell_offsets_[l], std::shared_ptr<void>(arena_));
  inputs_.resize(cells_.size()), outputs_.resize(cells_.size()), masks_.resize(cells_.size());
}

template <typename T>
void LanguageModel<T>::check_ids(const int32_t* ids, int64_t n, int32_t lowest, const char* what) const {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < lowest || ids[i] >= cfg_.vocab_size)
      throw Error("ERR_WNLSTM_RANGE", std::string(what) + " " + std::to_string(ids[i]) + " (at " + std::to_string(i) +
                                          ") is outside the vocabulary (" + std::to_string(cfg_.vocab_size) + ")");
}

template <typename T>
double LanguageModel<T>::step(int64_t steps, int64_t batch, const int32_t* inputs, const int32_t* targets,
                              const T* state_in, T* state_out, bool train) {
  const int64_t N = steps * batch, E = cfg_.embedding_size, H = cfg_.hidden_size, V = cfg_.vocab_size;
  if (steps < 1 || batch < 1) throw Error("ERR_WNLSTM_SHAPE", "a window needs at least one step and one stream");
  if (double(N) * double(std::max({E, 4 * H, V})) > double(kMaxElements))
    throw Error("ERR_WNLSTM_SIZE", "steps x batch x width exceeds " + std::to_string(kMaxElements));
  check_ids(inputs, N, 0, "token id");
  check_ids(targets, N, -1, "target");
  const bool drop = train && cfg_.dropout > 0;
  T* params = arena_->params.data();
  T* grads = arena_->grads.data();

  // Forward, in the order the JS layers drew their dropout masks: embedding, between layers, head.
  std::vector<T>& emb = inputs_[0];
  emb.resize(N * E);
  embedding_forward(params + embedding_, E, inputs, N, emb.data());
  if (drop) dropout(emb.data(), (masks_[0].resize(N * E), masks_[0].data()), N * E, cfg_.dropout, model_rng);
  for (size_t l = 0; l < cells_.size(); ++l) {
    const T* x = l == 0 ? emb.data() : outputs_[l - 1].data();  // a copy only where dropout changes it
    if (l > 0 && drop) {
      inputs_[l] = outputs_[l - 1];
      dropout(inputs_[l].data(), (masks_[l].resize(N * H), masks_[l].data()), N * H, cfg_.dropout, stack_rng);
      x = inputs_[l].data();
    }
    outputs_[l].resize(N * H);
    const T* c0 = state_in ? state_in + 2 * l * batch * H : nullptr;
    const T* h0 = state_in ? c0 + batch * H : nullptr;
    T* c = state_out + 2 * l * batch * H;
    cells_[l]->forward(steps, batch, x, c0, h0, nullptr, outputs_[l].data(), c, c + batch * H, train);
  }
  const T* h = outputs_.back().data();
  if (drop) {
    head_ = outputs_.back();
    head_mask_.resize(N * H);
    dropout(head_.data(), head_mask_.data(), N * H, cfg_.dropout, model_rng);
    h = head_.data();
  }
  logits_.resize(N * V);
  const T* kernel = params + dense_;
  dense_forward(h, kernel, kernel + H * V, N, H, V, logits_.data());
  const double loss = softmax_cross_entropy(logits_.data(), targets, N, V, 1.0 / double(N)) / double(N);
  if (!train) return loss;

  // Backward: logits_ now holds d loss / d logits.
  dh_.resize(N * H);
  dense_backward(h, kernel, logits_.data(), N, H, V, grads + dense_, grads + dense_ + H * V, dh_.data());
  if (drop) apply_mask(dh_.data(), head_mask_.data(), N * H);
  for (size_t l = cells_.size(); l-- > 0;) {
    const int64_t I = l == 0 ? E : H, n = param_count(cells_[l]->config());
    cell_grads_.resize(n), dx_.resize(N * I), dc0_.resize(batch * H), dh0_.resize(batch * H);
    cells_[l]->backward(dh_.data(), nullptr, nullptr, cell_grads_.data(), dx_.data(), dc0_.data(), dh0_.data());
    T* g = grads + cell_offsets_[l];
    for (int64_t i = 0; i < n; ++i) g[i] += cell_grads_[i];
    if (drop) apply_mask(dx_.data(), masks_[l].data(), N * I);
    dh_.swap(dx_);
  }
  embedding_backward(dh_.data(), E, inputs, N, grads + embedding_);
  return loss;
}

template <typename T>
void LanguageModel<T>::embed(const int32_t* ids, int64_t N, T* out) const {
  check_ids(ids, N, 0, "token id");
  embedding_forward(arena_->params.data() + embedding_, cfg_.embedding_size, ids, N, out);
}

template <typename T>
void LanguageModel<T>::logits(const T* h, int64_t N, T* out) const {
  const int64_t H = cfg_.hidden_size, V = cfg_.vocab_size;
  const T* kernel = arena_->params.data() + dense_;
  dense_forward(h, kernel, kernel + H * V, N, H, V, out);
}

template <typename T>
void LanguageModel<T>::params_changed() {
  for (auto& cell : cells_) cell->params_changed();
}

template <typename T>
void LanguageModel<T>::update(const OptimizerStep& step) {
  arena_->update(step);
  params_changed();
}

template <typename T>
int64_t LanguageModel<T>::memory_bytes() const {
  auto bytes = [](const std::vector<T>& v) { return int64_t(v.capacity() * sizeof(T)); };
  int64_t n = arena_->memory_bytes();
  for (const auto* group : {&inputs_, &outputs_, &masks_})
    for (const std::vector<T>& v : *group) n += bytes(v);
  for (const std::vector<T>* v : {&head_, &head_mask_, &logits_, &dh_, &dx_, &cell_grads_, &dc0_, &dh0_}) n += bytes(*v);
  return n;
}

template struct Arena<float>;
template struct Arena<double>;
template class LanguageModel<float>;
template class LanguageModel<double>;

}  // namespace wnlstm
