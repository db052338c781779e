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

#include "wnlstm/backend.h"
#include "wnlstm/cell.h"
#include "wnlstm/model.h"
#include "wnlstm/ops.h"

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

// The optimizer's settings: { kind: 'sgd' | 'adam' | 'adamw' | 'rmsprop' | 'adagrad', learningRate, beta1,
// beta2, epsilon, weightDecay, momentum, nesterov, step (from 1), gradScale }; absent numbers are 0
// (gradScale 1). beta1 is RMSProp's alpha.
wnlstm::OptimizerStep parse_step(const Napi::Value& v) {
  if (!v.IsObject()) fail("ERR_WNLSTM_TYPE", "the optimizer settings must be an object");
  const Napi::Object o = v.As<Napi::Object>();
  const std::string kind = o.Get("kind").IsString() ? o.Get("kind").As<Napi::String>().Utf8Value() : "";
  const char* kinds[] = {"sgd", "adam", "adamw", "rmsprop", "adagrad"};
  const auto found = std::find(std::begin(kinds), std::end(kinds), kind);
  if (found == std::end(kinds)) fail("ERR_WNLSTM_CONFIG", "unknown optimizer kind '" + kind + "'");
  wnlstm::OptimizerStep s;
  s.kind = wnlstm::OptimizerKind(found - std::begin(kinds));
  auto number = [&](const char* key, double fallback) {
    const double d = number_option(o, key, fallback);
    if (!std::isfinite(d)) fail("ERR_WNLSTM_NOT_FINITE", std::string("optimizer setting ") + key + " is not finite");
    return d;
  };
  s.lr = number("learningRate", 0), s.beta1 = number("beta1", 0), s.beta2 = number("beta2", 0);
  s.eps = number("epsilon", 0), s.weight_decay = number("weightDecay", 0), s.momentum = number("momentum", 0);
  s.grad_scale = number("gradScale", 1);
  s.t = int_arg(o.Get("step"), "step", 1, int64_t(1) << 53);
  s.nesterov = o.Get("nesterov").ToBoolean();
  return s;
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
  const Napi::Value precision = o.Get("precision");
  const std::string prec = precision.IsString() ? precision.As<Napi::String>().Utf8Value() : precision.IsUndefined() ? "fp32" : "";
  if (prec != "fp32" && prec != "tf32") fail("ERR_WNLSTM_CONFIG", "precision must be 'fp32' or 'tf32'");
  c.tf32 = prec == "tf32";
  wnlstm::validate_config(c);
  return c;
}

// What a JS object (a cell, a model) and its async calls in flight share: the native object in one of
// the two precisions, and how many async calls use it.
template <typename Float, typename Double>
struct Held {
  std::shared_ptr<Float> f32;
  std::shared_ptr<Double> f64;
  std::atomic<int> busy{0};  // async calls in flight
  int64_t reported = 0;      // bytes last reported to V8
  bool in_model = false;     // a cell whose parameters a model's arena holds

  bool alive() const { return f32 || f64; }
  void reset(napi_env env) {
    f32.reset();  // an async call in flight keeps its own reference, and reports nothing more
    f64.reset();
    report_memory(env);
  }

  // Tells V8 how much native memory the object holds, so that one dropped without dispose() is
  // collected under memory pressure like any large JS object. Main thread only; while an async call
  // is in flight the object is not read (its buffers may be resizing): the call reports when it ends.
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
using CellState = Held<Cell<float>, Cell<double>>;

// A tensor's data: `length` elements of `dtype` in a backend's memory (device memory on CUDA), freed with
// its last owner (the JS object, or an async call in flight that reads or writes it).
struct TensorData {
  // All tensors' data alive in the process, for tensorMemory().
  static inline std::atomic<int64_t> live_count{0}, live_bytes{0};

  std::shared_ptr<wnlstm::Memory> memory;
  std::string dtype, device;  // "float32" | "float64" (| "int32", for lengths); "cpu" | "cuda:<index>"
  int64_t length = 0;
  void* data = nullptr;
  std::atomic<int> busy{0};  // async calls in flight that use it

  TensorData(std::shared_ptr<wnlstm::Memory> m, std::string dt, int64_t n)
      : memory(std::move(m)), dtype(std::move(dt)), device(memory->device()), length(n) {
    data = memory->allocate(bytes());
    live_count.fetch_add(1), live_bytes.fetch_add(int64_t(bytes()));
  }
  TensorData(const TensorData&) = delete;
  TensorData& operator=(const TensorData&) = delete;
  ~TensorData() {
    memory->release(data);
    live_count.fetch_sub(1), live_bytes.fetch_sub(int64_t(bytes()));
  }
  size_t bytes() const { return size_t(length) * (dtype == "float64" ? 8 : 4); }
  template <typename T>
  T* as() const { return static_cast<T*>(data); }
};

// Per environment (main thread, each worker): the constructors that arguments are checked against, and
// the memory of each device that tensors live in.
struct AddonData {
  Napi::FunctionReference cell_class, tensor_class;
  // Per device: the backends whose memory tensors live in and whose ops run on them.
  struct Device {
    std::shared_ptr<wnlstm::Backend<float>> f32;
    std::shared_ptr<wnlstm::Backend<double>> f64;
  };
  std::vector<Device> devices;

