// The only file that includes napi.h: it checks every argument (type, length, finiteness), calls the
// backend, and turns any C++ exception into a JS Error with a `code`. Nothing here may crash the process.
#include <napi.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif
#ifndef _WIN32
#include <dlfcn.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "wnlstm/cell.h"
#include "kernels.h"
#include "wnlstm/training.h"

namespace {

using wnlstm::Cell;
using wnlstm::CellConfig;
using wnlstm::Error;

[[noreturn]] void fail(const char* code, const std::string& message) { throw Error(code, message); }

Napi::Error coded_error(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error err = code == "ERR_WNLSTM_TYPE" ? Napi::TypeError::New(env, message)
                    : (code == "ERR_WNLSTM_RANGE" || code == "ERR_WNLSTM_SHAPE") ? Napi::RangeError::New(env, message)
                                                                                 : Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  return err;
}

// Runs body and converts exceptions into coded JS errors.
template <typename F>
Napi::Value guarded(Napi::Env env, F&& body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;  // already a JS exception
  } catch (const Error& e) {
    throw coded_error(env, e.code, e.what());  // node-addon-api rethrows it into JavaScript
  } catch (const std::bad_alloc&) {
    throw coded_error(env, "ERR_WNLSTM_OUT_OF_MEMORY", "out of memory");
  } catch (const std::exception& e) {
    throw coded_error(env, "ERR_WNLSTM_NATIVE", std::string("internal error: ") + e.what());
  }
}

