// The generic variant of the CPU kernels (compiled with this ISA's flags; chosen at run time).
#define WNLSTM_ISA generic
#define WNLSTM_VEC_BYTES 16
#define WNLSTM_MR 6
#include "kernels_impl.inc"
