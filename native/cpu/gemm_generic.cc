// The generic variant of the packed GEMM (compiled with this ISA's flags; chosen at run time).
#define WNLSTM_ISA generic
#define WNLSTM_VEC_BYTES 16
#define WNLSTM_MR 6
#include "gemm_kernel.inc"
