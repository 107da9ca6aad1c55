// The fast CPU kernels for portable: vectors of 4 floats, GEMM tiles of 4 x 8.
#define EFFNET_ISA portable
#define EFFNET_ISA_NAME "portable"
#define EFFNET_VW 4
#define EFFNET_MR 4
#include "cpu_fast/kernels_impl.hpp"

namespace effnet::cpu_fast {
const KernelTable& kernels_portable() {
    return portable::table();
}
} // namespace effnet::cpu_fast