// The async form of a call: work() runs on the libuv thread pool (it must not touch JS values), then
// result(env) on the main thread resolves the promise; an exception rejects it with a coded error.
class Task : public Napi::AsyncWorker {
 public:
  Task(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> result,
       std::function<void(Napi::Env)> done)
      : Napi::AsyncWorker(env, "wnlstm"), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)),
        result_(std::move(result)), done_(std::move(done)) {}

  static Napi::Value Run(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> result,
                         std::function<void(Napi::Env)> done = [](Napi::Env) {}) {
    auto* task = new Task(env, std::move(work), std::move(result), std::move(done));
    Napi::Promise promise = task->deferred_.Promise();
    task->Queue();  // the worker deletes itself after OnOK / OnError
    return promise;
  }

 protected:
  void Execute() override {
    try {
      work_();
    } catch (const Error& e) {
      code_ = e.code, SetError(e.what());
    } catch (const std::bad_alloc&) {
      code_ = "ERR_WNLSTM_OUT_OF_MEMORY", SetError("out of memory");
    } catch (const std::exception& e) {
      code_ = "ERR_WNLSTM_NATIVE", SetError(std::string("internal error: ") + e.what());
    }
  }
  void OnOK() override {
    done_(Env());
    try {
      deferred_.Resolve(result_(Env()));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    done_(Env());
    deferred_.Reject(coded_error(Env(), code_, e.Message()).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<void()> work_;
  std::function<Napi::Value(Napi::Env)> result_;
  std::function<void(Napi::Env)> done_;
  std::string code_ = "ERR_WNLSTM_NATIVE";
};

template <typename T>
Napi::TypedArrayOf<T> to_js(Napi::Env env, const std::vector<T>& v) {
  auto out = Napi::TypedArrayOf<T>::New(env, v.size());
  std::copy(v.begin(), v.end(), out.Data());
  return out;
}

int64_t int_arg(const Napi::Value& v, const char* name, int64_t lo, int64_t hi) {
  if (!v.IsNumber()) fail("ERR_WNLSTM_TYPE", std::string(name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d == std::floor(d)) || d < double(lo) || d > double(hi))
    fail("ERR_WNLSTM_RANGE", std::string(name) + " must be an integer in [" + std::to_string(lo) + ", " +
                                 std::to_string(hi) + "]");
  return int64_t(d);
}

double number_option(const Napi::Object& o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber()) fail("ERR_WNLSTM_TYPE", std::string(key) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

template <typename T> constexpr napi_typedarray_type kArrayType = napi_float32_array;
template <> constexpr napi_typedarray_type kArrayType<double> = napi_float64_array;
template <typename T> const char* array_name() { return sizeof(T) == 4 ? "Float32Array" : "Float64Array"; }

// A typed-array argument of exactly `length` elements, all finite (or nullptr when allowed and absent).
// Index of the first NaN or infinity, or n. Branch-free over blocks (an all-ones exponent marks both),
// which the compiler vectorises: checking a large input then costs little beside the work on it.
template <typename T>
size_t first_non_finite(const T* data, size_t n) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr Bits exponent = sizeof(T) == 4 ? Bits(0x7f800000u) : Bits(0x7ff0000000000000ull);
  constexpr size_t kBlock = 4096;
  for (size_t start = 0; start < n; start += kBlock) {
    const size_t end = std::min(n, start + kBlock);
    Bits bad = 0;
    for (size_t i = start; i < end; ++i) {
      Bits bits;
      std::memcpy(&bits, data + i, sizeof bits);
      bad |= Bits((bits & exponent) == exponent);
    }
    if (bad)
      for (size_t i = start; i < end; ++i)
        if (!std::isfinite(data[i])) return i;
  }
  return n;
}

template <typename T>
const T* array_arg(const Napi::Value& v, const std::string& name, size_t length, bool optional) {
  if (optional && (v.IsUndefined() || v.IsNull())) return nullptr;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kArrayType<T>)
    fail("ERR_WNLSTM_TYPE", name + " must be a " + array_name<T>());
  auto a = v.As<Napi::TypedArrayOf<T>>();
  if (a.ElementLength() != length)
    fail("ERR_WNLSTM_SHAPE", name + " must have " + std::to_string(length) + " elements, got " +
                                 std::to_string(a.ElementLength()));
  const T* data = a.Data();
  const size_t bad = first_non_finite(data, length);
  if (bad < length)
    fail("ERR_WNLSTM_NOT_FINITE", name + "[" + std::to_string(bad) + "] is " + std::to_string(data[bad]));
  return data;
}

template <typename T>
Napi::TypedArrayOf<T> new_array(Napi::Env env, int64_t length) {
  return Napi::TypedArrayOf<T>::New(env, size_t(length));
}

// A mutable typed-array argument of exactly `length` elements (its finiteness is not checked: it is
// state the library itself writes, like an optimizer's moments).
template <typename T>
T* state_arg(const Napi::Value& v, const std::string& name, size_t length, bool needed) {
  if (v.IsUndefined() || v.IsNull()) {
    if (needed) fail("ERR_WNLSTM_TYPE", name + " is needed by this optimizer");
    return nullptr;
  }
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kArrayType<T>)
    fail("ERR_WNLSTM_TYPE", name + " must be a " + array_name<T>());
  auto a = v.As<Napi::TypedArrayOf<T>>();
  if (a.ElementLength() != length)
    fail("ERR_WNLSTM_SHAPE", name + " must have " + std::to_string(length) + " elements");
  return a.Data();
}

// Float64Array [kind, lr, beta1, beta2, eps, weightDecay, momentum, t, nesterov, gradScale].
wnlstm::OptimizerStep parse_step(const Napi::Value& v) {
  const double* h = array_arg<double>(v, "hyper", 10, false);
  wnlstm::OptimizerStep s;
  if (h[0] < 0 || h[0] > 4 || h[0] != std::floor(h[0])) fail("ERR_WNLSTM_RANGE", "unknown optimizer kind");
  s.kind = wnlstm::OptimizerKind(int(h[0]));
  s.lr = h[1], s.beta1 = h[2], s.beta2 = h[3], s.eps = h[4], s.weight_decay = h[5], s.momentum = h[6];
  if (h[7] < 1) fail("ERR_WNLSTM_RANGE", "the step number starts at 1");
  s.t = int64_t(h[7]);
  s.nesterov = h[8] != 0;
  s.grad_scale = h[9];
  return s;
}

