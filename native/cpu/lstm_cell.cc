// The CPU backend: TF's (WeightNorm)LSTMCell over a sequence, forward and backward.
//
// Weight norm: W = V * s with the column scale s = g / |v| (s = 1 without norm, so both cells share one
// path), built and packed once whenever the parameters change, never per step or per call. The GEMMs
// multiply by W directly, so the pointwise pass only adds the bias. Backward turns dW into dV and dg per
// column (SPEC section 2).
#include <algorithm>
#include <cmath>
#include <limits>
#include <unistd.h>

#include "kernels.h"
#include "thread_pool.h"
#include "wnlstm/cell.h"

namespace wnlstm::cpu {
namespace {

constexpr double kNormEpsilon = 1e-12;       // TF's l2_normalize: rsqrt(max(sum v^2, eps))
constexpr int64_t kChunkElements = 1 << 20;  // inference runs the input GEMM over chunks of steps
// The recurrence is split by batch rows (no waiting between steps) when each thread gets at least kMinRows
// rows and the recurrent weights (read whole by every thread, every step) fit in a core's L2.
constexpr int64_t kMinRows = 8;
constexpr double kRowSplitBytes = 1 << 20;

// Splits [0, n) into one contiguous range per pool thread.
template <typename F>
void parallel_rows(int64_t n, F&& body) {
  const int tasks = int(std::min<int64_t>(n, num_threads()));
  if (tasks <= 1) return body(int64_t(0), n);
  parallel_for(tasks, [&](int task) { body(n * task / tasks, n * (task + 1) / tasks); });
}

void check_memory(double bytes) {
  static const double physical = double(sysconf(_SC_PHYS_PAGES)) * double(sysconf(_SC_PAGE_SIZE));
  if (physical > 0 && bytes > physical)
    throw Error("ERR_WNLSTM_OUT_OF_MEMORY", "this call needs " + std::to_string(int64_t(bytes / 1048576)) +
                                                " MiB, more than the machine's " +
                                                std::to_string(int64_t(physical / 1048576)) + " MiB");
}

// Column scales of one kernel block V[rows, cols]: sumsq[j] = sum_r V[r,j]^2, s[j] = g[j] / |v_j|.
// Sums in double; the columns are split between the pool's threads.
template <typename T>
void column_scales(const T* V, int64_t rows, int64_t cols, const T* g, T* sumsq, T* s) {
  parallel_rows(cols, [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(j1 - j0);
    kernels<T>().column_dots(V, V, rows, cols, j0, j1, acc.data());
    for (int64_t j = j0; j < j1; ++j) {
      sumsq[j] = T(acc[j - j0]);
      s[j] = T(double(g[j]) / std::sqrt(std::max(acc[j - j0], kNormEpsilon)));
    }
  });
}

// Turns dW (gradient of the normalised block, in place in dV) into dV, and writes dg:
//   dg = (dW . v) / |v|,  dV = s dW - (g dg / |v|^2) v.
template <typename T>
void weight_norm_grad(const T* V, int64_t rows, int64_t cols, const T* g, const T* sumsq, const T* s, T* dV,
                      T* dg) {
  parallel_rows(cols, [&](int64_t j0, int64_t j1) {
    const int64_t n = j1 - j0;
    std::vector<double> dot(n), scale(n), coef(n);
    kernels<T>().column_dots(dV, V, rows, cols, j0, j1, dot.data());
    for (int64_t j = 0; j < n; ++j) {
      const double ss = double(sumsq[j0 + j]), norm = std::sqrt(std::max(ss, kNormEpsilon));
      dg[j0 + j] = T(dot[j] / norm);
      scale[j] = double(s[j0 + j]);
      // Below eps, |v| is a constant.
      coef[j] = ss >= kNormEpsilon ? double(g[j0 + j]) * dot[j] / (norm * norm * norm) : 0.0;
    }
    kernels<T>().column_axpby(dV, V, rows, cols, j0, j1, scale.data(), coef.data());
  });
}

// Weight normalisation's pass on one kernel block (cell.h's NormBlock), on the CPU.
template <typename T>
class WeightNorm {
 public:
  explicit WeightNorm(const NormBlock& b) : b_(b), sumsq_(size_t(b.cols), T(0)), s_(size_t(b.cols), T(1)) {}
  // The column scales of the current parameters.
  void forward(const T* params) {
    if (b_.on) column_scales(params + b_.v, b_.rows, b_.cols, params + b_.g, sumsq_.data(), s_.data());
  }
  // grads holds dW in V's place: it becomes dV, and g's place gets dg (the scales of the last forward()).
  void backward(const T* params, T* grads) const {
    if (b_.on)
      weight_norm_grad(params + b_.v, b_.rows, b_.cols, params + b_.g, sumsq_.data(), s_.data(), grads + b_.v,
                       grads + b_.g);
  }
  const T* scales() const { return s_.data(); }
  int64_t memory_bytes() const { return int64_t((sumsq_.capacity() + s_.capacity()) * sizeof(T)); }

