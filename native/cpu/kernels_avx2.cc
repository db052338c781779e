// The avx2 variant of the CPU kernels (compiled with this ISA's flags; chosen at run time).
#define WNLSTM_ISA avx2
#define WNLSTM_VEC_BYTES 32
#define WNLSTM_MR 6
#include "kernels_impl.inc"
