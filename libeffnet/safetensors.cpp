// safetensors reader (memory-mapped, every header field validated) and atomic writer.
//
// Layout: [u64 little-endian N][N bytes JSON header][data section]. Offsets in the header are
// relative to the start of the data section.
//
// What the reader accepts, beyond the obvious:
// - Gaps between tensors, before the first and after the last, are allowed: the format does not
//   forbid them and nothing reads them. Overlapping byte ranges are an error.
// - Zero-byte tensors (a 0 in the shape) own no bytes, so they overlap nothing; a zero-length
//   data section is fine.
// - Duplicate keys in the header JSON are an error (a JSON parser would silently keep one).
// - Data may sit at any alignment: elements are copied out with memcpy, never cast in place.
// - The header starts with '{' and may end in spaces (the format's padding), nothing else: no
//   byte-order mark, no NUL. JSON nesting deeper than limits::kMaxJsonDepth is refused while
//   parsing, and values quoted in errors are cut to limits::kMaxQuotedChars.
// - Metadata 'effnet.checksum' = "xxh3_64:<16 hex digits>" is the XXH3-64 (seed 0) of the data
//   section; when present it is verified at open. Files without it (from elsewhere) load.
// The host must be little-endian (checked at compile time), as the format is.
//
// The writer orders tensors by element size (largest first), then by name, packs them without
// gaps (so strict readers such as Python's safetensors accept the file), pads the header with
// spaces so the data section starts 8-byte aligned (every tensor is then naturally aligned), and
// records the data's checksum in the metadata.
#include "effnet/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "effnet/error.hpp"
#include "effnet/limits.hpp"

#define XXH_INLINE_ALL // header-only use of the xxHash library: nothing to link
#include <xxhash.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.cpp assumes a little-endian host"
#endif

namespace effnet {

namespace {

constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kChecksumKey = "effnet.checksum";
constexpr const char* kChecksumPrefix = "xxh3_64:";

// "xxh3_64:" and 16 lowercase hex digits.
std::string checksum_text(uint64_t hash) {
    char digits[17];
    std::snprintf(digits, sizeof digits, "%016llx", static_cast<unsigned long long>(hash));
    return kChecksumPrefix + std::string(digits);
}

// A JSON value from the file, short enough to quote in an error (nesting is bounded already).
std::string quoted(const nlohmann::json& value) {
    return excerpt(value.dump());
}

std::string errno_text() {
    return std::strerror(errno);
}

bool dtype_from_name(const std::string& s, DType* out) {
    static const std::pair<const char*, DType> table[] = {{"F32", DType::F32},
                                                          {"F16", DType::F16},
                                                          {"BF16", DType::BF16},
                                                          {"F64", DType::F64},
                                                          {"I64", DType::I64}};
    for (const auto& [name, dtype] : table)
        if (s == name) {
            *out = dtype;
            return true;
        }
    return false;
}

// The whole file, read-only. Unmapped when destroyed. A file of 0 bytes is never mapped
// (mmap refuses length 0); open() rejects it before anything looks at the bytes.
class FileMapping {
public:
    FileMapping() = default;
    FileMapping(const FileMapping&) = delete;
    FileMapping& operator=(const FileMapping&) = delete;
    ~FileMapping() {
        if (data_) munmap(const_cast<uint8_t*>(data_), size_);
    }

    void map(const std::string& path) {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw Error("safetensors: cannot open '" + path + "': " + errno_text());
        struct stat st {};
        if (fstat(fd, &st) != 0) {
            const std::string why = errno_text();
            ::close(fd);
            throw Error("safetensors: cannot stat '" + path + "': " + why);
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd);
            throw Error("safetensors: '" + path + "' is not a regular file");
        }
        size_ = static_cast<size_t>(st.st_size);
        if (size_ > 0) {
            void* p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                const std::string why = errno_text();
                ::close(fd);
                size_ = 0;
                throw Error("safetensors: cannot map '" + path + "': " + why);
            }
            data_ = static_cast<const uint8_t*>(p);
        }
        ::close(fd); // the mapping keeps the file alive
    }

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }

private:
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
};

// Element i of a little-endian array of T at an arbitrary address.
template <typename T>
T load(const uint8_t* base, size_t i) {
    T v;
    std::memcpy(&v, base + i * sizeof(T), sizeof(T));
    return v;
}

