// IEEE binary16 and bfloat16 conversions, bit-exact and independent of the host's half support.
// float -> half/bf16 rounds to nearest, ties to even; NaN stays NaN (quieted), Inf stays Inf,
// subnormals are produced and decoded exactly.
#include <cstdint>
#include <cstring>

#include "effnet/safetensors.hpp"

namespace effnet {

namespace {

uint32_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

float bits_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

} // namespace

// half: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13)); // Inf / NaN
    if (exponent == 0) {
        if (mantissa == 0) return bits_float(sign); // +-0
        // Subnormal mantissa * 2^-24: shift until the implicit bit appears, lowering the exponent.
        uint32_t float_exponent = 127 - 15 + 1;
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            --float_exponent;
        }
        return bits_float(sign | (float_exponent << 23) | ((mantissa & 0x3ffu) << 13));
    }
    return bits_float(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
}

uint16_t float_to_half(float f) {
    const uint32_t bits = float_bits(f);
    const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
    const uint32_t magnitude = bits & 0x7fffffffu;

    if (magnitude > 0x7f800000u) // NaN: keep the top payload bits, force the quiet bit
        return uint16_t(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
    // 65520 is halfway between the largest half (65504, odd mantissa) and 2^16: ties go up to Inf.
    if (magnitude >= 0x477ff000u) return uint16_t(sign | 0x7c00u);

    if (magnitude < 0x38800000u) { // below 2^-14: half subnormal (units of 2^-24) or zero
        // Exactly 2^-25 is a tie between 0 and 2^-24; even wins, so <= 2^-25 becomes zero.
        if (magnitude <= 0x33000000u) return sign;
        const uint32_t exponent = magnitude >> 23; // 102..112
        const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - exponent; // 14..24
        uint32_t h = mantissa >> shift;
        const uint32_t remainder = mantissa & ((1u << shift) - 1);
        const uint32_t halfway = 1u << (shift - 1);
        if (remainder > halfway || (remainder == halfway && (h & 1u))) ++h; // may reach 0x400: fine
        return uint16_t(sign | h);
    }

    // Normal: rebias the exponent, keep 10 mantissa bits, round on the 13 dropped bits.
    // A carry out of the mantissa correctly bumps the exponent.
    uint32_t h = ((magnitude - ((127u - 15u) << 23)) >> 13);
    const uint32_t remainder = magnitude & 0x1fffu;
    if (remainder > 0x1000u || (remainder == 0x1000u && (h & 1u))) ++h;
    return uint16_t(sign | h);
}

// bf16 is the top half of a float32.
float bf16_to_float(uint16_t b) {
    return bits_float(uint32_t(b) << 16);
}

uint16_t float_to_bf16(float f) {
    const uint32_t bits = float_bits(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x0040u); // quiet NaN
    // Round to nearest even; overflow past the largest bf16 carries into Inf as it should.
    const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return uint16_t((bits + rounding) >> 16);
}

} // namespace effnet
