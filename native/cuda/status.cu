// Device detection for the loader's report. Built only when nvcc exists; cudart is linked statically,
// so this needs nothing but the NVIDIA driver at run time.
#include <cuda_runtime_api.h>

#include <string>

#include "wnlstm/cell.h"

namespace wnlstm {

CudaStatus cuda_status() {
  CudaStatus s;
  s.compiled = true;
  int count = 0;
  // Without a driver this is cudaErrorInsufficientDriver rather than NoDevice: any error means no CUDA.
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    s.reason = std::string("no usable CUDA device: cudaGetDeviceCount returned ") + cudaGetErrorName(err) +
               " (" + cudaGetErrorString(err) + ")";
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return s;
  }
  if (count == 0) {
    s.reason = "no CUDA device found";
    return s;
  }
  cudaDriverGetVersion(&s.driver_version);
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) == cudaSuccess)
      s.devices.push_back(std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
                          std::to_string(prop.minor) + ")");
  }
  // Devices answer, but this build has no CUDA kernels yet: the CPU backend serves every cell.
  s.available = false;
  s.reason = "CUDA device found (" + (s.devices.empty() ? std::string("?") : s.devices[0]) +
             ") but the CUDA kernels are not implemented in this version";
  return s;
}

}  // namespace wnlstm