// double -> float, round to nearest even, without the undefined behaviour of an out-of-range
// cast: anything at or past the midpoint between FLT_MAX and 2^128 becomes Inf.
float f64_to_f32(double d) {
    if (std::isnan(d)) return std::numeric_limits<float>::quiet_NaN();
    const double overflow = std::ldexp(2.0 - std::ldexp(1.0, -24), 127); // 2^128 - 2^103
    if (std::fabs(d) >= overflow) return std::signbit(d) ? -INFINITY : INFINITY;
    if (std::fabs(d) > double(std::numeric_limits<float>::max()))
        return std::signbit(d) ? -std::numeric_limits<float>::max() : std::numeric_limits<float>::max();
    return static_cast<float>(d); // in range: the conversion rounds per the current (nearest) mode
}

} // namespace

const char* dtype_name(DType d) {
    switch (d) {
    case DType::F32:
        return "F32";
    case DType::F16:
        return "F16";
    case DType::BF16:
        return "BF16";
    case DType::F64:
        return "F64";
    case DType::I64:
        return "I64";
    }
    return "?";
}

size_t dtype_size(DType d) {
    switch (d) {
    case DType::F32:
        return 4;
    case DType::F16:
        return 2;
    case DType::BF16:
        return 2;
    case DType::F64:
        return 8;
    case DType::I64:
        return 8;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Reader

struct SafetensorsFile::Impl {
    std::string path;
    FileMapping mapping;
    const uint8_t* data = nullptr; // start of the data section (inside the mapping)
    uint64_t data_size = 0;
    std::map<std::string, TensorInfo> tensors;
    std::map<std::string, std::string> metadata;

    std::string where(const std::string& name) const {
        return "safetensors '" + path + "', tensor '" + excerpt(name) + "'";
    }
    void parse_header(const char* text, size_t length);
    void verify_checksum() const;
    TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry) const;
};

TensorInfo SafetensorsFile::Impl::parse_entry(const std::string& name, const nlohmann::json& entry) const {
    const std::string at = where(name);
    EFFNET_CHECK(entry.is_object(), at + ": entry is not a JSON object");

    TensorInfo info;
    info.name = name;

    auto dtype_it = entry.find("dtype");
    EFFNET_CHECK(dtype_it != entry.end(), at + ": missing 'dtype'");
    EFFNET_CHECK(dtype_it->is_string(), at + ": 'dtype' is not a string");
    const std::string dtype_text = dtype_it->get<std::string>();
    EFFNET_CHECK(dtype_from_name(dtype_text, &info.dtype),
                 at + ": unknown dtype '" + excerpt(dtype_text) + "' (supported: F32, F16, BF16, F64, I64)");

    auto shape_it = entry.find("shape");
    EFFNET_CHECK(shape_it != entry.end(), at + ": missing 'shape'");
    EFFNET_CHECK(shape_it->is_array(), at + ": 'shape' is not an array");
    // Count elements, refusing any running product past int64 (Shape is int64 and shape_numel
    // multiplies in int64), even when a later 0 would bring it back down.
    uint64_t numel = 1;
    for (const auto& dim : *shape_it) {
        EFFNET_CHECK(dim.is_number_integer(), at + ": shape entry " + quoted(dim) + " is not an integer");
        EFFNET_CHECK(dim.is_number_unsigned() || dim.get<int64_t>() >= 0,
                     at + ": negative shape entry " + quoted(dim));
        const uint64_t d = dim.get<uint64_t>();
        const bool overflow =
            __builtin_mul_overflow(numel, d, &numel) || numel > uint64_t(std::numeric_limits<int64_t>::max());
        EFFNET_CHECK(!overflow, at + ": shape " + quoted(*shape_it) + " has too many elements");
        info.shape.push_back(static_cast<int64_t>(d));
    }
    uint64_t expected_bytes = 0;
    EFFNET_CHECK(!__builtin_mul_overflow(numel, uint64_t(dtype_size(info.dtype)), &expected_bytes),
                 at + ": shape " + quoted(*shape_it) + " has too many bytes");

    auto offsets_it = entry.find("data_offsets");
    EFFNET_CHECK(offsets_it != entry.end(), at + ": missing 'data_offsets'");
    const nlohmann::json& offsets = *offsets_it;
    EFFNET_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
                     offsets[1].is_number_unsigned(),
                 at + ": 'data_offsets' " + quoted(offsets) + " is not two non-negative integers");
    info.begin = offsets[0].get<uint64_t>();
    info.end = offsets[1].get<uint64_t>();
    EFFNET_CHECK(info.begin <= info.end, at + ": data_offsets " + quoted(offsets) + " are out of order");
    EFFNET_CHECK(info.end <= data_size, at + ": data_offsets " + quoted(offsets) +
                                            " run past the data section (" + std::to_string(data_size) +
                                            " bytes; file truncated?)");
    EFFNET_CHECK(info.end - info.begin == expected_bytes,
                 at + ": shape " + shape_str(info.shape) + " of " + dtype_name(info.dtype) + " needs " +
                     std::to_string(expected_bytes) + " bytes but data_offsets " + quoted(offsets) +
                     " span " + std::to_string(info.end - info.begin));

    return info;
}

