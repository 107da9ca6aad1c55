// The fast CPU kernels for avx2: vectors of 8 floats, GEMM tiles of 6 x 16.
#define EFFNET_ISA avx2
#define EFFNET_ISA_NAME "avx2"
#define EFFNET_VW 8
#define EFFNET_MR 6
#include "cpu_fast/kernels_impl.hpp"

namespace effnet::cpu_fast {
const KernelTable& kernels_avx2() {
    return avx2::table();
}
} // namespace effnet::cpu_fast
