// Which instruction set the fast CPU path runs with: detection and names.
#include "cpu_fast/isa.hpp"

#include "effnet/error.hpp"

namespace effnet {

const char* cpu_isa_name(CpuIsa isa) {
    switch (isa) {
    case CpuIsa::Auto:
        return "auto";
    case CpuIsa::Portable:
        return "portable";
    case CpuIsa::Avx2:
        return "avx2";
    case CpuIsa::Avx512:
        return "avx512";
    }
    return "?";
}

CpuIsa parse_cpu_isa(const std::string& s) {
    for (CpuIsa isa : {CpuIsa::Auto, CpuIsa::Portable, CpuIsa::Avx2, CpuIsa::Avx512})
        if (s == cpu_isa_name(isa)) return isa;
    throw Error("unknown CPU instruction set '" + s + "' (expected auto, portable, avx2 or avx512)");
}

bool cpu_supports(CpuIsa isa) {
    switch (isa) {
    case CpuIsa::Auto:
    case CpuIsa::Portable:
        return true;
#if defined(__x86_64__)
    case CpuIsa::Avx2: // __builtin_cpu_supports also checks that the OS saves the wide registers
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::Avx512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("fma");
#else
    case CpuIsa::Avx2:
    case CpuIsa::Avx512:
        return false;
#endif
    }
    return false;
}

CpuIsa best_cpu_isa() {
    if (cpu_supports(CpuIsa::Avx512)) return CpuIsa::Avx512;
    if (cpu_supports(CpuIsa::Avx2)) return CpuIsa::Avx2;
    return CpuIsa::Portable;
}

namespace cpu_fast {

const KernelTable& kernel_table(CpuIsa isa) {
    if (isa == CpuIsa::Auto) isa = best_cpu_isa();
    EFFNET_CHECK(cpu_supports(isa), std::string("this CPU does not support the '") + cpu_isa_name(isa) +
                                        "' instruction set (it supports up to '" +
                                        cpu_isa_name(best_cpu_isa()) + "')");
    switch (isa) {
#if defined(__x86_64__)
    case CpuIsa::Avx512:
        return kernels_avx512();
    case CpuIsa::Avx2:
        return kernels_avx2();
#endif
    default:
        return kernels_portable();
    }
}

} // namespace cpu_fast
} // namespace effnet