  // "cpu" or "cuda:<index>"; ERR_WNLSTM_BACKEND_UNAVAILABLE or ERR_WNLSTM_CONFIG for a device that cannot be used.
  Device& device(const std::string& name) {
    for (Device& d : devices)
      if (d.f32->device() == name) return d;
    const bool cuda = name.rfind("cuda:", 0) == 0 && name.size() > 5 && name.size() < 10 &&
                      name.find_first_not_of("0123456789", 5) == std::string::npos;
    if (name != "cpu" && !cuda) fail("ERR_WNLSTM_CONFIG", "unknown device '" + name + "' (expected 'cpu' or 'cuda:<index>')");
    devices.push_back({wnlstm::make_backend<float>(name), wnlstm::make_backend<double>(name)});
    return devices.back();
  }
  std::shared_ptr<wnlstm::Memory> memory_for(const std::string& name) { return device(name).f32; }
};

// A tensor (lib/core/tensor.ts keeps its shape): its data stays in the backend until read().
class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeTensor",
                       {InstanceMethod("read", &NativeTensor::Read), InstanceMethod("write", &NativeTensor::Write),
                        InstanceMethod("dispose", &NativeTensor::Dispose)});
  }

  // new NativeTensor(device, dtype, length, values?): values (a typed array of the dtype, all finite) or zeros.
  NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {
    guarded(info.Env(), [&] {
      Napi::Env env = info.Env();
      if (info[0].IsExternal()) {  // a tensor the addon made (the result of a call): taken, not shared
        d_ = std::move(*info[0].As<Napi::External<std::shared_ptr<TensorData>>>().Data());
        if (!info[1].ToBoolean()) return env.Undefined();  // a second handle: the first reports the bytes
      } else {
        if (!info[0].IsString()) fail("ERR_WNLSTM_TYPE", "device must be a string");
        const std::string dtype = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
        if (dtype != "float32" && dtype != "float64") fail("ERR_WNLSTM_CONFIG", "dtype must be 'float32' or 'float64'");
        const int64_t length = int_arg(info[2], "length", 1, wnlstm::kMaxElements);
        const void* values = nullptr;
        if (!info[3].IsUndefined() && !info[3].IsNull())
          values = dtype == "float32" ? static_cast<const void*>(array_arg<float>(info[3], "values", size_t(length), false))
                                      : static_cast<const void*>(array_arg<double>(info[3], "values", size_t(length), false));
        auto memory = env.GetInstanceData<AddonData>()->memory_for(info[0].As<Napi::String>().Utf8Value());
        d_ = std::make_shared<TensorData>(memory, dtype, length);
        if (values) memory->upload(d_->data, values, d_->bytes());
        else memory->zero(d_->data, d_->bytes());
      }
      report(env, int64_t(d_->bytes()));
      return env.Undefined();
    });
  }

  ~NativeTensor() override { release(Env()); }

  // Wraps data the addon made into a new JS NativeTensor (`reported`: whether it tells V8 of the data's bytes).
  static Napi::Value New(Napi::Env env, std::shared_ptr<TensorData> data, bool reported = true) {
    auto external = Napi::External<std::shared_ptr<TensorData>>::New(env, new std::shared_ptr<TensorData>(std::move(data)),
                                                                       [](Napi::Env, std::shared_ptr<TensorData>* p) { delete p; });
    return env.GetInstanceData<AddonData>()->tensor_class.Value().New({external, Napi::Boolean::New(env, reported)});
  }

  // The data of a live tensor argument: ERR_WNLSTM_TYPE when it is not a tensor, ERR_WNLSTM_DISPOSED after
  // dispose(), ERR_WNLSTM_TYPE for another dtype, ERR_WNLSTM_DEVICE for another device, ERR_WNLSTM_SHAPE for
  // another length (dtype nullptr, device "" or length -1: any); nullptr when optional and absent.
  static std::shared_ptr<TensorData> arg(Napi::Env env, const Napi::Value& v, const std::string& name,
                                         const char* dtype, const std::string& device, int64_t length, bool optional) {
    if (optional && (v.IsUndefined() || v.IsNull())) return nullptr;
    AddonData* data = env.GetInstanceData<AddonData>();
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data->tensor_class.Value()))
      fail("ERR_WNLSTM_TYPE", name + " must be a Tensor");
    std::shared_ptr<TensorData> d = Unwrap(v.As<Napi::Object>())->d_;
    if (!d) fail("ERR_WNLSTM_DISPOSED", name + " has been disposed");
    if (dtype && d->dtype != dtype) fail("ERR_WNLSTM_TYPE", name + " is " + d->dtype + ", expected " + dtype);
    if (!device.empty() && d->device != device) fail("ERR_WNLSTM_DEVICE", name + " is on " + d->device + ", expected " + device);
    if (length >= 0 && d->length != length)
      fail("ERR_WNLSTM_SHAPE", name + " must have " + std::to_string(length) + " elements, got " + std::to_string(d->length));
    return d;
  }

 private:
  std::shared_ptr<TensorData> live() const {
    if (!d_) fail("ERR_WNLSTM_DISPOSED", "this tensor has been disposed");
    return d_;
  }

  // read() -> a copy of the data in a typed array of the dtype.
  Napi::Value Read(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      const auto d = live();
      Napi::TypedArray out = d->dtype == "float32" ? Napi::TypedArray(new_array<float>(info.Env(), d->length))
                                                   : Napi::TypedArray(new_array<double>(info.Env(), d->length));
      d->memory->download(static_cast<char*>(out.ArrayBuffer().Data()) + out.ByteOffset(), d->data, d->bytes());
      return out;
    });
  }

  // write(values): all of it, from a typed array of the dtype (checked: length, finite).
  Napi::Value Write(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      const auto d = live();
      if (d->busy.load() > 0) fail("ERR_WNLSTM_BUSY", "an async call that uses this tensor is in flight: await it first");
      const void* values = d->dtype == "float32" ? static_cast<const void*>(array_arg<float>(info[0], "values", size_t(d->length), false))
                                                 : static_cast<const void*>(array_arg<double>(info[0], "values", size_t(d->length), false));
      d->memory->upload(d->data, values, d->bytes());
      return info.Env().Undefined();
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    release(info.Env());
    return info.Env().Undefined();
  }

  // Drops this object's hold on the data (an async call in flight keeps its own) and tells V8.
  void release(napi_env env) {
    d_.reset();
    report(env, 0);
  }
  void report(napi_env env, int64_t now) {
    int64_t total = 0;
    if (now != reported_ && napi_adjust_external_memory(env, now - reported_, &total) == napi_ok) reported_ = now;
  }

  std::shared_ptr<TensorData> d_;
  int64_t reported_ = 0;
};

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
                        InstanceMethod("forwardTensors", &NativeCell::ForwardTensors<false>),
                        InstanceMethod("forwardTensorsAsync", &NativeCell::ForwardTensors<true>),
                        InstanceMethod("backwardTensors", &NativeCell::BackwardTensors<false>),
                        InstanceMethod("backwardTensorsAsync", &NativeCell::BackwardTensors<true>),
                        InstanceMethod("update", &NativeCell::Update),
                        InstanceMethod("dispose", &NativeCell::Dispose)});
  }

  // new NativeCell(config, dtype: 'float32' | 'float64', backend: 'cpu' | 'cuda', device = 0)
  NativeCell(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeCell>(info) {
    guarded(info.Env(), [&] {
      if (!info[0].IsObject()) fail("ERR_WNLSTM_TYPE", "config must be an object");
      CellConfig config = parse_config(info[0].As<Napi::Object>());
      std::string dtype = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "float32";
      if (!info[2].IsUndefined() && !info[2].IsString()) fail("ERR_WNLSTM_TYPE", "backend must be a string");
      std::string backend = info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "cpu";
      if (backend != "cpu" && backend != "cuda") fail("ERR_WNLSTM_CONFIG", "backend must be 'cpu' or 'cuda'");
      const bool cuda = backend == "cuda";
      const int device = info[3].IsUndefined() ? 0 : int(int_arg(info[3], "device", 0, 1023));
      if (dtype == "float32") s_->f32 = cuda ? wnlstm::make_cuda_cell<float>(config, device) : wnlstm::make_cpu_cell<float>(config);
      else if (dtype == "float64") s_->f64 = cuda ? wnlstm::make_cuda_cell<double>(config, device) : wnlstm::make_cpu_cell<double>(config);
      else fail("ERR_WNLSTM_CONFIG", "dtype must be 'float32' or 'float64'");
      s_->report_memory(info.Env());
      return info.Env().Undefined();
    });
  }

  ~NativeCell() override { s_->reset(Env()); }

  // The cell behind a JS value, or nullptr when it is not a NativeCell.
  static std::shared_ptr<CellState> state_of(Napi::Env env, const Napi::Value& v) {
    AddonData* data = env.GetInstanceData<AddonData>();
    if (!v.IsObject() || !data || !v.As<Napi::Object>().InstanceOf(data->cell_class.Value())) return nullptr;
    return Unwrap(v.As<Napi::Object>())->s_;
  }

 private:
  // Calls fn(cell) with the live cell of either precision (a shared_ptr: an async call keeps its cell
  // alive past dispose()). Throws ERR_WNLSTM_DISPOSED after dispose(), ERR_WNLSTM_BUSY while an async
  // call on this cell is in flight.
  template <typename F>
  Napi::Value with_cell(const Napi::CallbackInfo& info, F&& fn) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      if (!s_->f32 && !s_->f64) fail("ERR_WNLSTM_DISPOSED", "this cell has been disposed");
      if (s_->busy.load() > 0) fail("ERR_WNLSTM_BUSY", "an async call on this cell is in flight: await it first");
      struct Report {  // also after a failed call: it may have grown buffers before failing
        CellState* s;
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

  // Marks tensors busy while an async call uses them (a write() meanwhile is refused).
  struct TensorUse {
    std::vector<std::shared_ptr<TensorData>> tensors;
    explicit TensorUse(std::vector<std::shared_ptr<TensorData>> ts) : tensors(std::move(ts)) {
      for (auto& t : tensors)
        if (t) t->busy.fetch_add(1);
    }
    ~TensorUse() {
      for (auto& t : tensors)
        if (t) t->busy.fetch_sub(1);
    }
  };

  // A call on tensors: run() now, or on the pool with the tensors it reads marked busy, settling once the
  // device has finished; then result().
  template <bool Async>
  Napi::Value run_on_tensors(Napi::Env env, std::function<void()> run, std::function<Napi::Value(Napi::Env)> result,
                             std::shared_ptr<wnlstm::Memory> memory, std::vector<std::shared_ptr<TensorData>> reads) {
    if constexpr (!Async) {
      run();
      return result(env);
    } else {
      auto use = std::make_shared<TensorUse>(std::move(reads));
      return run_async(env, [run, memory, use] {
        run();
        memory->synchronize();
      }, result);
    }
  }

  // forwardTensors(x, steps, batch, c0?, h0?, seqLen?, training) -> { y, c, h }: the forward on tensors of
  // the cell's device and dtype (the data never leaves the device); forwardTensorsAsync: a promise of it,
  // settled when the device has finished.
  template <bool Async>
  Napi::Value ForwardTensors(const Napi::CallbackInfo& info) {
    return with_cell(info, [&](auto cell) -> Napi::Value {
      using T = typename std::remove_reference_t<decltype(*cell)>::value_type;
      Napi::Env env = info.Env();
      const CellConfig& c = cell->config();
      const char* dtype = sizeof(T) == 4 ? "float32" : "float64";
      const std::string device = cell->device();
      const int64_t steps = int_arg(info[1], "steps", 1, wnlstm::kMaxElements);
      const int64_t batch = int_arg(info[2], "batchSize", 1, wnlstm::kMaxElements);
      if (double(steps) * double(batch) * double(std::max(c.input_size, 4 * c.num_units)) > double(wnlstm::kMaxElements))
        fail("ERR_WNLSTM_SIZE", "steps x batch x width exceeds " + std::to_string(wnlstm::kMaxElements));
      const int64_t H = c.num_units, P = c.output_size();
      auto x = NativeTensor::arg(env, info[0], "inputs", dtype, device, steps * batch * c.input_size, false);
      auto c0 = NativeTensor::arg(env, info[3], "initialState.c", dtype, device, batch * H, true);
      auto h0 = NativeTensor::arg(env, info[4], "initialState.h", dtype, device, batch * P, true);
      std::shared_ptr<wnlstm::Memory> memory = x->memory;
      std::shared_ptr<TensorData> lens;
      if (!info[5].IsUndefined() && !info[5].IsNull()) {  // checked here, then copied to the device
        if (!info[5].IsTypedArray() || info[5].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
            int64_t(info[5].As<Napi::Int32Array>().ElementLength()) != batch)
          fail("ERR_WNLSTM_SHAPE", "sequenceLength must be an Int32Array of batchSize (" + std::to_string(batch) + ") elements");
        const int32_t* host = info[5].As<Napi::Int32Array>().Data();
        wnlstm::validate_forward(c, steps, batch, host);
        lens = std::make_shared<TensorData>(memory, "int32", batch);
        memory->upload(lens->data, host, size_t(batch) * sizeof(int32_t));
      }
      const bool training = info[6].ToBoolean();
      auto y = std::make_shared<TensorData>(memory, dtype, steps * batch * P);
      auto c_out = std::make_shared<TensorData>(memory, dtype, batch * H);
      auto h_out = std::make_shared<TensorData>(memory, dtype, batch * P);
      auto run = [=] {
        cell->device_forward(steps, batch, x->template as<T>(), c0 ? c0->template as<T>() : nullptr,
                             h0 ? h0->template as<T>() : nullptr, lens ? lens->template as<int32_t>() : nullptr,
                             y->template as<T>(), c_out->template as<T>(), h_out->template as<T>(), training);
      };
      auto result = [=](Napi::Env env) -> Napi::Value {
        Napi::Object out = Napi::Object::New(env);
        out.Set("y", NativeTensor::New(env, y));
        out.Set("c", NativeTensor::New(env, c_out));
        out.Set("h", NativeTensor::New(env, h_out));
        return out;
      };
      return run_on_tensors<Async>(env, run, result, memory, {x, c0, h0});
    });
  }

  // backwardTensors(dy, dc?, dh?) -> { grads (a host array), dx, dc0, dh0 (tensors) }; backwardTensorsAsync:
  // a promise of it.
  template <bool Async>
  Napi::Value BackwardTensors(const Napi::CallbackInfo& info) {
    return with_cell(info, [&](auto cell) -> Napi::Value {
      using T = typename std::remove_reference_t<decltype(*cell)>::value_type;
      Napi::Env env = info.Env();
      const CellConfig& c = cell->config();
      const char* dtype = sizeof(T) == 4 ? "float32" : "float64";
      const std::string device = cell->device();
      const int64_t steps = cell->saved_steps(), batch = cell->saved_batch();
      if (steps == 0)
        fail("ERR_WNLSTM_NO_FORWARD", "backward needs a training forward first (and the weights unchanged since)");
      const int64_t H = c.num_units, P = c.output_size(), n = wnlstm::param_count(c);
      auto dy = NativeTensor::arg(env, info[0], "dOutputs", dtype, device, steps * batch * P, false);
      auto dc = NativeTensor::arg(env, info[1], "dFinalState.c", dtype, device, batch * H, true);
      auto dh = NativeTensor::arg(env, info[2], "dFinalState.h", dtype, device, batch * P, true);
      std::shared_ptr<wnlstm::Memory> memory = dy->memory;
      auto grads = std::make_shared<TensorData>(memory, dtype, n);
      auto dx = std::make_shared<TensorData>(memory, dtype, steps * batch * c.input_size);
      auto dc0 = std::make_shared<TensorData>(memory, dtype, batch * H);
      auto dh0 = std::make_shared<TensorData>(memory, dtype, batch * P);
      auto host_grads = std::make_shared<std::vector<T>>(size_t(n));
      auto run = [=] {
        cell->device_backward(dy->template as<T>(), dc ? dc->template as<T>() : nullptr,
                              dh ? dh->template as<T>() : nullptr, grads->template as<T>(), dx->template as<T>(),
                              dc0->template as<T>(), dh0->template as<T>());
        memory->download(host_grads->data(), grads->data, grads->bytes());  // waits for the device
      };
      auto result = [=](Napi::Env env) -> Napi::Value {
        Napi::Object out = Napi::Object::New(env);
        out.Set("grads", to_js(env, *host_grads));
        out.Set("dx", NativeTensor::New(env, dx));
        out.Set("dc0", NativeTensor::New(env, dc0));
        out.Set("dh0", NativeTensor::New(env, dh0));
        return out;
      };
      return run_on_tensors<Async>(env, run, result, memory, {dy, dc, dh});
    });
  }

  // update(grads, s1?, s2?, hyper): one fused optimizer step on the parameters.
  Napi::Value Update(const Napi::CallbackInfo& info) {
    return with_cell(info, [&](auto cell) -> Napi::Value {
      using T = typename std::remove_reference_t<decltype(*cell)>::value_type;
      const size_t n = size_t(wnlstm::param_count(cell->config()));
      const wnlstm::OptimizerStep step = parse_step(info[3]);
      const T* grads = array_arg<T>(info[0], "grads", n, false);
      T* s1 = state_arg<T>(info[1], "optimizer state 1", n, step.needs_s1());
      T* s2 = state_arg<T>(info[2], "optimizer state 2", n, step.needs_s2());
      cell->apply_update(step, grads, s1, s2);
      return info.Env().Undefined();
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    s_->reset(info.Env());
    return info.Env().Undefined();
  }

  std::shared_ptr<CellState> s_ = std::make_shared<CellState>();
};

using ModelState = Held<wnlstm::SequenceModel<float>, wnlstm::SequenceModel<double>>;

// A sequence model whose weights, gradients and optimizer state live in the backend (model.h). Every call
// works on whole blocks by name; a training step takes a batch and returns the loss and state.
class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeModel",
                       {InstanceMethod("blocks", &NativeModel::Blocks),
                        InstanceMethod("getValues", &NativeModel::GetBuffer<0>),
                        InstanceMethod("getGrad", &NativeModel::GetBuffer<1>),
                        InstanceMethod("setValues", &NativeModel::SetValues),
                        InstanceMethod("zeroGrad", &NativeModel::ZeroGrad),
                        InstanceMethod("gradSumSquares", &NativeModel::GradSumSquares),
                        InstanceMethod("update", &NativeModel::Update),
                        InstanceMethod("getMoments", &NativeModel::GetMoments),
                        InstanceMethod("setMoments", &NativeModel::SetMoments),
                        InstanceMethod("clearMoments", &NativeModel::ClearMoments),
                        InstanceMethod("getRng", &NativeModel::GetRng),
                        InstanceMethod("setRng", &NativeModel::SetRng),
                        InstanceMethod("step", &NativeModel::Step<false>),
                        InstanceMethod("stepAsync", &NativeModel::Step<true>),
                        InstanceMethod("embed", &NativeModel::Embed),
                        InstanceMethod("head", &NativeModel::Head),
                        InstanceMethod("dispose", &NativeModel::Dispose)});
  }

  // new NativeModel({ vocabSize (0: features), inputSize, hiddenSize, layers, outputSize, perStep, loss:
  //                   'crossEntropy' | 'squaredError', dropout, bidirectional,
  //                   embeddingProjection?: 'auto' | 'table' | 'rows' }, dtype,
  //                 cells: NativeCell[] (per layer, per direction),
  //                 rng: { model: [4 words], stack: [4 words] })
  NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {
    guarded(info.Env(), [&] {
      Napi::Env env = info.Env();
      if (!info[0].IsObject()) fail("ERR_WNLSTM_TYPE", "config must be an object");
      const Napi::Object o = info[0].As<Napi::Object>();
      wnlstm::SequenceModelConfig config;
      config.vocab_size = int_arg(o.Get("vocabSize"), "vocabSize", 0, wnlstm::kMaxElements);
      config.input_size = int_arg(o.Get("inputSize"), "inputSize", 1, wnlstm::kMaxUnits);
      config.hidden_size = int_arg(o.Get("hiddenSize"), "hiddenSize", 1, wnlstm::kMaxUnits);
      config.layers = int_arg(o.Get("layers"), "layers", 1, 1024);
      config.output_size = int_arg(o.Get("outputSize"), "outputSize", 1, wnlstm::kMaxElements);
      config.per_step = o.Get("perStep").ToBoolean();
      const Napi::Value loss = o.Get("loss");
      const std::string loss_name = loss.IsString() ? loss.As<Napi::String>().Utf8Value() : "";
      if (loss_name != "crossEntropy" && loss_name != "squaredError")
        fail("ERR_WNLSTM_CONFIG", "loss must be 'crossEntropy' or 'squaredError'");
      config.loss = loss_name == "crossEntropy" ? wnlstm::Loss::CrossEntropy : wnlstm::Loss::SquaredError;
      config.dropout = number_option(o, "dropout", 0);
      config.bidirectional = o.Get("bidirectional").ToBoolean();
      const Napi::Value projection = o.Get("embeddingProjection");
      const std::string projection_name = projection.IsString() ? projection.As<Napi::String>().Utf8Value()
                                          : projection.IsUndefined() ? "auto" : "";
      if (projection_name != "auto" && projection_name != "table" && projection_name != "rows")
        fail("ERR_WNLSTM_CONFIG", "embeddingProjection must be 'auto', 'table' or 'rows'");
      config.embedding_projection = projection_name == "table" ? wnlstm::EmbeddingProjection::Table
                                    : projection_name == "rows" ? wnlstm::EmbeddingProjection::Rows
                                                                : wnlstm::EmbeddingProjection::Auto;
      const std::string dtype = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
      if (dtype != "float32" && dtype != "float64") fail("ERR_WNLSTM_CONFIG", "dtype must be 'float32' or 'float64'");
      if (!info[2].IsArray()) fail("ERR_WNLSTM_TYPE", "cells must be an array of native cells");
      const Napi::Array cells = info[2].As<Napi::Array>();
      std::vector<std::shared_ptr<Cell<float>>> f32;
      std::vector<std::shared_ptr<Cell<double>>> f64;
      for (uint32_t l = 0; l < cells.Length(); ++l) {
        std::shared_ptr<CellState> cell = NativeCell::state_of(env, cells.Get(l));
        if (!cell) fail("ERR_WNLSTM_TYPE", "cells[" + std::to_string(l) + "] is not a native cell");
        if (!cell->alive()) fail("ERR_WNLSTM_DISPOSED", "cells[" + std::to_string(l) + "] has been disposed");
        if (cell->busy.load() > 0) fail("ERR_WNLSTM_BUSY", "cells[" + std::to_string(l) + "] has an async call in flight");
        if (cell->in_model || std::find(cells_.begin(), cells_.end(), cell) != cells_.end())
          fail("ERR_WNLSTM_CONFIG", "cells[" + std::to_string(l) + "] already belongs to a model (a cell serves one layer of one model)");
        if (dtype == "float32" ? !cell->f32 : !cell->f64) fail("ERR_WNLSTM_CONFIG", "the cells must have the model's dtype");
        f32.push_back(cell->f32), f64.push_back(cell->f64);
        cells_.push_back(cell);
      }
      if (dtype == "float32") s_->f32 = std::make_shared<wnlstm::SequenceModel<float>>(config, f32);
      else s_->f64 = std::make_shared<wnlstm::SequenceModel<double>>(config, f64);
      SetRngFrom(info[3]);
      for (const auto& cell : cells_) cell->in_model = true;
      s_->report_memory(env);
      return env.Undefined();
    });
  }

  ~NativeModel() override { s_->reset(Env()); }

 private:
  // Calls fn(model) with the live model of either precision; refuses after dispose() and while an async
  // step is in flight. A call that runs the cells or changes the weights (`Uses::Cells`) also waits for the
  // cells' own async calls (a session's steps); reading the arena does not.
  enum class Uses { Arena, Cells };
  template <typename F>
  Napi::Value with_model(const Napi::CallbackInfo& info, F&& fn, Uses uses = Uses::Arena) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      check_idle(uses);
      struct Report {  // also after a failed call: it may have grown buffers before failing
        NativeModel* self;
        Napi::Env env;
        ~Report() { self->report_memory(env); }
      } report{this, info.Env()};
      if (s_->f32) return fn(s_->f32);
      return fn(s_->f64);
    });
  }

  // Refuses a call after dispose() and while an async step (or, for Uses::Cells, a cell's async call) is in
  // flight. A call whose arguments are JS objects checks again after reading them: a getter may have
  // started an async step meanwhile.
  void check_idle(Uses uses) const {
    if (!s_->alive()) fail("ERR_WNLSTM_DISPOSED", "this model has been disposed");
    if (s_->busy.load() > 0) fail("ERR_WNLSTM_BUSY", "an async step of this model is in flight: await it first");
    for (const auto& cell : cells_)
      if (uses == Uses::Cells && cell->busy.load() > 0)
        fail("ERR_WNLSTM_BUSY", "an async call on one of this model's cells is in flight: await it first");
  }

  void report_memory(Napi::Env env) {
    s_->report_memory(env);
    for (const auto& cell : cells_) cell->report_memory(env);
  }

  Napi::Value Blocks(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      const auto& blocks = model->arena().blocks();
      Napi::Array out = Napi::Array::New(info.Env(), blocks.size());
      for (size_t i = 0; i < blocks.size(); ++i) {
        Napi::Object b = Napi::Object::New(info.Env());
        b.Set("name", blocks[i].name);
        b.Set("offset", double(blocks[i].offset));
        b.Set("size", double(blocks[i].size));
        out.Set(uint32_t(i), b);
      }
      return out;
    });
  }

  static std::string name_arg(const Napi::Value& v) {
    if (!v.IsString()) fail("ERR_WNLSTM_TYPE", "a block name must be a string");
    return v.As<Napi::String>().Utf8Value();
  }

  // getValues(name) / getGrad(name) -> a copy of the block's parameters or gradient.
  template <int Which>
  Napi::Value GetBuffer(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      using T = typename std::decay_t<decltype(*model)>::value_type;
      using Part = typename wnlstm::Arena<T>::Part;
      const auto& b = model->arena().block(name_arg(info[0]));
      auto out = new_array<T>(info.Env(), b.size);
      model->arena().read(Which == 0 ? Part::Params : Part::Grads, b.offset, b.size, out.Data());
      return out;
    });
  }

  // setValues(name, values): all of a block's parameters, checked before anything is written.
  Napi::Value SetValues(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      using T = typename std::decay_t<decltype(*model)>::value_type;
      const auto& b = model->arena().block(name_arg(info[0]));
      const T* values = array_arg<T>(info[1], "values of '" + b.name + "'", size_t(b.size), false);
      model->arena().write(wnlstm::Arena<T>::Part::Params, b.offset, b.size, values);
      model->params_changed();
      return info.Env().Undefined();
    }, Uses::Cells);
  }

  // zeroGrad(name?): one block's gradient, or all of them.
  Napi::Value ZeroGrad(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      using T = typename std::decay_t<decltype(*model)>::value_type;
      auto& a = model->arena();
      if (info[0].IsUndefined()) {
        a.zero(wnlstm::Arena<T>::Part::Grads, 0, a.size());
      } else {
        const auto& b = a.block(name_arg(info[0]));
        a.zero(wnlstm::Arena<T>::Part::Grads, b.offset, b.size);
      }
      return info.Env().Undefined();
    });
  }

  Napi::Value GradSumSquares(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      return Napi::Number::New(info.Env(), model->arena().grad_sum_squares());
    });
  }

  // update(settings): one fused optimizer step over every parameter of the model.
  Napi::Value Update(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      const wnlstm::OptimizerStep step = parse_step(info[0]);
      check_idle(Uses::Cells);
      model->update(step);
      return info.Env().Undefined();
    }, Uses::Cells);
  }

  // getMoments(name) -> [s1 | null, s2 | null]: copies of the optimizer state of a block (null: none yet).
  Napi::Value GetMoments(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      using T = typename std::decay_t<decltype(*model)>::value_type;
      const auto& a = model->arena();
      const auto& b = a.block(name_arg(info[0]));
      Napi::Array out = Napi::Array::New(info.Env(), 2);
      for (uint32_t k = 0; k < 2; ++k) {
        const auto part = k == 0 ? wnlstm::Arena<T>::Part::S1 : wnlstm::Arena<T>::Part::S2;
        if (!a.has(part)) {
          out.Set(k, info.Env().Null());
          continue;
        }
        auto copy = new_array<T>(info.Env(), b.size);
        a.read(part, b.offset, b.size, copy.Data());
        out.Set(k, copy);
      }
      return out;
    });
  }

  // setMoments(name, s1 | null, s2 | null): a block's optimizer state (null: zeros), checked first.
  Napi::Value SetMoments(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      using T = typename std::decay_t<decltype(*model)>::value_type;
      auto& a = model->arena();
      const auto& b = a.block(name_arg(info[0]));
      const T* given[2] = {array_arg<T>(info[1], "optimizer state 1 of '" + b.name + "'", size_t(b.size), true),
                           array_arg<T>(info[2], "optimizer state 2 of '" + b.name + "'", size_t(b.size), true)};
      for (int k = 0; k < 2; ++k) {
        const auto part = k == 0 ? wnlstm::Arena<T>::Part::S1 : wnlstm::Arena<T>::Part::S2;
        if (given[k]) a.write(part, b.offset, b.size, given[k]);
        else a.zero(part, b.offset, b.size);  // absent state is zeros already
      }
      return info.Env().Undefined();
    });
  }

  // clearMoments(): no optimizer state (a new optimizer starts from zeros).
  Napi::Value ClearMoments(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      model->arena().clear_state();
      return info.Env().Undefined();
    });
  }

  Napi::Value GetRng(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      Napi::Object out = Napi::Object::New(info.Env());
      for (auto [key, rng] : {std::pair{"model", &model->model_rng}, std::pair{"stack", &model->stack_rng}}) {
        Napi::Array words = Napi::Array::New(info.Env(), 4);
        const uint32_t w[4] = {rng->a, rng->b, rng->c, rng->d};
        for (uint32_t k = 0; k < 4; ++k) words.Set(k, double(w[k]));
        out.Set(key, words);
      }
      return out;
    });
  }

  Napi::Value SetRng(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto) -> Napi::Value {
      SetRngFrom(info[0]);
      return info.Env().Undefined();
    }, Uses::Cells);
  }

  // { model: [4 words], stack: [4 words] }: each word an integer in [-2^31, 2^32) (taken mod 2^32).
  void SetRngFrom(const Napi::Value& v) {
    if (!v.IsObject()) fail("ERR_WNLSTM_TYPE", "the random state must be { model, stack }");
    wnlstm::Rng rngs[2];
    const char* keys[2] = {"model", "stack"};
    for (int k = 0; k < 2; ++k) {
      const Napi::Value words = v.As<Napi::Object>().Get(keys[k]);
      if (!words.IsArray() || words.As<Napi::Array>().Length() != 4)
        fail("ERR_WNLSTM_TYPE", std::string("the random state's ") + keys[k] + " must be an array of 4 integers");
      uint32_t w[4];
      for (uint32_t i = 0; i < 4; ++i)
        w[i] = uint32_t(int_arg(words.As<Napi::Array>().Get(i), "a random state word", -(int64_t(1) << 31), (int64_t(1) << 32) - 1));
      rngs[k] = {w[0], w[1], w[2], w[3]};
    }
    check_idle(Uses::Cells);  // the words were read through getters
    if (s_->f32) s_->f32->model_rng = rngs[0], s_->f32->stack_rng = rngs[1];
    else s_->f64->model_rng = rngs[0], s_->f64->stack_rng = rngs[1];
  }

  // An Int32Array argument of `length` elements (nullptr when optional and absent).
  static const int32_t* ints_arg(const Napi::Value& v, const std::string& name, int64_t length, bool optional) {
    if (optional && (v.IsUndefined() || v.IsNull())) return nullptr;
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      fail("ERR_WNLSTM_TYPE", name + " must be an Int32Array");
    if (length >= 0 && int64_t(v.As<Napi::Int32Array>().ElementLength()) != length)
      fail("ERR_WNLSTM_SHAPE", name + " must have " + std::to_string(length) + " elements, got " +
                                   std::to_string(v.As<Napi::Int32Array>().ElementLength()));
    return v.As<Napi::Int32Array>().Data();
  }

  // step({ steps, batchSize, ids | features, lengths?, labels? | targets?, states?, outputs? }, train)
  //   -> { loss, states: [{ c, h }], outputs? }
  // Time-major: ids Int32Array [steps * batchSize] or features [steps * batchSize * inputSize]; lengths
  // Int32Array [batchSize]; labels Int32Array or targets (the model's dtype) per head row; states one
  // { c, h } per layer (null: zeros); outputs: true to get the head's outputs [head rows * outputSize].
  // stepAsync: a promise of it, with every input copied at the call.
  template <bool Async>
  Napi::Value Step(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      using T = typename std::decay_t<decltype(*model)>::value_type;
      Napi::Env env = info.Env();
      const wnlstm::SequenceModelConfig& c = model->config();
      if (!info[0].IsObject()) fail("ERR_WNLSTM_TYPE", "the batch must be an object");
      const Napi::Object o = info[0].As<Napi::Object>();
      const int64_t steps = int_arg(o.Get("steps"), "steps", 1, wnlstm::kMaxElements);
      const int64_t batch = int_arg(o.Get("batchSize"), "batchSize", 1, wnlstm::kMaxElements);
      const int64_t n = steps * batch, H = c.hidden_size, L = c.layers * c.directions(), per = batch * H;  // L: states
      const int64_t rows = model->head_rows(steps, batch);
      // The largest buffer of a step (input, gates or head) and the state, before anything is allocated.
      if (double(n) * double(std::max({c.input_size, 4 * H, c.output_size})) > double(wnlstm::kMaxElements) ||
          2.0 * double(L) * double(per) > double(wnlstm::kMaxElements))
        fail("ERR_WNLSTM_SIZE", "steps x batch x width exceeds " + std::to_string(wnlstm::kMaxElements));
      const bool ids = c.vocab_size > 0, ce = c.loss == wnlstm::Loss::CrossEntropy;
      // Everything is read (through getters, which may run JS) and copied before the model is touched.
      struct Job {
        std::vector<int32_t> ids, lengths, labels;
        std::vector<T> features, targets, state_in, state_out, outputs;
        double loss = 0;
      };
      auto job = std::make_shared<Job>();
      auto copy_ints = [&](const char* key, int64_t length, bool optional, std::vector<int32_t>& to) {
        const Napi::Value v = o.Get(key);
        if (const int32_t* a = ints_arg(v, key, length, optional)) to.assign(a, a + length);
      };
      auto copy_floats = [&](const char* key, int64_t length, bool optional, std::vector<T>& to) {
        if (const T* a = array_arg<T>(o.Get(key), key, size_t(length), optional)) to.assign(a, a + length);
      };
      if (ids) copy_ints("ids", n, false, job->ids);
      else copy_floats("features", n * c.input_size, false, job->features);
      copy_ints("lengths", batch, true, job->lengths);
      if (ce) copy_ints("labels", rows, true, job->labels);
      else copy_floats("targets", rows * c.output_size, true, job->targets);
      const Napi::Value states = o.Get("states");
      if (!states.IsUndefined() && !states.IsNull()) {
        if (!states.IsArray() || states.As<Napi::Array>().Length() != uint32_t(L))
          fail("ERR_WNLSTM_TYPE", "states must be an array of " + std::to_string(L) + " { c, h } (one per layer and direction)");
        job->state_in.resize(2 * L * per);
        for (int64_t l = 0; l < L; ++l) {
          const Napi::Value s = states.As<Napi::Array>().Get(uint32_t(l));
          if (!s.IsObject()) fail("ERR_WNLSTM_TYPE", "states[" + std::to_string(l) + "] must be { c, h }");
          for (int k = 0; k < 2; ++k) {
            const std::string name = "states[" + std::to_string(l) + "]." + (k == 0 ? "c" : "h");
            const T* a = array_arg<T>(s.As<Napi::Object>().Get(k == 0 ? "c" : "h"), name, size_t(per), false);
            std::copy(a, a + per, job->state_in.begin() + (2 * l + k) * per);
          }
        }
      }
      const bool want_outputs = o.Get("outputs").ToBoolean();
      const bool train = info[1].ToBoolean();
      check_idle(Uses::Cells);  // a getter may have started an async step
      job->state_out.resize(2 * L * per);
      if (want_outputs) job->outputs.resize(size_t(rows * c.output_size));
      auto result = [job, L, per](Napi::Env env) -> Napi::Value {
        Napi::Object out = Napi::Object::New(env);
        out.Set("loss", job->loss);
        Napi::Array states = Napi::Array::New(env, size_t(L));
        for (int64_t l = 0; l < L; ++l) {
          Napi::Object s = Napi::Object::New(env);
          for (int k = 0; k < 2; ++k) {
            auto a = new_array<T>(env, per);
            std::copy_n(job->state_out.begin() + (2 * l + k) * per, per, a.Data());
            s.Set(k == 0 ? "c" : "h", a);
          }
          states.Set(uint32_t(l), s);
        }
        out.Set("states", states);
        if (!job->outputs.empty()) out.Set("outputs", to_js(env, job->outputs));
        return out;
      };
      auto run = [job, model, steps, batch, train] {
        auto ptr = [](auto& v) { return v.empty() ? nullptr : v.data(); };
        wnlstm::Batch<T> b;
        b.steps = steps, b.batch = batch;
        b.ids = ptr(job->ids), b.features = ptr(job->features), b.lengths = ptr(job->lengths);
        b.labels = ptr(job->labels), b.targets = ptr(job->targets);
        b.state_in = ptr(job->state_in), b.state_out = job->state_out.data(), b.outputs = ptr(job->outputs);
        job->loss = model->step(b, train);
      };
      if constexpr (!Async) {
        run();
        return result(env);
      } else {
        return run_async(env, run, result);
      }
    }, Uses::Cells);
  }

  // embed(ids) -> [ids.length, embeddingSize]: rows of the embedding.
  Napi::Value Embed(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      using T = typename std::decay_t<decltype(*model)>::value_type;
      const int32_t* ids = ints_arg(info[0], "ids", -1, false);
      const int64_t n = int64_t(info[0].As<Napi::Int32Array>().ElementLength());
      if (double(n) * double(model->config().input_size) > double(wnlstm::kMaxElements)) fail("ERR_WNLSTM_SIZE", "too many ids");
      auto out = new_array<T>(info.Env(), n * model->config().input_size);
      model->embed(ids, n, out.Data());
      return out;
    });
  }

  // head(h, rows) -> [rows, outputSize]: the head (logits or values) on h [rows, hiddenSize * directions].
  Napi::Value Head(const Napi::CallbackInfo& info) {
    return with_model(info, [&](auto model) -> Napi::Value {
      using T = typename std::decay_t<decltype(*model)>::value_type;
      const int64_t rows = int_arg(info[1], "rows", 1, wnlstm::kMaxElements);
      const int64_t H = model->config().hidden_size * model->config().directions(), O = model->config().output_size;
      if (double(rows) * double(std::max(H, O)) > double(wnlstm::kMaxElements)) fail("ERR_WNLSTM_SIZE", "too many rows");
      const T* h = array_arg<T>(info[0], "h", size_t(rows * H), false);
      auto out = new_array<T>(info.Env(), rows * O);
      model->head(h, rows, out.Data());
      return out;
    });
  }

  // Runs work on the thread pool with the model and its cells marked busy until the promise settles.
  Napi::Value run_async(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> result) {
    auto mark = [this](int delta) {
      s_->busy.fetch_add(delta);
      for (const auto& cell : cells_) cell->busy.fetch_add(delta);
    };
    mark(1);
    try {
      return Task::Run(env, std::move(work), std::move(result), [s = s_, cells = cells_](Napi::Env env) {
        s->busy.fetch_sub(1);
        for (const auto& cell : cells) cell->busy.fetch_sub(1);
        s->report_memory(env);
        for (const auto& cell : cells) cell->report_memory(env);
      });
    } catch (...) {  // not queued (e.g. the environment is shutting down): nothing is busy
      mark(-1);
      throw;
    }
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    s_->reset(info.Env());
    return info.Env().Undefined();
  }

  std::shared_ptr<ModelState> s_ = std::make_shared<ModelState>();
  std::vector<std::shared_ptr<CellState>> cells_;  // the model's cells, also JS objects of their own
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
    wnlstm::gemm<float>(false, false, M, N, K, A.data(), K, B.data(), N, false, C.data(), N);  // warm-up
    auto start = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < repeats; ++r)
      wnlstm::gemm<float>(false, false, M, N, K, A.data(), K, B.data(), N, false, C.data(), N);
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
      T* s1 = state_arg<T>(info[2], "optimizer state 1", n, step.needs_s1());
      T* s2 = state_arg<T>(info[3], "optimizer state 2", n, step.needs_s2());
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

