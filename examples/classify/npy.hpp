#pragma once
// Writes a float32 array as a NumPy .npy file (format version 1.0), for checking the exact
// network input from Python.
#include <cstdint>
#include <string>
#include <vector>

namespace classify {

// Throws effnet::Error naming the file on I/O failure.
void write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, const float* data);

} // namespace classify
