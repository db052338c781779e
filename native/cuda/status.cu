// Device detection for the loader's report and the backend choice. Built only when nvcc exists; cudart is
// linked statically, so this needs nothing but the NVIDIA driver at run time.
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
  s.available = true;
  s.reason = "CUDA device found: " + (s.devices.empty() ? std::string("?") : s.devices[0]);
  return s;
}

}  // namespace wnlstm