void SafetensorsFile::Impl::parse_header(const char* text, size_t length) {
    // The format: JSON starting with '{', padded at the end with spaces only.
    size_t end = length;
    while (end > 0 && text[end - 1] == ' ') --end;
    const bool bom = length >= 3 && std::memcmp(text, "\xEF\xBB\xBF", 3) == 0;
    EFFNET_CHECK(end > 0 && text[0] == '{', "safetensors '" + path + "': header does not start with '{'" +
                                                (bom ? " (it starts with a UTF-8 byte-order mark)" : ""));
    EFFNET_CHECK(text[end - 1] == '}', "safetensors '" + path +
                                           "': header does not end with '}' followed only by spaces (byte " +
                                           std::to_string(unsigned(uint8_t(text[end - 1]))) + " at offset " +
                                           std::to_string(8 + end - 1) + ")");

    nlohmann::json header;
    std::set<std::string> top_level_keys;
    std::string duplicate;
    struct TooDeep {};
    // The callback sees every key; a repeated top-level key means two tensors of one name.
    // Nesting is refused as it opens, so no later step (nor the JSON printer) recurses deeply.
    auto on_event = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        const bool opens = event == nlohmann::json::parse_event_t::object_start ||
                           event == nlohmann::json::parse_event_t::array_start;
        if (opens && depth >= limits::kMaxJsonDepth) throw TooDeep{};
        if (event == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string()) {
            if (!top_level_keys.insert(parsed.get<std::string>()).second && duplicate.empty())
                duplicate = parsed.get<std::string>();
        }
        return true;
    };
    try {
        header = nlohmann::json::parse(text, text + end, on_event);
    } catch (const TooDeep&) {
        throw Error("safetensors '" + path + "': header nests JSON deeper than " +
                    std::to_string(limits::kMaxJsonDepth) + " levels (a tensor entry needs 3)");
    } catch (const nlohmann::json::exception& e) {
        throw Error("safetensors '" + path + "': header is not valid JSON: " + excerpt(e.what()));
    }
    EFFNET_CHECK(header.is_object(), "safetensors '" + path + "': header is not a JSON object");
    EFFNET_CHECK(duplicate.empty(),
                 "safetensors '" + path + "': key '" + excerpt(duplicate) + "' appears twice in the header");

    for (const auto& [name, entry] : header.items()) {
        if (name == kMetadataKey) {
            EFFNET_CHECK(entry.is_object(), "safetensors '" + path + "': __metadata__ is not an object");
            for (const auto& [key, value] : entry.items()) {
                EFFNET_CHECK(value.is_string(), "safetensors '" + path + "': __metadata__ entry '" +
                                                    excerpt(key) + "' is not a string");
                metadata[key] = value.get<std::string>();
            }
            continue;
        }
        tensors.emplace(name, parse_entry(name, entry));
    }
    // (Fields other than dtype/shape/data_offsets in an entry are ignored, as other readers do.)

    // No byte may belong to two tensors. Zero-byte tensors own nothing and are left out.
    std::vector<const TensorInfo*> by_offset;
    for (const auto& [name, info] : tensors)
        if (info.end > info.begin) by_offset.push_back(&info);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
        const TensorInfo& prev = *by_offset[i - 1];
        const TensorInfo& cur = *by_offset[i];
        EFFNET_CHECK(cur.begin >= prev.end, "safetensors '" + path + "': tensors '" + excerpt(prev.name) +
                                                "' [" + std::to_string(prev.begin) + ", " +
                                                std::to_string(prev.end) + ") and '" + excerpt(cur.name) +
                                                "' [" + std::to_string(cur.begin) + ", " +
                                                std::to_string(cur.end) + ") overlap");
    }
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
    auto impl = std::make_unique<Impl>();
    impl->path = path;
    impl->mapping.map(path);
    const uint8_t* bytes = impl->mapping.data();
    const uint64_t file_size = impl->mapping.size();

    EFFNET_CHECK(file_size >= 8, "safetensors '" + path + "': file is " + std::to_string(file_size) +
                                     " bytes, shorter than the 8-byte header length");
    const uint64_t header_size = load<uint64_t>(bytes, 0);
    EFFNET_CHECK(header_size <= limits::kMaxHeaderBytes,
                 "safetensors '" + path + "': header length " + std::to_string(header_size) +
                     " is past the limit of " + std::to_string(limits::kMaxHeaderBytes) +
                     " bytes; not a safetensors file?");
    EFFNET_CHECK(header_size <= file_size - 8,
                 "safetensors '" + path + "': header length " + std::to_string(header_size) +
                     " runs past the end of the " + std::to_string(file_size) + "-byte file (truncated?)");
    impl->data = bytes + 8 + header_size;
    impl->data_size = file_size - 8 - header_size;
    try {
        impl->parse_header(reinterpret_cast<const char*>(bytes + 8), header_size);
    } catch (const nlohmann::json::exception& e) { // a JSON access that slipped past the checks
        throw Error("safetensors '" + path + "': malformed header: " + excerpt(e.what()));
    }
    impl->verify_checksum();
    return SafetensorsFile(std::move(impl));
}