 private:
  NormBlock b_;
  std::vector<T> sumsq_, s_;
};

template <typename T>
class CpuCell final : public Cell<T> {
 public:
  explicit CpuCell(const CellConfig& config)
      : cfg_(checked(config)), params_(param_count(cfg_)), norm_input_(norm_blocks(cfg_).input),
        norm_recurrent_(norm_blocks(cfg_).recurrent), norm_projection_(norm_blocks(cfg_).projection) {
    I_ = cfg_.input_size, H_ = cfg_.num_units, P_ = cfg_.output_size(), K_ = I_ + P_, G_ = 4 * H_;
    off_ = param_offsets(cfg_);
    zeros_.assign(H_, T(0));
  }

  const CellConfig& config() const override { return cfg_; }

  void get_params(T* out) const override { std::copy(params_.begin(), params_.end(), out); }

  void set_params(const T* in, int64_t offset, int64_t count) override {
    if (offset < 0 || count < 0 || offset + count > int64_t(params_.size()))
      throw Error("ERR_WNLSTM_SHAPE", "parameter range out of bounds");
    std::copy(in, in + count, params_.begin() + offset);
    params_changed();
  }

  void bind_params(T* storage, std::shared_ptr<void> owner) override { params_.bind(storage, std::move(owner)); }

  void params_changed() override {
    scales_dirty_ = true;
    saved_steps_ = saved_batch_ = 0;  // a backward must see the weights its forward used
  }

  void apply_update(const OptimizerStep& step, const T* grads, T* s1, T* s2) override {
    optimizer_update(step, params_.data(), grads, s1, s2, params_.size());
    params_changed();
  }

  int64_t saved_steps() const override { return saved_steps_; }
  int64_t saved_batch() const override { return saved_batch_; }

  int64_t memory_bytes() const override {
    auto bytes = [](const auto& v) { return int64_t(v.capacity() * sizeof(v[0])); };
    int64_t n = 0;
    for (const std::vector<T>* v : {&zeros_, &w_, &wp_, &x_, &dz_, &dpre_}) n += bytes(*v);
    for (const WeightNorm<T>* w : {&norm_input_, &norm_recurrent_, &norm_projection_}) n += w->memory_bytes();
    for (const Activations* a : {&saved_, &scratch_})
      for (const std::vector<T>* v : {&a->cs, &a->hs, &a->gates, &a->c_raw, &a->hh, &a->pre}) n += bytes(*v);
    for (const PackedMatrix<T>* m : {&packed_xgates_[0], &packed_xgates_[1], &packed_xgates_[2], &packed_xgates_[3],
                                     &packed_gates_[0], &packed_gates_[1], &packed_gates_[2], &packed_gates_[3],
                                     &packed_wp_, &packed_wht_, &packed_wpt_, &packed_wxt_})
      n += m->memory_bytes();
    return n + bytes(len_) + params_.memory_bytes();
  }

