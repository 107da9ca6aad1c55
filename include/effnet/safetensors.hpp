#pragma once
// safetensors reader and writer. Format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data. Reads are memory-mapped; every structural fault throws effnet::Error naming
// the file and, where there is one, the tensor; a file carrying effnet's checksum
// ('effnet.checksum' = "xxh3_64:<16 hex>", the XXH3-64 of the data section) is verified. Gaps between tensors
// are accepted (the format does not forbid them), overlaps are not; the writer packs tensors without gaps.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "effnet/tensor.hpp"

namespace effnet {

enum class DType { F32, F16, BF16, F64, I64 };
const char* dtype_name(DType d); // "F32", ...
size_t dtype_size(DType d);

struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    Shape shape;
    uint64_t begin = 0, end = 0; // byte range within the data section
};

class SafetensorsFile {
public:
    // Maps the file and validates the whole header. Throws effnet::Error on any fault.
    static SafetensorsFile open(const std::string& path);
    SafetensorsFile(SafetensorsFile&&) noexcept;
    SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
    ~SafetensorsFile();

    const std::string& path() const;
    const std::map<std::string, std::string>& metadata() const;
    // True when the file carries effnet's data checksum (metadata 'effnet.checksum'), which
    // open() has verified. Files written by effnet carry one; files from elsewhere may not.
    bool has_checksum() const;
    std::vector<std::string> names() const; // sorted
    bool contains(const std::string& name) const;
    const TensorInfo& info(const std::string& name) const; // throws if missing, naming it
    const void* raw(const std::string& name) const;        // pointer into the mapping

    // Converts F32/F16/BF16/F64 to float32; throws for I64.
    Tensor read_f32(const std::string& name) const;
    // Converts F64/F32 exactly to double (F16/BF16 widened).
    std::vector<double> read_f64(const std::string& name) const;
    std::vector<int64_t> read_i64(const std::string& name) const; // I64 only

private:
    struct Impl;
    explicit SafetensorsFile(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// Collects tensors and writes them in one go (atomically: temporary file, then rename), with
// the data's checksum in metadata 'effnet.checksum' (replacing any value set for that key).
class SafetensorsWriter {
public:
    void add(const std::string& name, const Tensor& t); // stored as F32
    void add_f64(const std::string& name, const Shape& shape, const std::vector<double>& data);
    void add_i64(const std::string& name, const Shape& shape, const std::vector<int64_t>& data);
    // Raw bytes of the given dtype (e.g. F16/BF16 produced elsewhere); size is checked.
    void add_raw(const std::string& name, DType dtype, const Shape& shape, const void* bytes, size_t size);
    void set_metadata(const std::string& key, const std::string& value);
    void write(const std::string& path) const; // throws effnet::Error on I/O failure

private:
    struct Entry {
        std::string name;
        DType dtype;
        Shape shape;
        std::vector<uint8_t> bytes;
    };
    std::vector<Entry> entries_;
    std::map<std::string, std::string> metadata_;
};

// Half-precision conversions used by the reader and the GPU side (round to nearest even).
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);

} // namespace effnet