// An Int32Array of ids, each in [0, rows): its data and length (ERR_WNLSTM_RANGE names the first bad one).
std::pair<const int32_t*, int64_t> checked_ids(const Napi::Value& v, int64_t rows, const char* name) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    fail("ERR_WNLSTM_TYPE", std::string(name) + " must be an Int32Array");
  const auto ids = v.As<Napi::Int32Array>();
  for (size_t i = 0; i < ids.ElementLength(); ++i)
    if (ids[i] < 0 || ids[i] >= rows)
      fail("ERR_WNLSTM_RANGE", "token id " + std::to_string(ids[i]) + " is outside the vocabulary (" + std::to_string(rows) + ")");
  return {ids.Data(), int64_t(ids.ElementLength())};
}

// The rows of a [rows, dim] table argument (a typed array whose length is a positive multiple of dim).
int64_t table_rows(const Napi::Value& table, int64_t dim) {
  const size_t size = table.As<Napi::TypedArray>().ElementLength();
  if (size == 0 || size % size_t(dim) != 0) fail("ERR_WNLSTM_SHAPE", "the table's length is not a positive multiple of dim");
  return int64_t(size) / dim;
}

// squaredError(pred, target, gradScale) -> { sum, grad }: sum of (pred - target)^2 and its gradient
// times gradScale (both arrays of one dtype and length).
Napi::Value SquaredError(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[0], "predictions", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      const size_t n = info[0].As<Napi::TypedArray>().ElementLength();
      if (n == 0) fail("ERR_WNLSTM_SHAPE", "predictions must not be empty");
      const T* pred = array_arg<T>(info[0], "predictions", n, false);
      const T* target = array_arg<T>(info[1], "targets", n, false);
      if (!info[2].IsNumber()) fail("ERR_WNLSTM_TYPE", "gradScale must be a number");
      auto grad = new_array<T>(info.Env(), int64_t(n));
      const double sum = wnlstm::squared_error(pred, target, int64_t(n), info[2].As<Napi::Number>().DoubleValue(), grad.Data());
      Napi::Object out = Napi::Object::New(info.Env());
      out.Set("sum", sum);
      out.Set("grad", grad);
      return out;
    });
  });
}