  void forward(int64_t steps, int64_t batch, const T* x, const T* c0, const T* h0, const int32_t* seq_len,
               T* y, T* c_out, T* h_out, bool training) override {
    validate_forward(cfg_, steps, batch, seq_len);
    const double rows = double(steps) * double(batch);
    check_memory(sizeof(T) * (training ? rows * (I_ + G_ + 3 * H_ + 2 * P_) : double(kChunkElements) + 4 * batch * G_));
    if (training) {
      saved_steps_ = saved_batch_ = 0;  // a failed forward leaves nothing to differentiate
      x_.assign(x, x + steps * batch * I_);
    }
    recur(steps, batch, x, c0, h0, seq_len, y, c_out, h_out, training);
    if (training) saved_x_ = true;  // inference leaves the saved forward alone
  }

  T* input_gates(int64_t steps, int64_t batch, bool training) override {
    validate_forward(cfg_, steps, batch, nullptr);
    const double rows = double(steps) * double(batch);
    check_memory(sizeof(T) * rows * (G_ + (training ? 3 * H_ + 2 * P_ : 0)));
    if (training) saved_steps_ = saved_batch_ = 0;
    Activations& a = training ? saved_ : scratch_;
    a.gates.resize(steps * batch * G_);
    return a.gates.data();
  }

  void project_inputs(int64_t rows, const T* x, T* zx) override {
    refresh_weights();
    const Kernels<T>& kern = kernels<T>();
    const T* wx[4] = {packed_xgates_[0].data(), packed_xgates_[1].data(), packed_xgates_[2].data(),
                      packed_xgates_[3].data()};
    T* zc[4] = {zx, zx + H_, zx + 2 * H_, zx + 3 * H_};
    // Split by units (whole packed panels), as the forward's own input GEMM.
    const int64_t nr = kern.nr, panels = (H_ + nr - 1) / nr;
    const bool small = double(rows) * G_ * I_ < 64.0 * 64 * 64;
    const int tasks = small ? 1 : int(std::min<int64_t>(num_threads(), panels));
    parallel_for(tasks, [&](int task) {
      const int64_t j0 = std::min(H_, panels * task / tasks * nr), j1 = std::min(H_, panels * (task + 1) / tasks * nr);
      kern.gemm_prepacked(false, rows, H_, I_, x, I_, 4, wx, j0, j1 - j0, false, zc, G_);
    });
  }

  void forward_projected(int64_t steps, int64_t batch, const T* c0, const T* h0, const int32_t* seq_len, T* y,
                         T* c_out, T* h_out, bool training) override {
    validate_forward(cfg_, steps, batch, seq_len);
    const Activations& a = training ? saved_ : scratch_;
    if (int64_t(a.gates.size()) != steps * batch * G_)
      throw Error("ERR_WNLSTM_SHAPE", "forward_projected: the input gates were made for other sizes");
    recur(steps, batch, nullptr, c0, h0, seq_len, y, c_out, h_out, training);
    if (training) saved_x_ = false;  // the caller keeps the inputs
  }