void SafetensorsFile::Impl::verify_checksum() const {
    auto it = metadata.find(kChecksumKey);
    if (it == metadata.end()) return; // written elsewhere: nothing to verify
    const std::string& stated = it->second;
    const size_t prefix = std::strlen(kChecksumPrefix);
    const bool well_formed = stated.size() == prefix + 16 &&
                             stated.compare(0, prefix, kChecksumPrefix) == 0 &&
                             stated.find_first_not_of("0123456789abcdef", prefix) == std::string::npos;
    EFFNET_CHECK(well_formed, "safetensors '" + path + "': metadata '" + kChecksumKey + "' = '" +
                                  excerpt(stated) + "' is not 'xxh3_64:' and 16 lowercase hex digits");
    const std::string actual = checksum_text(XXH3_64bits(data, data_size));
    EFFNET_CHECK(actual == stated, "safetensors '" + path +
                                       "': the data does not match its checksum (metadata " + stated +
                                       ", data " + actual + "): the file is damaged");
}

bool SafetensorsFile::has_checksum() const {
    return impl_->metadata.count(kChecksumKey) != 0;
}

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

const std::string& SafetensorsFile::path() const {
    return impl_->path;
}
const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
    return impl_->metadata;
}

std::vector<std::string> SafetensorsFile::names() const {
    std::vector<std::string> out;
    out.reserve(impl_->tensors.size());
    for (const auto& kv : impl_->tensors) out.push_back(kv.first); // std::map: already sorted
    return out;
}

bool SafetensorsFile::contains(const std::string& name) const {
    return impl_->tensors.count(name) != 0;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
    auto it = impl_->tensors.find(name);
    EFFNET_CHECK(it != impl_->tensors.end(), impl_->where(name) + ": no such tensor");
    return it->second;
}

const void* SafetensorsFile::raw(const std::string& name) const {
    return impl_->data + info(name).begin;
}

Tensor SafetensorsFile::read_f32(const std::string& name) const {
    const TensorInfo& t = info(name);
    const uint8_t* src = impl_->data + t.begin;
    Tensor out(t.shape);
    float* dst = out.ptr();
    const size_t n = out.data.size();
    switch (t.dtype) {
    case DType::F32:
        if (n) std::memcpy(dst, src, n * sizeof(float));
        break;
    case DType::F16:
        for (size_t i = 0; i < n; ++i) dst[i] = half_to_float(load<uint16_t>(src, i));
        break;
    case DType::BF16:
        for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_float(load<uint16_t>(src, i));
        break;
    case DType::F64:
        for (size_t i = 0; i < n; ++i) dst[i] = f64_to_f32(load<double>(src, i));
        break;
    case DType::I64:
        throw Error(impl_->where(name) + ": is I64; read_f32 reads floating-point tensors only");
    }
    return out;
}

