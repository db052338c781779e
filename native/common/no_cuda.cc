// cuda_status() for builds without nvcc (CMake without CUDA, or node-gyp).
#include "wnlstm/cell.h"

namespace wnlstm {
CudaStatus cuda_status() {
  CudaStatus s;
  s.reason = "this addon was built without CUDA (no nvcc at build time, or WNLSTM_CUDA=OFF)";
  return s;
}
}  // namespace wnlstm
