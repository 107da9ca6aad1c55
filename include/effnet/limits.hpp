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
// the API may ask for. B7 runs at 600 and L2 at 800; 2048 is 5x the pixels of either.
constexpr int kMaxPreprocessSide = 2048;

// Image folders (training data): how many folders deep below a class folder the scan looks.
// Real datasets are one or two levels deep; the bound keeps a hostile tree from exhausting the
// scan's stack.
constexpr int kMaxDatasetDepth = 64;

} // namespace effnet::limits
