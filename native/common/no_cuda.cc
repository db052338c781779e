// cuda_status(), make_cuda_cell() and make_cuda_backend() for builds without nvcc (CMake without CUDA, or node-gyp).
#include "wnlstm/backend.h"
#include "wnlstm/cell.h"

namespace wnlstm {
CudaStatus cuda_status() {
  CudaStatus s;
  s.reason = "this addon was built without CUDA (no nvcc at build time, or WNLSTM_CUDA=OFF)";
  return s;
}

template <typename T>
std::unique_ptr<Cell<T>> make_cuda_cell(const CellConfig&, int) {
  throw Error("ERR_WNLSTM_BACKEND_UNAVAILABLE", "backend 'cuda' is not available: " + cuda_status().reason);
}
template std::unique_ptr<Cell<float>> make_cuda_cell<float>(const CellConfig&, int);
template std::unique_ptr<Cell<double>> make_cuda_cell<double>(const CellConfig&, int);

template <typename T>
std::shared_ptr<Backend<T>> make_cuda_backend(int) {
  throw Error("ERR_WNLSTM_BACKEND_UNAVAILABLE", "backend 'cuda' is not available: " + cuda_status().reason);
}
template std::shared_ptr<Backend<float>> make_cuda_backend<float>(int);
template std::shared_ptr<Backend<double>> make_cuda_backend<double>(int);
}  // namespace wnlstm