// The layer ops of ops.h for the JS layers (lib/nn/layers.ts), with their arguments checked.
// embeddingForward(table [V*D], dim, ids) -> out [ids.length * D]
Napi::Value EmbeddingForward(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[0], "table", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      const int64_t D = int_arg(info[1], "dim", 1, wnlstm::kMaxElements);
      const T* table = info[0].As<Napi::TypedArrayOf<T>>().Data();
      const auto [ids, n] = checked_ids(info[2], table_rows(info[0], D), "ids");
      if (double(n) * double(D) > double(wnlstm::kMaxElements)) fail("ERR_WNLSTM_SIZE", "too many ids");
      auto out = new_array<T>(info.Env(), n * D);
      wnlstm::embedding_forward(table, D, ids, n, out.Data());
      return out;
    });
  });
}

// embeddingBackward(dy [ids.length * D], dim, ids, dtable [V*D]): dtable[ids[n]] += dy[n].
Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[3], "dtable", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      const int64_t D = int_arg(info[1], "dim", 1, wnlstm::kMaxElements);
      const auto [ids, n] = checked_ids(info[2], table_rows(info[3], D), "ids");
      const T* dy = array_arg<T>(info[0], "dy", size_t(n * D), false);
      wnlstm::embedding_backward(dy, D, ids, n, info[3].As<Napi::TypedArrayOf<T>>().Data());
      return info.Env().Undefined();
    });
  });
}

