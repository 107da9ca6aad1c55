#pragma once
// Small helpers shared by the CPU reference ops (shape checks, the parallel-loop threshold).
// Private to libeffnet/cpu.
#include <cstdint>
#include <string>

#include "effnet/error.hpp"
#include "effnet/tensor.hpp"

namespace effnet::cpu::detail {

// Below this many elements a memory-bound loop runs on one thread: a parallel region and its
// barrier cost more than a second core saves (much more on a loaded machine).
constexpr int64_t kParallelMinWork = 1 << 16;

inline void check_rank(const char* op, const char* name, const Tensor& t, int rank) {
    EFFNET_CHECK(t.rank() == rank, std::string(op) + ": " + name + " must have rank " + std::to_string(rank) +
                                       ", got shape " + shape_str(t.shape));
    EFFNET_CHECK(int64_t(t.data.size()) == shape_numel(t.shape),
                 std::string(op) + ": " + name + " holds " + std::to_string(t.data.size()) +
                     " values for shape " + shape_str(t.shape));
}

inline void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected) {
    EFFNET_CHECK(t.shape == expected, std::string(op) + ": " + name + " has shape " + shape_str(t.shape) +
                                          ", expected " + shape_str(expected));
    EFFNET_CHECK(int64_t(t.data.size()) == shape_numel(t.shape),
                 std::string(op) + ": " + name + " holds " + std::to_string(t.data.size()) +
                     " values for shape " + shape_str(t.shape));
}

inline void check_same_shape(const char* op, const char* name_a, const Tensor& a, const char* name_b,
                             const Tensor& b) {
    EFFNET_CHECK(a.shape == b.shape, std::string(op) + ": " + name_a + " " + shape_str(a.shape) + " and " +
                                         name_b + " " + shape_str(b.shape) + " differ");
    EFFNET_CHECK(a.data.size() == b.data.size() && int64_t(a.data.size()) == shape_numel(a.shape),
                 std::string(op) + ": tensor data does not match shape " + shape_str(a.shape));
}

} // namespace effnet::cpu::detail
