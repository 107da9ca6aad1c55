#pragma once
// What effnet accepts from outside, in one place. Every loader checks its input against these
// before it allocates or recurses, and its error message states the limit it hit.
#include <cstddef>
#include <cstdint>

namespace effnet::limits {

// safetensors: the JSON header's size, its nesting depth (a tensor entry is 3 levels deep:
// header -> entry -> shape), and how much of a value from a file an error message quotes.
constexpr uint64_t kMaxHeaderBytes = 100u * 1000u * 1000u;
constexpr int kMaxJsonDepth = 16;
constexpr size_t kMaxQuotedChars = 80;

// Preprocessing: the resize / crop side lengths a weights file's metadata, a command line or
// the API may ask for. B7 runs at 600; 4096 is a 46x larger input, far past any trained model.
constexpr int kMaxPreprocessSide = 4096;

} // namespace effnet::limits