 private:
  // The forward over a sequence: with x, each chunk of steps is projected first (inference goes by chunks
  // to bound its memory); without, the gates buffer already holds every step's projection.
  void recur(int64_t steps, int64_t batch, const T* x, const T* c0, const T* h0, const int32_t* seq_len, T* y,
             T* c_out, T* h_out, bool training) {
    const int64_t B = batch, H = H_, P = P_, G = G_;
    const bool proj = cfg_.num_proj > 0;
    refresh_weights();

    // State: training keeps every step (cs[t] is c before step t); inference uses two slots.
    // Inference has its own buffers, so a step() between forward() and backward() changes nothing.
    Activations& a = training ? saved_ : scratch_;
    const int64_t slots = training ? steps + 1 : 2;
    a.cs.resize(slots * B * H);
    a.hs.resize(slots * B * P);
    auto slot = [&](int64_t t) { return training ? t : (t & 1); };
    c0 ? std::copy(c0, c0 + B * H, a.cs.begin()) : std::fill_n(a.cs.begin(), B * H, T(0));
    h0 ? std::copy(h0, h0 + B * P, a.hs.begin()) : std::fill_n(a.hs.begin(), B * P, T(0));

    const int64_t chunk = training || !x ? steps : std::clamp<int64_t>(kChunkElements / (B * G), 1, steps);
    a.gates.resize(chunk * B * G);
    const int64_t kept = training ? steps : 1;  // per-step buffers: all steps, or one reused
    a.c_raw.resize(kept * B * H);
    a.hh.resize(proj ? kept * B * H : 0);
    a.pre.resize(proj ? kept * B * P : 0);
    if (training) len_.assign(seq_len ? seq_len : nullptr, seq_len ? seq_len + B : nullptr);

    const Pointwise<T> pw = pointwise_params();
    const Kernels<T>& kern = kernels<T>();
    const PointwiseForward<T> pointwise = kern.forward[cfg_.use_peepholes][int(cfg_.activation)];
    const T proj_clip = cfg_.has_proj_clip ? T(cfg_.proj_clip) : std::numeric_limits<T>::infinity();
    const T* wx[4] = {packed_xgates_[0].data(), packed_xgates_[1].data(), packed_xgates_[2].data(),
                      packed_xgates_[3].data()};
    const T* wh[4] = {packed_gates_[0].data(), packed_gates_[1].data(), packed_gates_[2].data(),
                      packed_gates_[3].data()};
    const T* wp = packed_wp_.data();
    // One team for the whole sequence. The input GEMM of a chunk of steps is split by units (whole
    // packed panels of nr columns). The recurrence is split by batch rows where it pays (kMinRows): rows
    // are independent sequences, so the members never wait for each other inside the chunk. Otherwise
    // it is split by units: each member owns their columns of all four gates,
    // their c and their h (or a range of the projection's outputs), and waits for the complete h (and hh)
    // of each step.
    const int64_t nr = kern.nr, unit_panels = (H + nr - 1) / nr, out_panels = (P + nr - 1) / nr;
    const bool small = double(B) * G * P < 64.0 * 64 * 64;
    const int members = small ? 1 : int(std::min<int64_t>(num_threads(), unit_panels));
    const bool by_rows = members > 1 && B >= kMinRows * members && double(P) * G * sizeof(T) <= kRowSplitBytes;
    parallel_team(members, [&](Team& team) {
      auto share = [&](int64_t panels, int64_t limit) {
        return std::pair<int64_t, int64_t>{std::min(limit, panels * team.rank / team.size * nr),
                                           std::min(limit, panels * (team.rank + 1) / team.size * nr)};
      };
      const auto [x0, x1] = share(unit_panels, H);  // this member's units in the input GEMM
      const auto [u0, u1] = by_rows ? std::pair<int64_t, int64_t>{0, H} : std::pair{x0, x1};
      const auto [p0, p1] = by_rows || !proj ? std::pair<int64_t, int64_t>{u0, proj ? P : u1} : share(out_panels, P);
      const int64_t r0 = by_rows ? B * team.rank / team.size : 0, r1 = by_rows ? B * (team.rank + 1) / team.size : B;
      for (int64_t t0 = 0; t0 < steps; t0 += chunk) {
        const int64_t n = std::min(chunk, steps - t0);
        if (by_rows && t0 > 0) team.sync();  // every member is done with the last chunk's gates
        // Input part of every step in the chunk, this member's columns (the bias comes in the pointwise).
        if (x) {
          T* zc[4] = {a.gates.data(), a.gates.data() + H, a.gates.data() + 2 * H, a.gates.data() + 3 * H};
          kern.gemm_prepacked(false, n * B, H, I_, x + t0 * B * I_, I_, 4, wx, x0, x1 - x0, false, zc, G);
          if (by_rows) team.sync();  // the chunk's input parts are complete
        }
        for (int64_t t = t0; t < t0 + n; ++t) {
          T* z = a.gates.data() + (t - t0) * B * G;
          const T* c_prev = a.cs.data() + slot(t) * B * H;
          const T* h_prev = a.hs.data() + slot(t) * B * P;
          T* c_next = a.cs.data() + slot(t + 1) * B * H;
          T* h_next = a.hs.data() + slot(t + 1) * B * P;
          const int64_t k = training ? t : 0;
          T* c_raw = a.c_raw.data() + k * B * H;
          T* hh = proj ? a.hh.data() + k * B * H : h_next;
          if (!by_rows) team.sync();  // h_prev is complete
          T* zg[4] = {z + r0 * G, z + r0 * G + H, z + r0 * G + 2 * H, z + r0 * G + 3 * H};
          kern.gemm_prepacked(false, r1 - r0, H, P, h_prev + r0 * P, P, 4, wh, u0, u1 - u0, true, zg, G);
          pointwise(pw, r0, r1, u0, u1, z, c_prev, c_raw, c_next, hh);
          if (proj) {
            if (!by_rows) team.sync();  // hh is complete
            T* pre = a.pre.data() + k * B * P + r0 * P;
            kern.gemm_prepacked(false, r1 - r0, P, H, hh + r0 * H, H, 1, &wp, p0, p1 - p0, false, &pre, P);
            for (int64_t b = r0; b < r1; ++b)
              for (int64_t j = p0; j < p1; ++j)
                h_next[b * P + j] = std::min(std::max(pre[(b - r0) * P + j], -proj_clip), proj_clip);
          }
          T* yt = y + t * B * P;
          for (int64_t b = r0; b < r1; ++b) {
            if (seq_len && t >= seq_len[b]) {  // finished row: zero output, state carried through
              std::copy(c_prev + b * H + u0, c_prev + b * H + u1, c_next + b * H + u0);
              std::copy(h_prev + b * P + p0, h_prev + b * P + p1, h_next + b * P + p0);
              std::fill(yt + b * P + p0, yt + b * P + p1, T(0));
            } else {
              std::copy(h_next + b * P + p0, h_next + b * P + p1, yt + b * P + p0);
            }
          }
        }
      }
    });
    std::copy_n(a.cs.begin() + slot(steps) * B * H, B * H, c_out);
    std::copy_n(a.hs.begin() + slot(steps) * B * P, B * P, h_out);
    if (training) saved_steps_ = steps, saved_batch_ = batch;
  }