// Which optimizer-state buffers a kind uses.
bool needs_s1(const wnlstm::OptimizerStep& s) { return s.kind != wnlstm::OptimizerKind::Sgd || s.momentum != 0; }
bool needs_s2(const wnlstm::OptimizerStep& s) {
  return s.kind == wnlstm::OptimizerKind::Adam || s.kind == wnlstm::OptimizerKind::AdamW ||
         (s.kind == wnlstm::OptimizerKind::RmsProp && s.momentum != 0);
}

// Calls fn(T{}) with T the element type of a Float32Array or Float64Array argument.
template <typename F>
Napi::Value with_float_type(const Napi::Value& v, const char* name, F&& fn) {
  if (v.IsTypedArray()) {
    napi_typedarray_type type = v.As<Napi::TypedArray>().TypedArrayType();
    if (type == napi_float32_array) return fn(float{});
    if (type == napi_float64_array) return fn(double{});
  }
  fail("ERR_WNLSTM_TYPE", std::string(name) + " must be a Float32Array or a Float64Array");
}

CellConfig parse_config(const Napi::Object& o) {
  CellConfig c;
  c.input_size = int_arg(o.Get("inputSize"), "inputSize", 1, wnlstm::kMaxUnits);
  c.num_units = int_arg(o.Get("numUnits"), "numUnits", 1, wnlstm::kMaxUnits);
  Napi::Value proj = o.Get("numProj");
  c.num_proj = proj.IsUndefined() || proj.IsNull() ? 0 : int_arg(proj, "numProj", 1, wnlstm::kMaxUnits);
  c.norm = o.Get("norm").ToBoolean();
  c.use_peepholes = o.Get("usePeepholes").ToBoolean();
  c.cell_clip = number_option(o, "cellClip", NAN);
  c.has_cell_clip = !std::isnan(c.cell_clip) || o.Get("cellClip").IsNumber();
  c.proj_clip = number_option(o, "projClip", NAN);
  c.has_proj_clip = !std::isnan(c.proj_clip) || o.Get("projClip").IsNumber();
  c.forget_bias = number_option(o, "forgetBias", 1.0);
  std::string act = o.Get("activation").IsString() ? o.Get("activation").As<Napi::String>().Utf8Value() : "tanh";
  if (act == "tanh") c.activation = wnlstm::Activation::Tanh;
  else if (act == "sigmoid") c.activation = wnlstm::Activation::Sigmoid;
  else if (act == "relu") c.activation = wnlstm::Activation::Relu;
  else if (act == "softsign") c.activation = wnlstm::Activation::Softsign;
  else if (act == "linear") c.activation = wnlstm::Activation::Linear;
  else fail("ERR_WNLSTM_CONFIG", "unknown activation '" + act + "'");
  wnlstm::validate_config(c);
  return c;
}