std::vector<double> SafetensorsFile::read_f64(const std::string& name) const {
    const TensorInfo& t = info(name);
    const uint8_t* src = impl_->data + t.begin;
    const size_t n = static_cast<size_t>(shape_numel(t.shape));
    std::vector<double> out(n);
    switch (t.dtype) {
    case DType::F64:
        if (n) std::memcpy(out.data(), src, n * sizeof(double));
        break;
    case DType::F32:
        for (size_t i = 0; i < n; ++i) out[i] = load<float>(src, i);
        break;
    case DType::F16:
        for (size_t i = 0; i < n; ++i) out[i] = half_to_float(load<uint16_t>(src, i));
        break;
    case DType::BF16:
        for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(load<uint16_t>(src, i));
        break;
    case DType::I64:
        throw Error(impl_->where(name) + ": is I64; read_f64 reads floating-point tensors only");
    }
    return out;
}

std::vector<int64_t> SafetensorsFile::read_i64(const std::string& name) const {
    const TensorInfo& t = info(name);
    EFFNET_CHECK(t.dtype == DType::I64,
                 impl_->where(name) + ": is " + dtype_name(t.dtype) + "; read_i64 reads I64 tensors only");
    const size_t n = static_cast<size_t>(shape_numel(t.shape));
    std::vector<int64_t> out(n);
    if (n) std::memcpy(out.data(), impl_->data + t.begin, n * sizeof(int64_t));
    return out;
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

void check_new_name(const std::string& name, bool taken) {
    EFFNET_CHECK(name != kMetadataKey, "safetensors writer: '__metadata__' is reserved, not a tensor name");
    EFFNET_CHECK(!taken, "safetensors writer: tensor '" + name + "' added twice");
}

// Bytes of a shape of a dtype. Like the reader, refuses negative dims and any running element
// count past int64, so that whatever is written can be read back.
size_t shape_bytes(const std::string& name, const Shape& shape, DType dtype) {
    uint64_t n = 1;
    for (int64_t d : shape) {
        EFFNET_CHECK(d >= 0, "safetensors writer: tensor '" + name + "' has negative dimension in shape " +
                                 shape_str(shape));
        const bool overflow =
            __builtin_mul_overflow(n, uint64_t(d), &n) || n > uint64_t(std::numeric_limits<int64_t>::max());
        EFFNET_CHECK(!overflow,
                     "safetensors writer: tensor '" + name + "' shape " + shape_str(shape) + " is too large");
    }
    uint64_t bytes = 0;
    EFFNET_CHECK(!__builtin_mul_overflow(n, uint64_t(dtype_size(dtype)), &bytes) &&
                     bytes <= std::numeric_limits<size_t>::max(),
                 "safetensors writer: tensor '" + name + "' shape " + shape_str(shape) + " is too large");
    return static_cast<size_t>(bytes);
}

// Writes all of [p, p+n) to fd, retrying short writes and EINTR.
void write_all(int fd, const void* p, size_t n, const std::string& path) {
    const uint8_t* bytes = static_cast<const uint8_t*>(p);
    while (n > 0) {
        const ssize_t w = ::write(fd, bytes, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            throw Error("safetensors writer: cannot write '" + path + "': " + errno_text());
        }
        bytes += w;
        n -= static_cast<size_t>(w);
    }
}

// The temporary file: closed and removed on destruction unless committed by rename.
class TempFile {
public:
    explicit TempFile(const std::string& final_path) : final_path_(final_path) {
        std::vector<char> name(final_path.begin(), final_path.end());
        const char suffix[] = ".tmp.XXXXXX";
        name.insert(name.end(), suffix, suffix + sizeof(suffix)); // includes the terminating NUL
        fd_ = mkstemp(name.data());
        if (fd_ < 0)
            throw Error("safetensors writer: cannot create a temporary file next to '" + final_path +
                        "': " + errno_text());
        temp_path_ = name.data();
        fchmod(fd_, 0644); // mkstemp makes 0600; a weights file is ordinary data
    }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
    ~TempFile() {
        if (fd_ >= 0) ::close(fd_);
        if (!committed_) ::unlink(temp_path_.c_str());
    }

    int fd() const { return fd_; }

    // fsync, close, rename over the final path, then fsync the directory so the rename lasts.
    void commit() {
        if (fsync(fd_) != 0)
            throw Error("safetensors writer: cannot fsync '" + final_path_ + "': " + errno_text());
        const int fd = fd_;
        fd_ = -1;
        if (::close(fd) != 0)
            throw Error("safetensors writer: cannot close '" + final_path_ + "': " + errno_text());
        if (std::rename(temp_path_.c_str(), final_path_.c_str()) != 0)
            throw Error("safetensors writer: cannot rename '" + temp_path_ + "' to '" + final_path_ +
                        "': " + errno_text());
        committed_ = true;
        const size_t slash = final_path_.rfind('/');
        const std::string dir =
            slash == std::string::npos ? "." : (slash == 0 ? "/" : final_path_.substr(0, slash));
        const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd >= 0) { // best effort: the data itself is already durable
            fsync(dir_fd);
            ::close(dir_fd);
        }
    }

private:
    std::string final_path_, temp_path_;
    int fd_ = -1;
    bool committed_ = false;
};

} // namespace