 public:
  void backward(const T* dy, const T* dc_in, const T* dh_in, T* grads, T* dx, T* dc0, T* dh0) override {
    if (saved_steps_ > 0 && !saved_x_)
      throw Error("ERR_WNLSTM_NO_FORWARD", "backward needs a training forward() first: the last one was a model's, "
                                           "which keeps its inputs itself");
    backward_projected(dy, dc_in, dh_in, grads, dc0, dh0);
    project_inputs_backward(saved_steps_ * saved_batch_, x_.data(), dz_.data(), grads, dx);
  }

  const T* backward_projected(const T* dy, const T* dc_in, const T* dh_in, T* grads, T* dc0, T* dh0) override {
    if (saved_steps_ == 0)
      throw Error("ERR_WNLSTM_NO_FORWARD",
                  "backward needs a training forward first (and the weights unchanged since)");
    const int64_t steps = saved_steps_, B = saved_batch_, H = H_, P = P_, G = G_, I = I_;
    const bool proj = cfg_.num_proj > 0;
    const int32_t* seq_len = len_.empty() ? nullptr : len_.data();
    const Activations& a = saved_;
    check_memory(sizeof(T) * (double(steps) * B * (G + P) + K_ * G + H * P));

    // With the normalised weights: dh = dz . Wh^T, dhh = dpre . Wp^T. The transposes used every step are
    // packed once per call.
    packed_wht_.pack(true, w_.data() + I * G, G, G, P);
    if (proj) packed_wpt_.pack(true, wp_.data(), P, P, H);

    dz_.resize(steps * B * G);
    dpre_.resize(proj ? steps * B * P : 0);
    // The state gradients of two consecutive steps (in and out, by the parity of the step's index).
    std::vector<T> dcs[2] = {std::vector<T>(B * H), std::vector<T>(B * H)};
    std::vector<T> dhs[2] = {std::vector<T>(B * P), std::vector<T>(B * P)};
    std::vector<T> dtot(B * P), dhh(proj ? B * H : 0);
    if (dc_in) std::copy(dc_in, dc_in + B * H, dcs[0].begin());  // else zeros
    if (dh_in) std::copy(dh_in, dh_in + B * P, dhs[0].begin());
    const T proj_clip = cfg_.has_proj_clip ? T(cfg_.proj_clip) : std::numeric_limits<T>::infinity();
    const Pointwise<T> pw = pointwise_params();
    const Kernels<T>& kern = kernels<T>();
    const PointwiseBackward<T> pointwise = kern.backward[int(cfg_.activation)];
    const T* wht = packed_wht_.data();
    const T* wpt = proj ? packed_wpt_.data() : nullptr;
    auto done = [&](int64_t t, int64_t b) { return seq_len && t >= seq_len[b]; };

    // Batch rows are independent sequences: where it pays (kMinRows), each member of a team runs every
    // step for its own rows, with no waiting between steps; otherwise each step's products and pointwise
    // work are split over the pool (`threaded`).
    auto recurrence = [&](int64_t b0, int64_t b1, bool threaded) {
      const int64_t rows = b1 - b0;
      for (int64_t t = steps - 1; t >= 0; --t) {
        const int in = (steps - 1 - t) & 1, out = in ^ 1;
        const T *dc = dcs[in].data(), *dh = dhs[in].data();
        T *dc_prev = dcs[out].data(), *dh_prev = dhs[out].data();
        const T* dyt = dy + t * B * P;
        for (int64_t b = b0; b < b1; ++b)
          for (int64_t j = 0; j < P; ++j) dtot[b * P + j] = done(t, b) ? T(0) : dh[b * P + j] + dyt[b * P + j];
        const T* d_hh = dtot.data();
        if (proj) {
          const T* pre = a.pre.data() + t * B * P;
          T* dpre = dpre_.data() + t * B * P;
          for (int64_t i = b0 * P; i < b1 * P; ++i)
            dpre[i] = (pre[i] >= -proj_clip && pre[i] <= proj_clip) ? dtot[i] : T(0);
          T* out_rows = dhh.data() + b0 * H;
          if (threaded) gemm<T>(false, B, dpre, P, packed_wpt_, false, dhh.data(), H);
          else kern.gemm_prepacked(false, rows, H, P, dpre + b0 * P, P, 1, &wpt, 0, H, false, &out_rows, H);
          d_hh = dhh.data();
        }
        T* dzt = dz_.data() + t * B * G;
        auto pointwise_rows = [&](int64_t r0, int64_t r1) {
          pointwise(pw, r0, r1, a.gates.data() + t * B * G, a.cs.data() + t * B * H, a.c_raw.data() + t * B * H,
                    a.cs.data() + (t + 1) * B * H, d_hh, dc, dzt, dc_prev);
        };
        if (threaded) parallel_rows(B, pointwise_rows);
        else pointwise_rows(b0, b1);
        T* dh_rows = dh_prev + b0 * P;
        if (threaded) gemm<T>(false, B, dzt, G, packed_wht_, false, dh_prev, P);
        else kern.gemm_prepacked(false, rows, P, G, dzt + b0 * G, G, 1, &wht, 0, P, false, &dh_rows, P);
        for (int64_t b = b0; b < b1; ++b)
          if (done(t, b)) {  // a finished row's step is the identity on the state
            std::fill(dzt + b * G, dzt + (b + 1) * G, T(0));
            std::copy(dc + b * H, dc + (b + 1) * H, dc_prev + b * H);
            std::copy(dh + b * P, dh + (b + 1) * P, dh_prev + b * P);
          }
      }
    };
    const int members = int(std::min<int64_t>(num_threads(), B / kMinRows));
    if (members > 1 && double(P) * G * sizeof(T) <= kRowSplitBytes)
      parallel_team(members, [&](Team& team) {
        recurrence(B * team.rank / team.size, B * (team.rank + 1) / team.size, false);
      });
    else
      recurrence(0, B, true);
    const int last = steps & 1;  // the buffers the first step wrote
    std::copy(dcs[last].begin(), dcs[last].end(), dc0);
    std::copy(dhs[last].begin(), dhs[last].end(), dh0);

    // Everything that sums over steps: large GEMMs over all T*B rows at once.
    const int64_t rows = steps * B;
    const T* dz = dz_.data();
    T* dkernel = grads + off_.kernel;
    gemm<T>(true, false, P, G, rows, a.hs.data(), P, dz, G, false, dkernel + I * G, G);
    column_sums(dz, rows, G, grads + off_.bias);
    if (cfg_.use_peepholes) {
      T *dwi = grads + off_.w_i, *dwf = grads + off_.w_f, *dwo = grads + off_.w_o;
      std::fill_n(dwi, H, T(0)), std::fill_n(dwf, H, T(0)), std::fill_n(dwo, H, T(0));
      for (int64_t r = 0; r < rows; ++r) {
        const T *dzr = dz + r * G, *cp = a.cs.data() + r * H, *cn = a.cs.data() + (r + B) * H;
        for (int64_t u = 0; u < H; ++u) {
          dwi[u] += dzr[u] * cp[u];
          dwf[u] += dzr[2 * H + u] * cp[u];
          dwo[u] += dzr[3 * H + u] * cn[u];
        }
      }
    }
    if (proj) gemm<T>(true, false, H, P, rows, a.hh.data(), H, dpre_.data(), P, false, grads + off_.proj_kernel, P);
    norm_recurrent_.backward(params_.data(), grads);
    norm_projection_.backward(params_.data(), grads);
    return dz_.data();
  }

