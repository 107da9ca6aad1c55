#pragma once
// Random numbers: a counter-based generator so that any sample's stream can be recreated.
// Every random choice of training is a pure function of (seed, epoch, index) or (seed, step), so
// a run resumed from a checkpoint repeats the uninterrupted run bit for bit (given the same
// machine and thread count).
#include <cstdint>

namespace effnet::train {

// splitmix64 finaliser of (a, b, c): the seed of one independent stream.
uint64_t mix_seed(uint64_t a, uint64_t b = 0, uint64_t c = 0);

class Rng { // xoshiro256** seeded through splitmix64
public:
    explicit Rng(uint64_t seed);
    uint64_t next_u64();
    double uniform();                     // [0, 1), 53 random bits
    double uniform(double lo, double hi); // [lo, hi)
    int64_t below(int64_t n);             // [0, n), n >= 1, unbiased
private:
    uint64_t s_[4];
};

} // namespace effnet::train