class NativeCell : public Napi::ObjectWrap<NativeCell> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeCell",
                       {InstanceMethod("layout", &NativeCell::Layout),
                        InstanceMethod("getParams", &NativeCell::GetParams),
                        InstanceMethod("setParams", &NativeCell::SetParams),
                        InstanceMethod("forward", &NativeCell::Forward<false>),
                        InstanceMethod("backward", &NativeCell::Backward<false>),
                        InstanceMethod("forwardAsync", &NativeCell::Forward<true>),
                        InstanceMethod("backwardAsync", &NativeCell::Backward<true>),
                        InstanceMethod("update", &NativeCell::Update),
                        InstanceMethod("dispose", &NativeCell::Dispose)});
  }

  // new NativeCell(config, dtype: 'float32' | 'float64', backend: 'cpu' | 'cuda')
  NativeCell(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeCell>(info) {
    guarded(info.Env(), [&] {
      if (!info[0].IsObject()) fail("ERR_WNLSTM_TYPE", "config must be an object");
      CellConfig config = parse_config(info[0].As<Napi::Object>());
      std::string dtype = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "float32";
      if (!info[2].IsUndefined() && !info[2].IsString()) fail("ERR_WNLSTM_TYPE", "backend must be a string");
      std::string backend = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "cpu";
      if (backend != "cpu" && backend != "cuda") fail("ERR_WNLSTM_CONFIG", "backend must be 'cpu' or 'cuda'");
      const bool cuda = backend == "cuda";
      if (dtype == "float32") s_->f32 = cuda ? wnlstm::make_cuda_cell<float>(config) : wnlstm::make_cpu_cell<float>(config);
      else if (dtype == "float64") s_->f64 = cuda ? wnlstm::make_cuda_cell<double>(config) : wnlstm::make_cpu_cell<double>(config);
      else fail("ERR_WNLSTM_CONFIG", "dtype must be 'float32' or 'float64'");
      s_->report_memory(info.Env());
      return info.Env().Undefined();
    });
  }

  ~NativeCell() override {
    s_->f32.reset();  // an async call in flight keeps its own reference, and reports nothing more
    s_->f64.reset();
    s_->report_memory(Env());
  }

 private:
  // What this object and its async calls in flight share.
  struct State {
    std::shared_ptr<Cell<float>> f32;
    std::shared_ptr<Cell<double>> f64;
    std::atomic<int> busy{0};  // async calls in flight
    int64_t reported = 0;      // bytes last reported to V8

    // Tells V8 how much native memory the cell holds, so that a cell dropped without dispose() is
    // collected under memory pressure like any large JS object. Main thread only; while an async call
    // is in flight the cell is not read (its buffers may be resizing): the call reports when it ends.
    void report_memory(napi_env env) {
      if (busy.load() > 0) return;
      const int64_t now = f32 ? f32->memory_bytes() : f64 ? f64->memory_bytes() : 0;
      if (now == reported) return;
      const bool freed_much = reported - now >= (int64_t(1) << 20);
      int64_t total = 0;
      if (napi_adjust_external_memory(env, now - reported, &total) == napi_ok) reported = now;
#ifdef __GLIBC__
      // glibc keeps large freed blocks in its heap (its mmap threshold grows with the first free), so a
      // process that drops cells would keep their memory: hand it back to the OS.
      if (freed_much) malloc_trim(0);
#endif
    }
  };

  // Calls fn(cell) with the live cell of either precision (a shared_ptr: an async call keeps its cell
  // alive past dispose()). Throws ERR_WNLSTM_DISPOSED after dispose(), ERR_WNLSTM_BUSY while an async
  // call on this cell is in flight.
  template <typename F>
  Napi::Value with_cell(const Napi::CallbackInfo& info, F&& fn) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      if (!s_->f32 && !s_->f64) fail("ERR_WNLSTM_DISPOSED", "this cell has been disposed");
      if (s_->busy.load() > 0) fail("ERR_WNLSTM_BUSY", "an async call on this cell is in flight: await it first");
      struct Report {  // also after a failed call: it may have grown buffers before failing
        State* s;
        Napi::Env env;
        ~Report() { s->report_memory(env); }
      } report{s_.get(), info.Env()};
      if (s_->f32) return fn(s_->f32);
      return fn(s_->f64);
    });
  }

  // Runs work on the thread pool with this cell marked busy until the promise settles.
  Napi::Value run_async(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> result) {
    s_->busy.fetch_add(1);
    try {
      return Task::Run(env, std::move(work), std::move(result), [s = s_](Napi::Env env) {
        if (s->busy.fetch_sub(1) == 1) s->report_memory(env);
      });
    } catch (...) {  // not queued (e.g. the environment is shutting down): the cell is not busy
      s_->busy.fetch_sub(1);
      throw;
    }
  }

  Napi::Value Layout(const Napi::CallbackInfo& info) {
    return with_cell(info, [&](auto cell) -> Napi::Value {
      Napi::Env env = info.Env();
      auto layout = wnlstm::param_layout(cell->config());
      Napi::Array out = Napi::Array::New(env, layout.size());
      for (size_t i = 0; i < layout.size(); ++i) {
        Napi::Object p = Napi::Object::New(env);
        p.Set("name", layout[i].name);
        p.Set("rows", double(layout[i].rows));
        p.Set("cols", double(layout[i].cols));
        p.Set("offset", double(layout[i].offset));
        out.Set(uint32_t(i), p);
      }
      return out;
    });
  }

  Napi::Value GetParams(const Napi::CallbackInfo& info) {
    return with_cell(info, [&](auto cell) -> Napi::Value {
      using T = typename std::remove_reference_t<decltype(*cell)>::value_type;
      auto out = new_array<T>(info.Env(), wnlstm::param_count(cell->config()));
      cell->get_params(out.Data());
      return out;
    });
  }

  // setParams(values, offset): writes values at [offset, offset + values.length) of the flat buffer.
  Napi::Value SetParams(const Napi::CallbackInfo& info) {
    return with_cell(info, [&](auto cell) -> Napi::Value {
      using T = typename std::remove_reference_t<decltype(*cell)>::value_type;
      const int64_t total = wnlstm::param_count(cell->config());
      const int64_t offset = int_arg(info[1], "offset", 0, total);
      if (!info[0].IsTypedArray()) fail("ERR_WNLSTM_TYPE", std::string("values must be a ") + array_name<T>());
      const size_t n = info[0].As<Napi::TypedArray>().ElementLength();
      if (int64_t(n) > total - offset) fail("ERR_WNLSTM_SHAPE", "values run past the end of the parameters");
      const T* values = array_arg<T>(info[0], "values", n, false);
      cell->set_params(values, offset, int64_t(n));
      return info.Env().Undefined();
    });
  }

  // forward(x, steps, batch, c0?, h0?, seqLen?, training) -> { y, c, h }; forwardAsync: a promise of it.
  // The sync form works in place on the JS arrays; the async one copies the inputs first.
  template <bool Async>
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return with_cell(info, [&](auto cell) -> Napi::Value {
      using T = typename std::remove_reference_t<decltype(*cell)>::value_type;
      Napi::Env env = info.Env();
      const CellConfig& c = cell->config();
      const int64_t steps = int_arg(info[1], "steps", 1, wnlstm::kMaxElements);
      const int64_t batch = int_arg(info[2], "batchSize", 1, wnlstm::kMaxElements);
      if (double(steps) * double(batch) * double(std::max(c.input_size, 4 * c.num_units)) > double(wnlstm::kMaxElements))
        fail("ERR_WNLSTM_SIZE", "steps x batch x width exceeds " + std::to_string(wnlstm::kMaxElements));
      const int64_t H = c.num_units, P = c.output_size();
      const T* x = array_arg<T>(info[0], "inputs", size_t(steps * batch * c.input_size), false);
      const T* c0 = array_arg<T>(info[3], "initialState.c", size_t(batch * H), true);
      const T* h0 = array_arg<T>(info[4], "initialState.h", size_t(batch * P), true);
      const int32_t* seq_len = nullptr;
      if (!info[5].IsUndefined() && !info[5].IsNull()) {
        if (!info[5].IsTypedArray() || info[5].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
          fail("ERR_WNLSTM_TYPE", "sequenceLength must be an Int32Array");
        auto lens = info[5].As<Napi::Int32Array>();
        if (int64_t(lens.ElementLength()) != batch)
          fail("ERR_WNLSTM_SHAPE", "sequenceLength must have batchSize (" + std::to_string(batch) + ") elements");
        seq_len = lens.Data();
      }
      const bool training = info[6].ToBoolean();
      auto pack = [](Napi::Env env, Napi::Value y, Napi::Value c, Napi::Value h) {
        Napi::Object out = Napi::Object::New(env);
        out.Set("y", y);
        out.Set("c", c);
        out.Set("h", h);
        return out;
      };
      if constexpr (!Async) {
        auto y = new_array<T>(env, steps * batch * P);
        auto c_out = new_array<T>(env, batch * H);
        auto h_out = new_array<T>(env, batch * P);
        cell->forward(steps, batch, x, c0, h0, seq_len, y.Data(), c_out.Data(), h_out.Data(), training);
        return pack(env, y, c_out, h_out);
      } else {
        struct Job {
          std::vector<T> x, c0, h0, y, c, h;
          std::vector<int32_t> len;
        };
        auto job = std::make_shared<Job>();
        job->x.assign(x, x + steps * batch * c.input_size);
        if (c0) job->c0.assign(c0, c0 + batch * H);
        if (h0) job->h0.assign(h0, h0 + batch * P);
        if (seq_len) job->len.assign(seq_len, seq_len + batch);
        return run_async(env, [=] {
          job->y.resize(steps * batch * P), job->c.resize(batch * H), job->h.resize(batch * P);
          cell->forward(steps, batch, job->x.data(), job->c0.empty() ? nullptr : job->c0.data(),
                        job->h0.empty() ? nullptr : job->h0.data(), job->len.empty() ? nullptr : job->len.data(),
                        job->y.data(), job->c.data(), job->h.data(), training);
        }, [=](Napi::Env env) -> Napi::Value { return pack(env, to_js(env, job->y), to_js(env, job->c), to_js(env, job->h)); });
      }
    });
  }

  // backward(dy, dc?, dh?) -> { grads, dx, dc0, dh0 }; backwardAsync: a promise of it.
  template <bool Async>
  Napi::Value Backward(const Napi::CallbackInfo& info) {
    return with_cell(info, [&](auto cell) -> Napi::Value {
      using T = typename std::remove_reference_t<decltype(*cell)>::value_type;
      Napi::Env env = info.Env();
      const CellConfig& c = cell->config();
      const int64_t steps = cell->saved_steps(), batch = cell->saved_batch();
      if (steps == 0)
        fail("ERR_WNLSTM_NO_FORWARD", "backward needs a training forward first (and the weights unchanged since)");
      const int64_t H = c.num_units, P = c.output_size(), n = wnlstm::param_count(c);
      const T* dy = array_arg<T>(info[0], "dOutputs", size_t(steps * batch * P), false);
      const T* dc = array_arg<T>(info[1], "dFinalState.c", size_t(batch * H), true);
      const T* dh = array_arg<T>(info[2], "dFinalState.h", size_t(batch * P), true);
      auto pack = [](Napi::Env env, Napi::Value grads, Napi::Value dx, Napi::Value dc0, Napi::Value dh0) {
        Napi::Object out = Napi::Object::New(env);
        out.Set("grads", grads);
        out.Set("dx", dx);
        out.Set("dc0", dc0);
        out.Set("dh0", dh0);
        return out;
      };
      if constexpr (!Async) {
        auto grads = new_array<T>(env, n);
        auto dx = new_array<T>(env, steps * batch * c.input_size);
        auto dc0 = new_array<T>(env, batch * H);
        auto dh0 = new_array<T>(env, batch * P);
        cell->backward(dy, dc, dh, grads.Data(), dx.Data(), dc0.Data(), dh0.Data());
        return pack(env, grads, dx, dc0, dh0);
      } else {
        struct Job {
          std::vector<T> dy, dc, dh, grads, dx, dc0, dh0;
        };
        auto job = std::make_shared<Job>();
        job->dy.assign(dy, dy + steps * batch * P);
        if (dc) job->dc.assign(dc, dc + batch * H);
        if (dh) job->dh.assign(dh, dh + batch * P);
        const int64_t I = c.input_size;
        return run_async(env, [=] {
          job->grads.resize(n), job->dx.resize(steps * batch * I), job->dc0.resize(batch * H), job->dh0.resize(batch * P);
          cell->backward(job->dy.data(), job->dc.empty() ? nullptr : job->dc.data(),
                         job->dh.empty() ? nullptr : job->dh.data(), job->grads.data(), job->dx.data(), job->dc0.data(),
                         job->dh0.data());
        }, [=](Napi::Env env) -> Napi::Value {
          return pack(env, to_js(env, job->grads), to_js(env, job->dx), to_js(env, job->dc0), to_js(env, job->dh0));
        });
      }
    });
  }

  // update(grads, s1?, s2?, hyper): one fused optimizer step on the parameters.
  Napi::Value Update(const Napi::CallbackInfo& info) {
    return with_cell(info, [&](auto cell) -> Napi::Value {
      using T = typename std::remove_reference_t<decltype(*cell)>::value_type;
      const size_t n = size_t(wnlstm::param_count(cell->config()));
      const wnlstm::OptimizerStep step = parse_step(info[3]);
      const T* grads = array_arg<T>(info[0], "grads", n, false);
      T* s1 = state_arg<T>(info[1], "optimizer state 1", n, needs_s1(step));
      T* s2 = state_arg<T>(info[2], "optimizer state 2", n, needs_s2(step));
      cell->apply_update(step, grads, s1, s2);
      return info.Env().Undefined();
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    s_->f32.reset();
    s_->f64.reset();
    s_->report_memory(info.Env());
    return info.Env().Undefined();
  }

  std::shared_ptr<State> s_ = std::make_shared<State>();
};

Napi::Value Info(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    wnlstm::CudaStatus cuda = wnlstm::cuda_status();
    Napi::Object out = Napi::Object::New(env);
    Napi::Object cpu = Napi::Object::New(env);
    cpu.Set("isa", wnlstm::cpu_isa());
    cpu.Set("threads", wnlstm::cpu_threads());
    Napi::Object gpu = Napi::Object::New(env);
    gpu.Set("compiled", cuda.compiled);
    gpu.Set("available", cuda.available);
    gpu.Set("reason", cuda.reason);
    gpu.Set("driverVersion", cuda.driver_version);
    Napi::Array devices = Napi::Array::New(env, cuda.devices.size());
    for (size_t i = 0; i < cuda.devices.size(); ++i) devices.Set(uint32_t(i), cuda.devices[i]);
    gpu.Set("devices", devices);
    out.Set("cpu", cpu);
    out.Set("cuda", gpu);
    return out;
  });
}