  void project_inputs_backward(int64_t rows, const T* x, const T* dz, T* grads, T* dx) override {
    if (scales_dirty_) throw Error("ERR_WNLSTM_NO_FORWARD", "the weights changed since the forward");
    const int64_t I = I_, G = G_;
    gemm<T>(true, false, I, G, rows, x, I, dz, G, false, grads + off_.kernel, G);
    if (dx) {  // dx = dz . Wx^T, with Wx^T packed once per change of the weights
      if (packed_wxt_dirty_) packed_wxt_.pack(true, w_.data(), G, G, I), packed_wxt_dirty_ = false;
      gemm<T>(false, rows, dz, G, packed_wxt_, false, dx, I);
    }
    norm_input_.backward(params_.data(), grads);
  }

 private:
  static const CellConfig& checked(const CellConfig& config) {
    validate_config(config);
    return config;
  }

  // Weight-norm scales, the normalised kernels W = V * s and their packed forms, rebuilt when params change.
  void refresh_weights() {
    if (!scales_dirty_) return;
    const T* kernel = params_.data() + off_.kernel;
    const bool proj = cfg_.num_proj > 0;
    for (WeightNorm<T>* w : {&norm_input_, &norm_recurrent_, &norm_projection_}) w->forward(params_.data());
    w_.resize(K_ * G_);
    for (int64_t r = 0; r < K_; ++r) {
      const T* s = r < I_ ? norm_input_.scales() : norm_recurrent_.scales();
      for (int64_t g = 0; g < G_; ++g) w_[r * G_ + g] = kernel[r * G_ + g] * s[g];
    }
    for (int gate = 0; gate < 4; ++gate) {  // one gate's columns: [I, H] or [P, H] inside [., G]
      packed_xgates_[gate].pack(false, w_.data() + gate * H_, G_, I_, H_);
      packed_gates_[gate].pack(false, w_.data() + I_ * G_ + gate * H_, G_, P_, H_);
    }
    wp_.resize(proj ? H_ * P_ : 0);
    for (int64_t r = 0; proj && r < H_; ++r)
      for (int64_t j = 0; j < P_; ++j) wp_[r * P_ + j] = params_[off_.proj_kernel + r * P_ + j] * norm_projection_.scales()[j];
    if (proj) packed_wp_.pack(false, wp_.data(), P_, H_, P_);
    packed_wxt_dirty_ = true;
    scales_dirty_ = false;
  }