// The layers whose weights are JS arrays (Embedding, Dense) on tensors: the weights are host memory, which is
// the CPU backend's own; on a device they are uploaded for the call, and the gradients come back and are added
// into the layer's JS gradient arrays. The activations stay where the tensors are.

// A host array as memory of the device of `backend`: the array itself on the CPU, an uploaded copy elsewhere.
template <typename T>
struct HostOnDevice {
  HostOnDevice(const std::shared_ptr<wnlstm::Backend<T>>& backend, const T* host, int64_t n) : buffer(backend), ptr(host) {
    if (backend->is_host()) return;
    backend->upload(buffer.resize(n), host, size_t(n) * sizeof(T));
    ptr = buffer.data();
  }
  wnlstm::Buffer<T> buffer;
  const T* ptr;
};

// Gradient accumulators for host arrays: the arrays themselves on the CPU; on a device, zeroed device buffers
// whose sums fetch() brings back and add() puts into the arrays (fetch every one before adding any, so that
// a failed copy changes no array).
template <typename T>
struct GradOnDevice {
  GradOnDevice(const std::shared_ptr<wnlstm::Backend<T>>& backend, T* host, int64_t n)
      : backend(backend), buffer(backend), host(host), n(n), ptr(host) {
    if (backend->is_host()) return;
    ptr = buffer.resize(n);
    backend->zero(ptr, size_t(n) * sizeof(T));
  }
  void fetch() {
    if (backend->is_host()) return;
    sums.resize(static_cast<size_t>(n));
    backend->download(sums.data(), ptr, size_t(n) * sizeof(T));
  }
  void add() {
    for (size_t i = 0; i < sums.size(); ++i) host[i] += sums[i];
  }
  std::shared_ptr<wnlstm::Backend<T>> backend;
  wnlstm::Buffer<T> buffer;
  T* host;
  int64_t n;
  T* ptr;
  std::vector<T> sums;
};

