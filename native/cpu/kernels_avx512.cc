// The avx512 variant of the CPU kernels (compiled with this ISA's flags; chosen at run time).
#define WNLSTM_ISA avx512
#define WNLSTM_VEC_BYTES 64
#define WNLSTM_MR 8
#include "kernels_impl.inc"
