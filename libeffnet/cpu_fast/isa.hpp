#pragma once
// The kernel table of an instruction set (effnet/cpu_session.hpp names them).
#include "cpu_fast/kernels.hpp"
#include "effnet/cpu_session.hpp"

namespace effnet::cpu_fast {

// Auto: the widest the CPU supports. Throws effnet::Error when the CPU lacks `isa`.
const KernelTable& kernel_table(CpuIsa isa);

} // namespace effnet::cpu_fast
