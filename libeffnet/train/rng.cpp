// Counter-based seeding (splitmix64) and xoshiro256**: every stream is a pure function of its
// seed, so a sample's augmentation or a step's dropout mask can be recreated on resume.
#include "effnet/train/rng.hpp"

#include "effnet/error.hpp"
#include "splitmix64.hpp"

namespace effnet::train {
namespace {

uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

} // namespace

uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c) {
    uint64_t s = a;
    uint64_t h = splitmix64_next(s);
    s = h ^ b;
    h = splitmix64_next(s);
    s = h ^ c;
    return splitmix64_next(s);
}

Rng::Rng(uint64_t seed) {
    uint64_t s = seed;
    for (auto& w : s_) w = splitmix64_next(s);
}

uint64_t Rng::next_u64() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
}

double Rng::uniform() {
    return double(next_u64() >> 11) * 0x1.0p-53;
}

double Rng::uniform(double lo, double hi) {
    return lo + (hi - lo) * uniform();
}

int64_t Rng::below(int64_t n) {
    EFFNET_CHECK(n >= 1, "Rng::below: n must be >= 1, got " + std::to_string(n));
    const uint64_t un = uint64_t(n);
    const uint64_t limit = UINT64_MAX - UINT64_MAX % un; // reject the biased tail
    uint64_t r;
    do r = next_u64();
    while (r >= limit);
    return int64_t(r % un);
}

} // namespace effnet::train
