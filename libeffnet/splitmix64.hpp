#pragma once
// splitmix64 (Steele, Lea, Flood 2014): the one mixing function behind every seeded stream in
// effnet (model initialisation, dropout and stochastic-depth masks, augmentation).
#include <cstdint>

namespace effnet {

constexpr uint64_t kSplitmixGamma = 0x9E3779B97F4A7C15ull; // 2^64 / golden ratio

// The finaliser: a bijective mix of z.
inline uint64_t splitmix64_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The generator: advances state by gamma and returns the mix.
inline uint64_t splitmix64_next(uint64_t& state) {
    return splitmix64_mix(state += kSplitmixGamma);
}

} // namespace effnet
