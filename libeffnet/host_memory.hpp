#pragma once
// How much host memory this process may still allocate, for refusing a run that cannot fit
// with a clear error instead of std::bad_alloc or the OOM killer.
#include <cstdint>
#include <string>

namespace effnet {

// The smaller of the system's MemAvailable and the room left under this process's cgroup (v2)
// memory limit, in bytes; 0 when neither can be read (then nothing is refused).
uint64_t available_host_memory();

// "1.23 GB": bytes for a message.
std::string format_bytes(uint64_t bytes);

} // namespace effnet
