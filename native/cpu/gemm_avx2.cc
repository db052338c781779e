// The avx2 variant of the packed GEMM (compiled with this ISA's flags; chosen at run time).
#define WNLSTM_ISA avx2
#define WNLSTM_VEC_BYTES 32
#define WNLSTM_MR 6
#include "gemm_kernel.inc"
