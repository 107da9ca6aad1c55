// The fast CPU kernels for avx512: vectors of 16 floats, GEMM tiles of 12 x 32.
#define EFFNET_ISA avx512
#define EFFNET_ISA_NAME "avx512"
#define EFFNET_VW 16
#define EFFNET_MR 12
#include "cpu_fast/kernels_impl.hpp"

namespace effnet::cpu_fast {
const KernelTable& kernels_avx512() {
    return avx512::table();
}
} // namespace effnet::cpu_fast