// A tensor that an async call in flight may still write is not read.
void require_idle(const std::shared_ptr<TensorData>& t, const std::string& name) {
  if (t->busy.load() > 0) fail("ERR_WNLSTM_BUSY", "an async call that uses " + name + " is in flight: await it first");
}

template <typename T>
std::shared_ptr<wnlstm::Backend<T>> backend_for(Napi::Env env, const std::string& device) {
  AddonData::Device& d = env.GetInstanceData<AddonData>()->device(device);
  if constexpr (sizeof(T) == 4) return d.f32;
  else return d.f64;
}

// A writable typed array of the dtype T and `length` elements (a layer's gradient).
template <typename T>
T* grad_arg(const Napi::Value& v, const std::string& name, size_t length) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kArrayType<T>)
    fail("ERR_WNLSTM_TYPE", name + " must be a " + array_name<T>());
  return state_arg<T>(v, name, length, true);
}

// tensorEmbedding(table [V*D], dim, ids, device) -> a tensor [ids.length * D] on device (the rows gathered on the
// host and uploaded: only the rows used cross the bus).
Napi::Value TensorEmbedding(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[0], "table", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      Napi::Env env = info.Env();
      const int64_t D = int_arg(info[1], "dim", 1, wnlstm::kMaxElements);
      const T* table = info[0].As<Napi::TypedArrayOf<T>>().Data();
      const auto [ids, n] = checked_ids(info[2], table_rows(info[0], D), "ids");
      if (n < 1 || double(n) * double(D) > double(wnlstm::kMaxElements)) fail("ERR_WNLSTM_SIZE", "need 1 to 2^31 / dim ids");
      if (!info[3].IsString()) fail("ERR_WNLSTM_TYPE", "device must be a string");
      auto backend = backend_for<T>(env, info[3].As<Napi::String>().Utf8Value());
      auto out = std::make_shared<TensorData>(backend, sizeof(T) == 4 ? "float32" : "float64", n * D);
      if (backend->is_host()) {
        wnlstm::embedding_forward(table, D, ids, n, out->template as<T>());
      } else {
        std::vector<T> rows(size_t(n * D));
        wnlstm::embedding_forward(table, D, ids, n, rows.data());
        backend->upload(out->data, rows.data(), out->bytes());
      }
      return NativeTensor::New(env, out);
    });
  });
}