  Pointwise<T> pointwise_params() const {
    const bool peep = cfg_.use_peepholes;
    return {H_,
            peep ? params_.data() + off_.w_i : zeros_.data(),
            peep ? params_.data() + off_.w_f : zeros_.data(),
            peep ? params_.data() + off_.w_o : zeros_.data(),
            params_.data() + off_.bias,
            T(cfg_.forget_bias),
            cfg_.has_cell_clip ? T(cfg_.cell_clip) : std::numeric_limits<T>::infinity()};
  }

  // Blocks of 16 columns split over the pool (the last takes the rest); each column still sums its rows in
  // order, so the result does not depend on the number of threads.
  static void column_sums(const T* m, int64_t rows, int64_t cols, T* out) {
    parallel_rows(cols / 16, [&](int64_t c0, int64_t c1) {
      const int64_t j0 = c0 * 16, j1 = c1 * 16 == cols / 16 * 16 ? cols : c1 * 16;
      std::fill(out + j0, out + j1, T(0));
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = j0; j < j1; ++j) out[j] += m[r * cols + j];
    });
  }

  CellConfig cfg_;
  int64_t I_, H_, P_, K_, G_;
  ParamOffsets off_;
  ParamStorage<T> params_;
  std::vector<T> zeros_;  // [H]: the peepholes of a cell without them

