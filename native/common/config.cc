// Backend-neutral parts of the contract: config validation and the parameter layout.
#include <algorithm>
#include <cmath>
#include <string>

#include "wnlstm/cell.h"

namespace wnlstm {

void validate_config(const CellConfig& c) {
  auto fail = [](const std::string& msg) { throw Error("ERR_WNLSTM_CONFIG", msg); };
  if (c.num_units < 1 || c.num_units > kMaxUnits)
    fail("numUnits must be an integer in [1, " + std::to_string(kMaxUnits) + "]");
  if (c.input_size < 1 || c.input_size > kMaxUnits)
    fail("inputSize must be an integer in [1, " + std::to_string(kMaxUnits) + "]");
  if (c.num_proj < 0 || c.num_proj > kMaxUnits)
    fail("numProj must be an integer in [1, " + std::to_string(kMaxUnits) + "]");
  if (c.has_cell_clip && !(c.cell_clip > 0 && std::isfinite(c.cell_clip)))
    fail("cellClip must be a positive finite number");
  if (c.has_proj_clip && !(c.proj_clip > 0 && std::isfinite(c.proj_clip)))
    fail("projClip must be a positive finite number");
  if (c.has_proj_clip && c.num_proj == 0) fail("projClip needs numProj");
  if (!std::isfinite(c.forget_bias)) fail("forgetBias must be finite");
  const int64_t K = c.input_size + c.output_size();
  if (K * 4 * c.num_units > kMaxElements || c.num_units * c.output_size() > kMaxElements)
    fail("the kernel would exceed " + std::to_string(kMaxElements) + " elements");
}

std::vector<ParamInfo> param_layout(const CellConfig& c) {
  const int64_t H = c.num_units, P = c.output_size(), K = c.input_size + P, G = 4 * H;
  std::vector<ParamInfo> out;
  int64_t offset = 0;
  auto add = [&](const char* name, int64_t rows, int64_t cols) {
    out.push_back({name, rows, cols, offset});
    offset += rows * cols;
  };
  add("kernel", K, G);
  add("bias", G, 1);
  if (c.norm) {
    add("norm_0", G, 1);
    add("norm_1", G, 1);
  }
  if (c.use_peepholes) {
    add("w_i_diag", H, 1);
    add("w_f_diag", H, 1);
    add("w_o_diag", H, 1);
  }
  if (c.num_proj > 0) {
    add("projection/kernel", H, P);
    if (c.norm) add("projection/norm_0", P, 1);
  }
  return out;
}

int64_t param_count(const CellConfig& c) {
  auto layout = param_layout(c);
  return layout.back().offset + layout.back().size();
}

ParamOffsets param_offsets(const CellConfig& c) {
  ParamOffsets o;
  for (const ParamInfo& p : param_layout(c)) {
    int64_t* slot = p.name == "kernel"              ? &o.kernel
                    : p.name == "bias"              ? &o.bias
                    : p.name == "norm_0"            ? &o.norm_0
                    : p.name == "norm_1"            ? &o.norm_1
                    : p.name == "w_i_diag"          ? &o.w_i
                    : p.name == "w_f_diag"          ? &o.w_f
                    : p.name == "w_o_diag"          ? &o.w_o
                    : p.name == "projection/kernel" ? &o.proj_kernel
                                                    : &o.proj_norm;
    *slot = p.offset;
  }
  return o;
}

NormBlocks norm_blocks(const CellConfig& c) {
  const ParamOffsets o = param_offsets(c);
  const int64_t I = c.input_size, P = c.output_size(), G = 4 * c.num_units;
  return {{o.kernel, I, G, o.norm_0, c.norm},
          {o.kernel + I * G, P, G, o.norm_1, c.norm},
          {o.proj_kernel, c.num_units, P, o.proj_norm, c.norm && c.num_proj > 0}};
}

void validate_forward(const CellConfig& c, int64_t steps, int64_t batch, const int32_t* seq_len) {
  if (steps < 1 || batch < 1) throw Error("ERR_WNLSTM_SHAPE", "steps and batch must be at least 1");
  const int64_t width = std::max({c.input_size, c.output_size(), 4 * c.num_units});
  if (double(steps) * double(batch) * double(width) > double(kMaxElements))
    throw Error("ERR_WNLSTM_SIZE", "steps x batch x width exceeds " + std::to_string(kMaxElements));
  if (seq_len)
    for (int64_t b = 0; b < batch; ++b)
      if (seq_len[b] < 0 || seq_len[b] > steps)
        throw Error("ERR_WNLSTM_RANGE", "sequenceLength values must be in [0, steps]");
}

}  // namespace wnlstm