// tensorEmbeddingBackward(dy tensor [ids.length * D], dim, ids, dtable [V*D]): dtable[ids[n]] += dy[n] (on the host).
Napi::Value TensorEmbeddingBackward(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[3], "dtable", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      Napi::Env env = info.Env();
      const int64_t D = int_arg(info[1], "dim", 1, wnlstm::kMaxElements);
      const auto [ids, n] = checked_ids(info[2], table_rows(info[3], D), "ids");
      auto dy = NativeTensor::arg(env, info[0], "dy", sizeof(T) == 4 ? "float32" : "float64", "", n * D, false);
      require_idle(dy, "dy");
      T* dtable = info[3].As<Napi::TypedArrayOf<T>>().Data();
      auto backend = backend_for<T>(env, dy->device);
      std::vector<T> host;
      const T* rows = dy->template as<T>();
      if (!backend->is_host()) {
        host.resize(size_t(n * D));
        backend->download(host.data(), dy->data, dy->bytes());
        rows = host.data();
      }
      wnlstm::embedding_backward(rows, D, ids, n, dtable);
      return env.Undefined();
    });
  });
}

// The arguments tensorDense and tensorDenseBackward share: x (a tensor) at 0, the weight at 1, rows, inSize,
// outSize at 3 to 5; the weight on x's device.
template <typename T>
struct DenseCall {
  int64_t N, I, O;
  const char* dtype;
  std::shared_ptr<TensorData> x;
  std::shared_ptr<wnlstm::Backend<T>> backend;
  std::unique_ptr<HostOnDevice<T>> weight;
};
template <typename T>
DenseCall<T> dense_call(Napi::Env env, const Napi::CallbackInfo& info) {
  DenseCall<T> c;
  c.N = int_arg(info[3], "rows", 1, wnlstm::kMaxElements), c.I = int_arg(info[4], "inSize", 1, wnlstm::kMaxElements),
  c.O = int_arg(info[5], "outSize", 1, wnlstm::kMaxElements);
  if (double(c.N) * double(std::max(c.I, c.O)) > double(wnlstm::kMaxElements)) fail("ERR_WNLSTM_SIZE", "rows x width exceeds 2^31");
  c.dtype = sizeof(T) == 4 ? "float32" : "float64";
  c.x = NativeTensor::arg(env, info[0], "x", c.dtype, "", c.N * c.I, false);
  require_idle(c.x, "x");
  const T* W = array_arg<T>(info[1], "weight", size_t(c.I * c.O), false);
  c.backend = backend_for<T>(env, c.x->device);
  c.weight = std::make_unique<HostOnDevice<T>>(c.backend, W, c.I * c.O);
  return c;
}

// tensorDense(x tensor [rows*I], weight [I*O], bias [O], rows, I, O) -> y tensor [rows*O] = x W + b, on x's device.
Napi::Value TensorDense(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[1], "weight", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      const DenseCall<T> c = dense_call<T>(info.Env(), info);
      HostOnDevice<T> bias(c.backend, array_arg<T>(info[2], "bias", size_t(c.O), false), c.O);
      auto y = std::make_shared<TensorData>(c.backend, c.dtype, c.N * c.O);
      c.backend->dense_forward(c.x->template as<T>(), c.weight->ptr, bias.ptr, c.N, c.I, c.O, y->template as<T>());
      return NativeTensor::New(info.Env(), y);
    });
  });
}