// externalMemory() -> the bytes of external memory V8 counts (ours included), for the tests.
Napi::Value ExternalMemory(const Napi::CallbackInfo& info) {
  int64_t total = 0;
  napi_adjust_external_memory(info.Env(), 0, &total);
  return Napi::Number::New(info.Env(), double(total));
}

// benchGemm(M, N, K, repeats) -> seconds per product, for bench/: times the CPU GEMM alone on the
// shapes the cell uses (C[M,N] = A[M,K] B[K,N], float32, all threads).
Napi::Value BenchGemm(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const int64_t M = int_arg(info[0], "M", 1, 1 << 16), N = int_arg(info[1], "N", 1, 1 << 16),
                  K = int_arg(info[2], "K", 1, 1 << 16), repeats = int_arg(info[3], "repeats", 1, 1 << 20);
    if (double(M) * N + double(M) * K + double(K) * N > double(1 << 28)) fail("ERR_WNLSTM_SIZE", "matrices too large");
    std::vector<float> A(M * K), B(K * N), C(M * N);
    for (size_t i = 0; i < A.size(); ++i) A[i] = float(i % 7) * 0.1f - 0.3f;
    for (size_t i = 0; i < B.size(); ++i) B[i] = float(i % 5) * 0.1f - 0.2f;
    wnlstm::cpu::gemm<float>(false, false, M, N, K, A.data(), K, B.data(), N, false, C.data(), N);  // warm-up
    auto start = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < repeats; ++r)
      wnlstm::cpu::gemm<float>(false, false, M, N, K, A.data(), K, B.data(), N, false, C.data(), N);
    std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    return Napi::Number::New(info.Env(), elapsed.count() / double(repeats));
  });
}