  // Weight normalisation of the input, recurrent and projection kernels (scales 1 without norm); the
  // normalised kernels and their packed forms, rebuilt when params change.
  WeightNorm<T> norm_input_, norm_recurrent_, norm_projection_;
  bool scales_dirty_ = true;
  std::vector<T> w_, wp_;  // W = V * s: [K,G] (input rows, then recurrent rows) and projection [H,P]
  PackedMatrix<T> packed_xgates_[4], packed_gates_[4], packed_wp_;  // Wx and Wh by gate (i, j, f, o), Wp
  PackedMatrix<T> packed_wht_, packed_wpt_;  // backward: Wh^T, Wp^T
  PackedMatrix<T> packed_wxt_;               // backward: Wx^T (packed on first use after a change)
  bool packed_wxt_dirty_ = true;

  // What a training forward keeps for backward (shapes for T steps; inference keeps 1 or 2 steps).
  struct Activations {
    std::vector<T> cs;     // [T+1,B,H] c before each step, then the last
    std::vector<T> hs;     // [T+1,B,P] h likewise
    std::vector<T> gates;  // [T,B,G] i, j, f, o activations (first the input part of z)
    std::vector<T> c_raw;  // [T,B,H] c before the cell clip
    std::vector<T> hh;     // [T,B,H] sigma(o) act(c) before the projection (num_proj only)
    std::vector<T> pre;    // [T,B,P] projection output before its clip (num_proj only)
  };
  Activations saved_, scratch_;
  int64_t saved_steps_ = 0, saved_batch_ = 0;
  std::vector<T> x_;          // [T,B,I] inputs of the training forward
  bool saved_x_ = false;      // x_ belongs to the saved forward (not so after forward_projected)
  std::vector<int32_t> len_;  // [B] its sequence lengths, or empty
  // Scratch.
  std::vector<T> dz_, dpre_;
};

}  // namespace
}  // namespace wnlstm::cpu

namespace wnlstm {
template <typename T>
std::unique_ptr<Cell<T>> make_cpu_cell(const CellConfig& config) {
  return std::make_unique<cpu::CpuCell<T>>(config);
}
template std::unique_ptr<Cell<float>> make_cpu_cell<float>(const CellConfig&);
template std::unique_ptr<Cell<double>> make_cpu_cell<double>(const CellConfig&);
}  // namespace wnlstm
