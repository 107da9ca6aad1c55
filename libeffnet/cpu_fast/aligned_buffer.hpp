#pragma once
// A zero-filled float array on a 64-byte boundary (a cache line; an AVX-512 vector).
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

namespace effnet::cpu_fast {

class AlignedFloats {
public:
    AlignedFloats() = default;
    explicit AlignedFloats(size_t n) : size_(n) {
        if (n == 0) return;
        const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
        data_.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
        if (!data_) throw std::bad_alloc();
        std::memset(data_.get(), 0, bytes);
    }
    float* data() { return data_.get(); }
    const float* data() const { return data_.get(); }
    size_t size() const { return size_; }
    float& operator[](size_t i) { return data_.get()[i]; }
    const float& operator[](size_t i) const { return data_.get()[i]; }

private:
    struct Free {
        void operator()(float* p) const { std::free(p); }
    };
    std::unique_ptr<float, Free> data_;
    size_t size_ = 0;
};

} // namespace effnet::cpu_fast
