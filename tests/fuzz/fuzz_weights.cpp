// The weights loader: safetensors parsing, family detection from names, architecture
// inference from shapes, metadata parsing (family, padding, activation, bn_eps,
// preprocess.*...), and the final checks of every tensor.
#include "effnet/model.hpp"
#include "expect_errors.hpp"
#include "memory_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static MemoryFile file("fuzz-weights.safetensors");
    const std::string& path = file.hold(data, size);
    expect_only_effnet_errors([&] {
        const effnet::Model model = effnet::load_weights(path);
        model.config.validate(); // what was accepted must be a consistent architecture
    });
    return 0;
}
