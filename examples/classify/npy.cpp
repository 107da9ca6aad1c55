#include "npy.hpp"

#include <cstdio>
#include <memory>

#include "effnet/error.hpp"

namespace classify {

void write_npy_f32(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
    std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
    int64_t count = 1;
    for (int64_t d : shape) {
        dict += std::to_string(d) + ", ";
        count *= d;
    }
    dict += "), }";
    // Magic (6) + version (2) + header length (2) + dict, padded with spaces to a multiple of
    // 64 and ended by a newline.
    size_t total = 10 + dict.size() + 1;
    dict.append((64 - total % 64) % 64, ' ');
    dict += '\n';

    std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
    if (!f) throw effnet::Error(path + ": cannot open for writing");
    const unsigned char preamble[10] = {0x93,
                                        'N',
                                        'U',
                                        'M',
                                        'P',
                                        'Y',
                                        1,
                                        0,
                                        (unsigned char)(dict.size() & 0xFF),
                                        (unsigned char)(dict.size() >> 8)};
    bool ok = std::fwrite(preamble, 1, 10, f.get()) == 10;
    ok = ok && std::fwrite(dict.data(), 1, dict.size(), f.get()) == dict.size();
    ok = ok && std::fwrite(data, sizeof(float), size_t(count), f.get()) == size_t(count);
    if (!ok) throw effnet::Error(path + ": write error");
}

} // namespace classify
