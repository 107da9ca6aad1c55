// The safetensors parser: open (header validation) and read every tensor in every way the
// API offers, so that a header that passes validation but lies about its data shows.
#include "effnet/safetensors.hpp"
#include "expect_errors.hpp"
#include "memory_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static MemoryFile file("fuzz.safetensors");
    const std::string& path = file.hold(data, size);
    expect_only_effnet_errors([&] {
        const effnet::SafetensorsFile st = effnet::SafetensorsFile::open(path);
        for (const auto& [key, value] : st.metadata()) (void)key, (void)value;
        for (const std::string& name : st.names()) {
            const effnet::TensorInfo& info = st.info(name);
            (void)st.raw(name);
            if (info.dtype == effnet::DType::I64) {
                (void)st.read_i64(name);
            } else {
                (void)st.read_f32(name);
                (void)st.read_f64(name);
            }
        }
    });
    return 0;
}