// optimizerUpdate(params, grads, s1?, s2?, hyper): the same fused step on a JS-owned buffer.
Napi::Value OptimizerUpdate(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[0], "params", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      const size_t n = info[0].As<Napi::TypedArray>().ElementLength();
      const wnlstm::OptimizerStep step = parse_step(info[4]);
      T* params = info[0].As<Napi::TypedArrayOf<T>>().Data();
      const T* grads = array_arg<T>(info[1], "grads", n, false);
      T* s1 = state_arg<T>(info[2], "optimizer state 1", n, needs_s1(step));
      T* s2 = state_arg<T>(info[3], "optimizer state 2", n, needs_s2(step));
      wnlstm::optimizer_update(step, params, grads, s1, s2, int64_t(n));
      return info.Env().Undefined();
    });
  });
}

// sumSquares(array) -> number
Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[0], "array", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      auto a = info[0].As<Napi::TypedArrayOf<T>>();
      return Napi::Number::New(info.Env(), wnlstm::sum_squares(a.Data(), int64_t(a.ElementLength())));
    });
  });
}

// softmaxCrossEntropy(logits [N,V], targets Int32Array [N], V, gradScale) -> summed loss; logits become
// the gradient.
Napi::Value SoftmaxCrossEntropy(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[0], "logits", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
        fail("ERR_WNLSTM_TYPE", "targets must be an Int32Array");
      auto targets = info[1].As<Napi::Int32Array>();
      const int64_t N = int64_t(targets.ElementLength());
      const int64_t V = int_arg(info[2], "vocabulary size", 1, wnlstm::kMaxElements);
      if (double(N) * double(V) > double(wnlstm::kMaxElements)) fail("ERR_WNLSTM_SIZE", "logits too large");
      T* logits = const_cast<T*>(array_arg<T>(info[0], "logits", size_t(N * V), false));
      for (int64_t r = 0; r < N; ++r)
        if (targets[r] < -1 || targets[r] >= V)
          fail("ERR_WNLSTM_RANGE", "target " + std::to_string(targets[r]) + " is outside the vocabulary");
      if (!info[3].IsNumber()) fail("ERR_WNLSTM_TYPE", "gradScale must be a number");
      return Napi::Number::New(info.Env(), wnlstm::softmax_cross_entropy(logits, targets.Data(), N, V,
                                                                          info[3].As<Napi::Number>().DoubleValue()));
    });
  });
}

