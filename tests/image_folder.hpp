#pragma once
// Image folders for the training tests, made here: a temporary directory, a class's pixels
// (stripes of a class colour plus noise) and a hand-written 24-bit BMP of them.
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

#include <unistd.h>

#include "effnet/train/rng.hpp"

namespace effnet::test {

// A fresh directory under the system temp dir, removed at scope exit.
struct TempDir {
    std::filesystem::path path;
    explicit TempDir(const std::string& name) {
        path = std::filesystem::temp_directory_path() /
               ("effnet_test_" + name + "_" + std::to_string(::getpid()));
        std::filesystem::remove_all(path);
        std::filesystem::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

// Class k's pixels, [h, w, 3]: stripes of its colour (vertical for even k, horizontal for odd),
// plus uniform noise of +-20.
inline std::vector<uint8_t> class_pixels(int k, int w, int h, train::Rng& rng) {
    static const int colours[4][3] = {{200, 40, 40}, {40, 200, 40}, {40, 40, 200}, {200, 200, 40}};
    std::vector<uint8_t> rgb(size_t(w) * h * 3);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c) {
                const bool stripe = ((k % 2 == 0 ? x : y) / 3) % 2 == 0;
                const double v = colours[k % 4][c] * (stripe ? 1.0 : 0.7) + rng.uniform(-20, 20);
                rgb[(size_t(y) * w + x) * 3 + c] = uint8_t(std::min(255.0, std::max(0.0, v)));
            }
    return rgb;
}

// 24-bit uncompressed BMP, written by hand (bottom-up rows padded to 4 bytes).
inline void write_bmp(const std::filesystem::path& path, int w, int h, const std::vector<uint8_t>& rgb) {
    const int row = (w * 3 + 3) & ~3;
    const uint32_t data_size = uint32_t(row * h), file_size = 54 + data_size;
    std::vector<uint8_t> b(file_size, 0);
    auto put32 = [&](size_t at, uint32_t v) {
        for (int i = 0; i < 4; ++i) b[at + i] = uint8_t(v >> (8 * i));
    };
    b[0] = 'B', b[1] = 'M';
    put32(2, file_size);
    put32(10, 54);
    put32(14, 40);
    put32(18, uint32_t(w));
    put32(22, uint32_t(h));
    b[26] = 1, b[28] = 24;
    put32(34, data_size);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c)
                b[54 + size_t(h - 1 - y) * row + x * 3 + (2 - c)] = rgb[(size_t(y) * w + x) * 3 + c];
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
}

} // namespace effnet::test
