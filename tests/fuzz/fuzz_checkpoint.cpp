// The checkpoint reader: safetensors parsing, the architecture JSON in the metadata, the
// model/optimizer/state tensors and their shapes.
#include "effnet/train/checkpoint.hpp"
#include "expect_errors.hpp"
#include "memory_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static MemoryFile file("fuzz-checkpoint.safetensors");
    const std::string& path = file.hold(data, size);
    expect_only_effnet_errors([&] {
        const effnet::train::Checkpoint ck = effnet::train::load_checkpoint(path);
        ck.model.config.validate();
    });
    return 0;
}