// gemm(transA, transB, M, N, K, A, B, C, accumulate): C[M,N] (+)= op(A) op(B), row-major.
Napi::Value Gemm(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[5], "A", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      const bool ta = info[0].ToBoolean(), tb = info[1].ToBoolean();
      const int64_t M = int_arg(info[2], "M", 1, wnlstm::kMaxElements), N = int_arg(info[3], "N", 1, wnlstm::kMaxElements),
                    K = int_arg(info[4], "K", 1, wnlstm::kMaxElements);
      if (double(M) * K > double(wnlstm::kMaxElements) || double(K) * N > double(wnlstm::kMaxElements) ||
          double(M) * N > double(wnlstm::kMaxElements))
        fail("ERR_WNLSTM_SIZE", "matrices too large");
      const T* A = array_arg<T>(info[5], "A", size_t(M * K), false);
      const T* B = array_arg<T>(info[6], "B", size_t(K * N), false);
      T* C = state_arg<T>(info[7], "C", size_t(M * N), true);
      wnlstm::cpu::gemm<T>(ta, tb, M, N, K, A, ta ? M : K, B, tb ? K : N, info[8].ToBoolean(), C, N);
      return info.Env().Undefined();
    });
  });
}

// The CPU thread pool's threads live as long as the process. When the last worker thread that loaded
// the addon exits, Node unloads it, and those threads would run unmapped code: a second reference with
// RTLD_NODELETE keeps the addon mapped until the process ends.
void pin_in_memory() {
#ifndef _WIN32
  Dl_info self;
  if (dladdr(reinterpret_cast<void*>(&pin_in_memory), &self) && self.dli_fname)
    dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  pin_in_memory();
  exports.Set("optimizerUpdate", Napi::Function::New(env, OptimizerUpdate));
  exports.Set("sumSquares", Napi::Function::New(env, SumSquares));
  exports.Set("softmaxCrossEntropy", Napi::Function::New(env, SoftmaxCrossEntropy));
  exports.Set("gemm", Napi::Function::New(env, Gemm));
  exports.Set("benchGemm", Napi::Function::New(env, BenchGemm));
  exports.Set("externalMemory", Napi::Function::New(env, ExternalMemory));
  exports.Set("NativeCell", NativeCell::Define(env));
  exports.Set("info", Napi::Function::New(env, Info));
  return exports;
}

}  // namespace

NODE_API_MODULE(wnlstm, Init)