void SafetensorsWriter::add(const std::string& name, const Tensor& t) {
    EFFNET_CHECK(uint64_t(t.data.size()) * 4 == shape_bytes(name, t.shape, DType::F32),
                 "safetensors writer: tensor '" + name + "' has " + std::to_string(t.data.size()) +
                     " elements but shape " + shape_str(t.shape));
    add_raw(name, DType::F32, t.shape, t.data.data(), t.data.size() * sizeof(float));
}

void SafetensorsWriter::add_f64(const std::string& name, const Shape& shape,
                                const std::vector<double>& data) {
    add_raw(name, DType::F64, shape, data.data(), data.size() * sizeof(double));
}

void SafetensorsWriter::add_i64(const std::string& name, const Shape& shape,
                                const std::vector<int64_t>& data) {
    add_raw(name, DType::I64, shape, data.data(), data.size() * sizeof(int64_t));
}

void SafetensorsWriter::add_raw(const std::string& name, DType dtype, const Shape& shape, const void* bytes,
                                size_t size) {
    const bool taken =
        std::any_of(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.name == name; });
    check_new_name(name, taken);
    const size_t expected = shape_bytes(name, shape, dtype);
    EFFNET_CHECK(size == expected, "safetensors writer: tensor '" + name + "' shape " + shape_str(shape) +
                                       " of " + dtype_name(dtype) + " needs " + std::to_string(expected) +
                                       " bytes, got " + std::to_string(size));
    Entry e{name, dtype, shape, {}};
    if (size) {
        const uint8_t* p = static_cast<const uint8_t*>(bytes);
        e.bytes.assign(p, p + size);
    }
    entries_.push_back(std::move(e));
}

void SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) {
    metadata_[key] = value;
}

void SafetensorsWriter::write(const std::string& path) const {
    // Largest elements first, then by name: with an 8-aligned data section every tensor starts
    // at a multiple of its element size.
    std::vector<const Entry*> order;
    for (const Entry& e : entries_) order.push_back(&e);
    std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
        if (dtype_size(a->dtype) != dtype_size(b->dtype)) return dtype_size(a->dtype) > dtype_size(b->dtype);
        return a->name < b->name;
    });

    nlohmann::json header = nlohmann::json::object(); // std::map underneath: keys come out sorted
    uint64_t offset = 0;
    for (const Entry* e : order) {
        const uint64_t end = offset + e->bytes.size();
        header[e->name] = {
            {"dtype", dtype_name(e->dtype)}, {"shape", e->shape}, {"data_offsets", {offset, end}}};
        offset = end;
    }
    XXH3_state_t hash_state;
    XXH3_INITSTATE(&hash_state);
    XXH3_64bits_reset(&hash_state);
    for (const Entry* e : order) XXH3_64bits_update(&hash_state, e->bytes.data(), e->bytes.size());
    std::map<std::string, std::string> metadata = metadata_;
    metadata[kChecksumKey] = checksum_text(XXH3_64bits_digest(&hash_state)); // replaces a copied one
    header[kMetadataKey] = metadata;

    std::string header_text;
    try {
        header_text = header.dump();
    } catch (const nlohmann::json::exception& e) { // e.g. a name that is not valid UTF-8
        throw Error("safetensors writer: cannot encode the header of '" + path + "': " + e.what());
    }
    while ((8 + header_text.size()) % 8 != 0) header_text.push_back(' ');
    const uint64_t header_size = header_text.size();

    TempFile file(path);
    write_all(file.fd(), &header_size, sizeof header_size, path);
    write_all(file.fd(), header_text.data(), header_text.size(), path);
    for (const Entry* e : order) write_all(file.fd(), e->bytes.data(), e->bytes.size(), path);
    file.commit();
}

} // namespace effnet