// tensorDenseBackward(x, weight, dy tensor [rows*O], rows, I, O, dW [I*O], db [O]) -> dx tensor [rows*I]; dW and db
// (the layer's JS gradients) accumulate.
Napi::Value TensorDenseBackward(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[1], "weight", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      const DenseCall<T> c = dense_call<T>(info.Env(), info);
      auto dy = NativeTensor::arg(info.Env(), info[2], "dy", c.dtype, c.x->device, c.N * c.O, false);
      require_idle(dy, "dy");
      GradOnDevice<T> gw(c.backend, grad_arg<T>(info[6], "dW", size_t(c.I * c.O)), c.I * c.O),
          gb(c.backend, grad_arg<T>(info[7], "db", size_t(c.O)), c.O);
      auto dx = std::make_shared<TensorData>(c.backend, c.dtype, c.N * c.I);
      c.backend->dense_backward(c.x->template as<T>(), c.weight->ptr, dy->template as<T>(), c.N, c.I, c.O, gw.ptr, gb.ptr,
                                dx->template as<T>());
      gw.fetch(), gb.fetch();
      gw.add(), gb.add();
      return NativeTensor::New(info.Env(), dx);
    });
  });
}

// dropout(x, rate, state Uint32Array [4]) -> mask: x *= mask in place; the generator's state moves on.
Napi::Value Dropout(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return with_float_type(info[0], "x", [&](auto zero) -> Napi::Value {
      using T = decltype(zero);
      const size_t n = info[0].As<Napi::TypedArray>().ElementLength();
      T* x = const_cast<T*>(array_arg<T>(info[0], "x", n, false));
      if (!info[1].IsNumber()) fail("ERR_WNLSTM_TYPE", "rate must be a number");
      const double rate = info[1].As<Napi::Number>().DoubleValue();
      if (!(rate >= 0 && rate < 1)) fail("ERR_WNLSTM_RANGE", "rate must be in [0, 1)");
      if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
          info[2].As<Napi::TypedArray>().ElementLength() != 4)
        fail("ERR_WNLSTM_TYPE", "the random state must be a Uint32Array of 4 words");
      uint32_t* words = info[2].As<Napi::Uint32Array>().Data();
      wnlstm::Rng rng{words[0], words[1], words[2], words[3]};
      auto mask = new_array<T>(info.Env(), int64_t(n));
      wnlstm::dropout(x, mask.Data(), int64_t(n), rate, rng);
      words[0] = rng.a, words[1] = rng.b, words[2] = rng.c, words[3] = rng.d;
      return mask;
    });
  });
}

// tensorDropout(x, rate, state) -> mask: inverted dropout of a tensor in place on its device (the mask drawn
// as dropout() draws it); tensorMultiply(x, mask): x *= mask, both tensors of one device and dtype.
Napi::Value TensorDropout(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    auto x = NativeTensor::arg(env, info[0], "x", nullptr, "", -1, false);
    if (!info[1].IsNumber()) fail("ERR_WNLSTM_TYPE", "rate must be a number");
    const double rate = info[1].As<Napi::Number>().DoubleValue();
    if (!(rate >= 0 && rate < 1)) fail("ERR_WNLSTM_RANGE", "rate must be in [0, 1)");
    if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
        info[2].As<Napi::TypedArray>().ElementLength() != 4)
      fail("ERR_WNLSTM_TYPE", "the random state must be a Uint32Array of 4 words");
    if (x->busy.load() > 0) fail("ERR_WNLSTM_BUSY", "an async call that uses x is in flight: await it first");
    uint32_t* words = info[2].As<Napi::Uint32Array>().Data();
    wnlstm::Rng rng{words[0], words[1], words[2], words[3]};
    auto mask = std::make_shared<TensorData>(x->memory, x->dtype, x->length);
    AddonData::Device& d = env.GetInstanceData<AddonData>()->device(x->device);
    if (x->dtype == "float32") d.f32->dropout(x->as<float>(), mask->as<float>(), x->length, rate, rng);
    else d.f64->dropout(x->as<double>(), mask->as<double>(), x->length, rate, rng);
    words[0] = rng.a, words[1] = rng.b, words[2] = rng.c, words[3] = rng.d;
    return NativeTensor::New(env, mask);
  });
}

Napi::Value TensorMultiply(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    auto x = NativeTensor::arg(env, info[0], "x", nullptr, "", -1, false);
    auto mask = NativeTensor::arg(env, info[1], "mask", x->dtype.c_str(), x->device, x->length, false);
    if (x->busy.load() > 0) fail("ERR_WNLSTM_BUSY", "an async call that uses x is in flight: await it first");
    AddonData::Device& d = env.GetInstanceData<AddonData>()->device(x->device);
    if (x->dtype == "float32") d.f32->apply_mask(x->as<float>(), mask->as<float>(), x->length);
    else d.f64->apply_mask(x->as<double>(), mask->as<double>(), x->length);
    return env.Undefined();
  });
}

// tensorShare(x) -> a second handle on x's data (Tensor.reshape): the data lives while either handle does; only
// the first reports its bytes to V8.
Napi::Value TensorShare(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    return NativeTensor::New(info.Env(), NativeTensor::arg(info.Env(), info[0], "x", nullptr, "", -1, false), false);
  });
}

// tensorMemory() -> { tensors, bytes }: the tensor data alive now in this process, on every device (the
// results of calls in flight included).
Napi::Value TensorMemory(const Napi::CallbackInfo& info) {
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("tensors", double(TensorData::live_count.load()));
  out.Set("bytes", double(TensorData::live_bytes.load()));
  return out;
}

// synchronize(device): returns when the work queued on the device ("cpu" or "cuda:<index>") is done.
Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    if (!info[0].IsString()) fail("ERR_WNLSTM_TYPE", "device must be a string");
    info.Env().GetInstanceData<AddonData>()->device(info[0].As<Napi::String>().Utf8Value()).f32->synchronize();
    return info.Env().Undefined();
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
      wnlstm::gemm<T>(ta, tb, M, N, K, A, ta ? M : K, B, tb ? K : N, info[8].ToBoolean(), C, N);
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
  exports.Set("squaredError", Napi::Function::New(env, SquaredError));
  exports.Set("gemm", Napi::Function::New(env, Gemm));
  exports.Set("embeddingForward", Napi::Function::New(env, EmbeddingForward));
  exports.Set("embeddingBackward", Napi::Function::New(env, EmbeddingBackward));
  exports.Set("dropout", Napi::Function::New(env, Dropout));
  exports.Set("tensorDropout", Napi::Function::New(env, TensorDropout));
  exports.Set("tensorEmbedding", Napi::Function::New(env, TensorEmbedding));
  exports.Set("tensorEmbeddingBackward", Napi::Function::New(env, TensorEmbeddingBackward));
  exports.Set("tensorDense", Napi::Function::New(env, TensorDense));
  exports.Set("tensorDenseBackward", Napi::Function::New(env, TensorDenseBackward));
  exports.Set("tensorMultiply", Napi::Function::New(env, TensorMultiply));
  exports.Set("tensorShare", Napi::Function::New(env, TensorShare));
  exports.Set("tensorMemory", Napi::Function::New(env, TensorMemory));
  exports.Set("synchronize", Napi::Function::New(env, Synchronize));
  exports.Set("benchGemm", Napi::Function::New(env, BenchGemm));
  exports.Set("externalMemory", Napi::Function::New(env, ExternalMemory));
  Napi::Function cell_class = NativeCell::Define(env), tensor_class = NativeTensor::Define(env);
  env.SetInstanceData(new AddonData{Napi::Persistent(cell_class), Napi::Persistent(tensor_class), {}});
  exports.Set("NativeCell", cell_class);
  exports.Set("NativeTensor", tensor_class);
  exports.Set("NativeModel", NativeModel::Define(env));
  exports.Set("info", Napi::Function::New(env, Info));
  return exports;
}

}  // namespace

NODE_API_MODULE(wnlstm, Init)
