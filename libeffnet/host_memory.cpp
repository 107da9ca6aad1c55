#include "host_memory.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace effnet {

namespace {

// The first number on the line of /proc/meminfo that starts with `key`, in bytes (the file
// states kB); 0 when absent.
uint64_t meminfo_bytes(const std::string& key) {
    std::ifstream in("/proc/meminfo");
    std::string line;
    while (std::getline(in, line)) {
        if (line.compare(0, key.size(), key) != 0) continue;
        std::istringstream fields(line.substr(key.size()));
        uint64_t kb = 0;
        fields >> kb;
        return kb * 1024;
    }
    return 0;
}

// One number from a cgroup file; 0 when unreadable or "max".
uint64_t cgroup_value(const char* path) {
    std::ifstream in(path);
    uint64_t v = 0;
    return (in >> v) ? v : 0;
}

} // namespace

uint64_t available_host_memory() {
    uint64_t available = meminfo_bytes("MemAvailable:");
    const uint64_t limit = cgroup_value("/sys/fs/cgroup/memory.max");
    const uint64_t used = cgroup_value("/sys/fs/cgroup/memory.current");
    if (limit > 0) {
        const uint64_t room = limit > used ? limit - used : 0;
        available = available == 0 ? room : std::min(available, room);
    }
    return available;
}

std::string format_bytes(uint64_t bytes) {
    char text[32];
    if (bytes >= (uint64_t(1) << 30))
        std::snprintf(text, sizeof text, "%.2f GB", double(bytes) / double(uint64_t(1) << 30));
    else
        std::snprintf(text, sizeof text, "%.1f MB", double(bytes) / double(1 << 20));
    return text;
}

} // namespace effnet
