// Device detection for the loader's report and the backend choice. Built only when nvcc exists; cudart is
// linked statically, so this needs nothing but the NVIDIA driver at run time. The reason tells apart: no
// driver, a driver too old for this build's runtime, no device, and a device this build has no code for.
#include <cuda_runtime_api.h>

#include <sstream>
#include <string>

#include "wnlstm/cell.h"

#ifndef WNLSTM_CUDA_ARCHS
#define WNLSTM_CUDA_ARCHS "90"
#endif

namespace wnlstm {
namespace {

std::string cuda_version(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }

// Whether the build (CMAKE_CUDA_ARCHITECTURES, e.g. "75-real 90-real 90-virtual") has code that runs on
// compute capability cc: machine code of the same major version and at most cc, or PTX of at most cc.
bool has_code_for(int cc) {
  std::istringstream archs(WNLSTM_CUDA_ARCHS);
  for (std::string a; archs >> a;) {
    const int arch = std::stoi(a);
    const bool real = a.find("-virtual") == std::string::npos, ptx = a.find("-real") == std::string::npos;
    if ((real && arch / 10 == cc / 10 && arch <= cc) || (ptx && arch <= cc)) return true;
  }
  return false;
}

}  // namespace

CudaStatus cuda_status() {
  CudaStatus s;
  s.compiled = true;
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&s.driver_version);  // 0 when no driver is installed
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  cudaGetLastError();  // clear the error so later calls start clean
  if (s.driver_version == 0) {
    s.reason = "no NVIDIA driver found (libcuda could not be loaded)";
    return s;
  }
  if (err == cudaErrorInsufficientDriver || s.driver_version < runtime) {
    const int major = runtime / 1000;
    s.reason = "the NVIDIA driver supports CUDA " + cuda_version(s.driver_version) + ", older than this build's runtime (CUDA " +
               cuda_version(runtime) + "): update the driver" + (major == 13 ? " (to 580 or newer)" : major == 12 ? " (to 525 or newer)" : "");
    return s;
  }
  if (err != cudaSuccess || count == 0) {
    s.reason = err != cudaSuccess ? std::string("cudaGetDeviceCount returned ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")"
                                  : "the NVIDIA driver answers but no CUDA device is visible (see CUDA_VISIBLE_DEVICES)";
    return s;
  }
  std::string unsupported;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    const int cc = prop.major * 10 + prop.minor;
    s.devices.push_back(std::string(prop.name) + " (sm_" + std::to_string(cc) + ")");
    if (!has_code_for(cc) && unsupported.empty()) unsupported = s.devices.back();
  }
  if (!unsupported.empty()) {  // every device of a machine is usually the same model
    s.devices.clear();
    s.reason = "this build has no code for " + unsupported + " (it has " + WNLSTM_CUDA_ARCHS +
               "): rebuild with CMAKE_CUDA_ARCHITECTURES including it";
    return s;
  }
  s.available = true;
  s.reason = "CUDA device found: " + (s.devices.empty() ? std::string("?") : s.devices[0]);
  return s;
}

}  // namespace wnlstm
