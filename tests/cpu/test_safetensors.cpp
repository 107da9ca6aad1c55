// safetensors reader/writer and the half/bf16 conversions.
// Also built alone as effnet_safetensors_tests under ASan+UBSan: every malformed file below must
// produce an effnet::Error naming the file (and tensor), never a crash or sanitizer report.
#include <catch2/catch.hpp>

#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#define XXH_INLINE_ALL // the checksum test hashes independently of the writer
#include <xxhash.h>

#include "effnet/error.hpp"
#include "effnet/safetensors.hpp"

namespace fs = std::filesystem;
using namespace effnet;

namespace {

// A fresh directory per test case, removed afterwards (the two test binaries may run at once).
class TempDir {
public:
    TempDir() {
        std::string pattern = (fs::temp_directory_path() / "effnet_st_XXXXXX").string();
        REQUIRE(mkdtemp(pattern.data()) != nullptr);
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    std::string file(const std::string& name) const { return (path_ / name).string(); }
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), std::streamsize(bytes.size()));
    REQUIRE(out.good());
}

std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string u64_le(uint64_t v) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = char((v >> (8 * i)) & 0xff);
    return s;
}

// A safetensors file made by hand: length prefix, the header text as given, then the data.
std::string craft(const std::string& header, const std::string& data) {
    return u64_le(header.size()) + header + data;
}

template <typename T>
std::string bytes_of(const std::vector<T>& v) {
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Metadata as the writer was given it: the writer adds its data checksum.
std::map<std::string, std::string> without_checksum(std::map<std::string, std::string> metadata) {
    metadata.erase("effnet.checksum");
    return metadata;
}

// Opens path expecting an effnet::Error; returns its message (empty if nothing was thrown).
std::string open_error(const std::string& path) {
    try {
        SafetensorsFile::open(path);
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

// The crafted file must be refused with a message naming the file and every given fragment.
void require_refused(const TempDir& dir, const std::string& header, const std::string& data,
                     const std::vector<std::string>& fragments) {
    const std::string path = dir.file("crafted.safetensors");
    write_bytes(path, craft(header, data));
    const std::string message = open_error(path);
    INFO("header: " << header);
    INFO("message: " << message);
    REQUIRE_FALSE(message.empty());
    CHECK(message.find(path) != std::string::npos);
    for (const std::string& f : fragments) CHECK(message.find(f) != std::string::npos);
}

uint32_t bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// Independent decoders: the value each bit pattern stands for, from the definition.
double half_value(uint16_t h) {
    const int sign = (h >> 15) ? -1 : 1;
    const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 31) return m ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
    if (e == 0) return sign * std::ldexp(double(m), -24);
    return sign * std::ldexp(double(1024 + m), e - 25);
}

double bf16_value(uint16_t b) {
    const int sign = (b >> 15) ? -1 : 1;
    const int e = (b >> 7) & 0xff, m = b & 0x7f;
    if (e == 255) return m ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
    if (e == 0) return sign * std::ldexp(double(m), -133);
    return sign * std::ldexp(double(128 + m), e - 134);
}

std::string golden_path() {
    return std::string(EFFNET_SOURCE_DIR) + "/tests/data/golden/tv_tiny_golden.safetensors";
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Round trips

TEST_CASE("safetensors round trip of all five dtypes, metadata, scalars and empty tensors", "[safetensors]") {
    TempDir dir;
    const std::string path = dir.file("rt.safetensors");

    Tensor w({2, 3});
    for (int i = 0; i < 6; ++i) w.data[i] = 0.1f * float(i) - 0.25f;
    w.data[5] = -0.0f;
    const std::vector<double> f64 = {1.0 / 3.0, -1e300, 4.9e-324, 0.0};
    const std::vector<int64_t> i64 = {std::numeric_limits<int64_t>::min(), -1, 0, 42,
                                      std::numeric_limits<int64_t>::max()};
    const std::vector<uint16_t> f16 = {0x3c00, 0xc000, 0x0001,
                                       0x7bff, 0x7c00, 0x3555};          // 1, -2, 2^-24, 65504, inf, ~1/3
    const std::vector<uint16_t> bf16 = {0x3f80, 0x4049, 0xff80, 0x0001}; // 1, 3.140625, -inf, tiny subnormal

    SafetensorsWriter writer;
    writer.add("w", w);
    writer.add_f64("d", {2, 2}, f64);
    writer.add_i64("i", {5}, i64);
    writer.add_raw("h", DType::F16, {3, 2}, f16.data(), f16.size() * 2);
    writer.add_raw("b", DType::BF16, {4}, bf16.data(), bf16.size() * 2);
    writer.add("scalar", Tensor(Shape{}, 7.5f));
    writer.add("empty", Tensor(Shape{0, 3}));
    writer.add_i64("step", {}, {123});
    writer.set_metadata("format", "pt");
    writer.set_metadata("note", "caf\xc3\xa9 \"quoted\"");
    writer.write(path);

    const SafetensorsFile file = SafetensorsFile::open(path);
    CHECK(file.path() == path);
    CHECK(file.names() == std::vector<std::string>{"b", "d", "empty", "h", "i", "scalar", "step", "w"});
    CHECK(without_checksum(file.metadata()) ==
          std::map<std::string, std::string>{{"format", "pt"}, {"note", "caf\xc3\xa9 \"quoted\""}});
    CHECK(file.has_checksum());
    CHECK(file.contains("w"));
    CHECK_FALSE(file.contains("missing"));

    CHECK(file.info("w").dtype == DType::F32);
    CHECK(file.info("w").shape == Shape{2, 3});
    const Tensor w2 = file.read_f32("w");
    CHECK(w2.shape == w.shape);
    for (int i = 0; i < 6; ++i) CHECK(bits(w2.data[i]) == bits(w.data[i])); // bit-exact, -0 included
    CHECK(file.read_f64("w")[1] == double(w.data[1]));

    CHECK(file.info("d").dtype == DType::F64);
    CHECK(file.read_f64("d") == f64);
    const Tensor d32 = file.read_f32("d");
    CHECK(d32.shape == Shape{2, 2});
    CHECK(d32.data[0] == float(1.0 / 3.0));
    CHECK(d32.data[1] == -INFINITY);
    CHECK(d32.data[2] == 0.0f);

    CHECK(file.info("i").dtype == DType::I64);
    CHECK(file.read_i64("i") == i64);
    CHECK(file.read_i64("step") == std::vector<int64_t>{123});
    CHECK(file.info("step").shape.empty());

    CHECK(file.info("h").dtype == DType::F16);
    const Tensor h = file.read_f32("h");
    CHECK(h.shape == Shape{3, 2});
    CHECK(h.data ==
          std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f, INFINITY, half_to_float(0x3555)});
    CHECK(std::memcmp(file.raw("h"), f16.data(), 12) == 0);
    CHECK(file.read_f64("h")[3] == 65504.0);

    CHECK(file.info("b").dtype == DType::BF16);
    const Tensor b = file.read_f32("b");
    CHECK(b.data == std::vector<float>{1.0f, 3.140625f, -INFINITY, std::ldexp(1.0f, -133)});
    CHECK(file.read_f64("b")[1] == 3.140625);

    const Tensor s = file.read_f32("scalar");
    CHECK(s.shape.empty());
    CHECK(s.data == std::vector<float>{7.5f});

    const Tensor e = file.read_f32("empty");
    CHECK(e.shape == Shape{0, 3});
    CHECK(e.data.empty());
    CHECK(file.info("empty").begin == file.info("empty").end);

    // Wrong-dtype reads and unknown names are errors naming the file and tensor.
    auto message_of = [](const std::function<void()>& f) {
        try {
            f();
        } catch (const Error& err) {
            return std::string(err.what());
        }
        return std::string();
    };
    for (const std::string& m :
         {message_of([&] { file.read_f32("i"); }), message_of([&] { file.read_f64("i"); }),
          message_of([&] { file.read_i64("w"); }), message_of([&] { file.info("nope"); }),
          message_of([&] { file.raw("nope"); }), message_of([&] { file.read_f32("nope"); })}) {
        INFO(m);
        CHECK(m.find(path) != std::string::npos);
    }
    CHECK(message_of([&] { file.read_i64("w"); }).find("'w'") != std::string::npos);
    CHECK(message_of([&] { file.info("nope"); }).find("'nope'") != std::string::npos);
}

TEST_CASE("safetensors writer layout: sorted keys, aligned packed data, atomic replace", "[safetensors]") {
    TempDir dir;
    const std::string path = dir.file("layout.safetensors");
    SafetensorsWriter writer;
    const std::vector<uint16_t> one_half = {0x3c00};
    writer.add_raw("a_half", DType::F16, {1}, one_half.data(), 2); // 2 bytes: would misalign what follows
    writer.add("z_f32", Tensor({3}, 2.0f));
    writer.add_f64("m_f64", {2}, {1.0, 2.0});
    writer.add_i64("b_i64", {1}, {9});
    writer.set_metadata("k", "v");
    write_bytes(path, "old contents");
    writer.write(path); // replaces an existing file

    const std::string bytes = read_bytes(path);
    uint64_t header_size = 0;
    for (int i = 0; i < 8; ++i) header_size |= uint64_t(uint8_t(bytes[i])) << (8 * i);
    CHECK((8 + header_size) % 8 == 0); // data section 8-byte aligned
    const std::string header = bytes.substr(8, header_size);
    CHECK(header.front() == '{');
    CHECK(header.find_last_not_of(' ') == header.find_last_of('}')); // padding is trailing spaces only
    // Keys in sorted order in the text itself.
    const size_t p_meta = header.find("\"__metadata__\""), p_a = header.find("\"a_half\""),
                 p_b = header.find("\"b_i64\""), p_m = header.find("\"m_f64\""),
                 p_z = header.find("\"z_f32\"");
    CHECK(p_meta < p_a);
    CHECK(p_a < p_b);
    CHECK(p_b < p_m);
    CHECK(p_m < p_z);

    // Packed without gaps (strict readers demand it), each tensor aligned to its element size.
    const SafetensorsFile file = SafetensorsFile::open(path);
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const std::string& name : file.names()) {
        const TensorInfo& t = file.info(name);
        CHECK(t.begin % dtype_size(t.dtype) == 0);
        ranges.push_back({t.begin, t.end});
    }
    std::sort(ranges.begin(), ranges.end());
    CHECK(ranges.front().first == 0);
    for (size_t i = 1; i < ranges.size(); ++i) CHECK(ranges[i].first == ranges[i - 1].second);
    CHECK(ranges.back().second == bytes.size() - 8 - header_size);
    CHECK(file.read_f32("a_half").data == std::vector<float>{1.0f});

    // No temporary file left behind.
    int entries = 0;
    for (const auto& entry : fs::directory_iterator(dir.path())) {
        (void)entry;
        ++entries;
    }
    CHECK(entries == 1);
}

TEST_CASE("safetensors writer refuses bad input and reports I/O failure", "[safetensors]") {
    TempDir dir;
    SafetensorsWriter writer;
    writer.add("x", Tensor({2}, 1.0f));
    CHECK_THROWS_WITH(writer.add("x", Tensor({1})), Catch::Contains("'x'") && Catch::Contains("twice"));
    CHECK_THROWS_WITH(writer.add_i64("x", {1}, {1}), Catch::Contains("'x'"));
    CHECK_THROWS_AS(writer.add("__metadata__", Tensor({1})), Error);
    CHECK_THROWS_WITH(writer.add_f64("d", {3}, {1.0, 2.0}), Catch::Contains("'d'"));
    CHECK_THROWS_WITH(writer.add_i64("n", {-1}, {}), Catch::Contains("'n'"));
    const std::vector<uint16_t> two = {0, 0};
    CHECK_THROWS_WITH(writer.add_raw("r", DType::F16, {3}, two.data(), 4), Catch::Contains("'r'"));
    CHECK_THROWS_AS(writer.add_raw("big", DType::F64, {int64_t(1) << 40, int64_t(1) << 40}, two.data(), 4),
                    Error);
    Tensor bad;
    bad.shape = {3};
    bad.data = {1.0f};
    CHECK_THROWS_WITH(writer.add("bad", bad), Catch::Contains("'bad'"));

    const std::string missing_dir = dir.file("no/such/dir/out.safetensors");
    CHECK_THROWS_WITH(writer.write(missing_dir), Catch::Contains(missing_dir));
    // A directory where the file should go: the rename fails, the temporary is removed.
    const std::string occupied = dir.file("occupied");
    fs::create_directory(occupied);
    fs::create_directory(occupied + "/inside");
    CHECK_THROWS_WITH(writer.write(occupied), Catch::Contains(occupied));
    int entries = 0;
    for (const auto& entry : fs::directory_iterator(dir.path())) {
        (void)entry;
        ++entries;
    }
    CHECK(entries == 1);

    // Only metadata, or only empty tensors: a zero-length data section.
    SafetensorsWriter empty_writer;
    empty_writer.set_metadata("only", "metadata");
    empty_writer.add("nothing", Tensor(Shape{0}));
    const std::string empty_path = dir.file("empty.safetensors");
    empty_writer.write(empty_path);
    const SafetensorsFile file = SafetensorsFile::open(empty_path);
    CHECK(file.names() == std::vector<std::string>{"nothing"});
    CHECK(file.read_f32("nothing").data.empty());
    CHECK(file.metadata().at("only") == "metadata");

    SafetensorsWriter nothing;
    nothing.write(dir.file("nothing.safetensors"));
    CHECK(SafetensorsFile::open(dir.file("nothing.safetensors")).names().empty());
}

// ---------------------------------------------------------------------------------------------
// Reading what other writers may produce

TEST_CASE("safetensors reads unaligned data and tolerates gaps", "[safetensors]") {
    TempDir dir;
    const std::string path = dir.file("odd.safetensors");
    // An odd header length puts the data section at an odd address; tensors at odd offsets too.
    const std::vector<double> d = {1.5, -2.25};
    const std::vector<float> f = {3.0f, -0.5f, 1e-3f};
    const std::vector<int64_t> i = {-7};
    std::string data = "X" + bytes_of(d) + "YYY" + bytes_of(f) + bytes_of(i) + "tail";
    std::string header =
        R"({"d":{"dtype":"F64","shape":[2],"data_offsets":[1,17]},)"
        R"("f":{"dtype":"F32","shape":[3],"data_offsets":[20,32]},)"
        R"("i":{"dtype":"I64","shape":[],"data_offsets":[32,40]}, "e":{"dtype":"F32","shape":[0],"data_offsets":[5,5]}})";
    if (header.size() % 2 == 0) header += ' '; // trailing whitespace is valid JSON
    REQUIRE(header.size() % 2 == 1);
    write_bytes(path, craft(header, data));
    const SafetensorsFile file = SafetensorsFile::open(path);
    CHECK(file.read_f64("d") == d);
    CHECK(file.read_f32("d").data == std::vector<float>{1.5f, -2.25f});
    CHECK(file.read_f32("f").data == f);
    CHECK(file.read_i64("i") == i);
    CHECK(file.read_f32("e").data.empty());
    CHECK(file.metadata().empty());
}

TEST_CASE("safetensors F64 -> F32 rounds to nearest even, overflow to Inf", "[safetensors]") {
    TempDir dir;
    const std::string path = dir.file("round.safetensors");
    const float flt_max = std::numeric_limits<float>::max();
    const std::vector<double> in = {
        1.0 + std::ldexp(1.0, -24),                        // tie: to 1 (even)
        1.0 + 3 * std::ldexp(1.0, -24),                    // tie: to 1 + 2^-22 (even)
        1.0 + std::ldexp(1.0, -24) + std::ldexp(1.0, -40), // just above the tie: up
        std::ldexp(2.0 - std::ldexp(1.0, -24), 127),       // midpoint FLT_MAX..2^128: Inf (even)
        std::ldexp(2.0 - std::ldexp(1.0, -24), 127) - std::ldexp(1.0, 80), // below it: FLT_MAX
        -1e300,                                                            // far out: -Inf
        1e-50,                                                             // below the float subnormals: 0
        std::ldexp(3.0, -150), // 1.5 x smallest subnormal: tie to 2^-148
        std::numeric_limits<double>::quiet_NaN(),
    };
    SafetensorsWriter w;
    w.add_f64("x", {int64_t(in.size())}, in);
    w.write(path);
    const Tensor t = SafetensorsFile::open(path).read_f32("x");
    CHECK(t.data[0] == 1.0f);
    CHECK(t.data[1] == 1.0f + std::ldexp(1.0f, -22));
    CHECK(t.data[2] == 1.0f + std::ldexp(1.0f, -23));
    CHECK(t.data[3] == INFINITY);
    CHECK(t.data[4] == flt_max);
    CHECK(t.data[5] == -INFINITY);
    CHECK(t.data[6] == 0.0f);
    CHECK(t.data[7] == std::ldexp(1.0f, -148));
    CHECK(std::isnan(t.data[8]));
}

TEST_CASE("safetensors reads the shipped torchvision golden file", "[safetensors]") {
    const SafetensorsFile file = SafetensorsFile::open(golden_path());
    CHECK(file.metadata().at("source") == "torchvision");
    CHECK(file.metadata().at("bn_eps") == "1e-05");

    const TensorInfo& input = file.info("input");
    CHECK(input.dtype == DType::F64);
    CHECK(input.shape == Shape{2, 3, 64, 72});
    const std::vector<double> x = file.read_f64("input");
    REQUIRE(x.size() == 2u * 3 * 64 * 72);
    // Values printed by Python from the same file (float repr round-trips exactly).
    CHECK(x[0] == -0.29746297001838684);
    CHECK(x.back() == 0.46682825684547424);
    double sum = 0;
    for (double v : x) sum += v;
    CHECK(sum == Approx(-201.84077842257102).epsilon(1e-12)); // summation order differs from numpy
    const Tensor x32 = file.read_f32("input");
    for (size_t i = 0; i < x.size(); ++i) REQUIRE(x32.data[i] == float(x[i]));

    int params = 0;
    for (const std::string& name : file.names()) {
        if (name.rfind("param.", 0) != 0) continue;
        ++params;
        const TensorInfo& t = file.info(name);
        if (name.size() > 20 && name.substr(name.size() - 20) == ".num_batches_tracked") {
            CHECK(t.dtype == DType::I64);
            CHECK(t.shape.empty());
            CHECK(file.read_i64(name) == std::vector<int64_t>{0});
        } else {
            CHECK(t.dtype == DType::F32);
        }
    }
    CHECK(params == 228);
    CHECK(file.read_i64("after_train.features.0.1.num_batches_tracked") == std::vector<int64_t>{1});
    CHECK(file.info("train.loss").shape == Shape{1});
    CHECK(file.read_f64("train.loss")[0] == Approx(3.56706707).epsilon(1e-8));
}

TEST_CASE("safetensors rewrites a real file with identical tensors", "[safetensors]") {
    TempDir dir;
    const SafetensorsFile golden = SafetensorsFile::open(golden_path());
    SafetensorsWriter writer;
    for (const std::string& name : golden.names()) {
        const TensorInfo& t = golden.info(name);
        writer.add_raw(name, t.dtype, t.shape, golden.raw(name), t.end - t.begin);
    }
    for (const auto& [k, v] : golden.metadata()) writer.set_metadata(k, v);
    const std::string path = dir.file("copy.safetensors");
    writer.write(path);
    const SafetensorsFile copy = SafetensorsFile::open(path);
    CHECK(copy.names() == golden.names());
    CHECK(without_checksum(copy.metadata()) == without_checksum(golden.metadata()));
    for (const std::string& name : golden.names()) {
        const TensorInfo& a = golden.info(name);
        const TensorInfo& b = copy.info(name);
        REQUIRE(a.dtype == b.dtype);
        REQUIRE(a.shape == b.shape);
        REQUIRE(std::memcmp(golden.raw(name), copy.raw(name), a.end - a.begin) == 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed files

TEST_CASE("safetensors refuses missing, short and mis-sized files", "[safetensors]") {
    TempDir dir;
    const std::string missing = dir.file("does_not_exist.safetensors");
    CHECK_THROWS_WITH(SafetensorsFile::open(missing), Catch::Contains(missing));
    CHECK_THROWS_WITH(SafetensorsFile::open(dir.path().string()), Catch::Contains(dir.path().string()));

    const std::string path = dir.file("short.safetensors");
    for (size_t n : {0, 1, 7}) {
        write_bytes(path, std::string(n, '\x01'));
        const std::string m = open_error(path);
        INFO(m);
        CHECK(m.find(path) != std::string::npos);
        CHECK(m.find("shorter than") != std::string::npos);
    }
    // Header length past the end of the file.
    write_bytes(path, u64_le(100) + "{}");
    CHECK(open_error(path).find("past the end") != std::string::npos);
    // Absurd lengths, including ones that would wrap 8 + N.
    for (uint64_t n : {uint64_t(100000001), uint64_t(1) << 40, ~uint64_t(0), ~uint64_t(0) - 7}) {
        write_bytes(path, u64_le(n) + "{}");
        const std::string m = open_error(path);
        INFO(m);
        CHECK(m.find(path) != std::string::npos);
        CHECK(m.find("past the limit of 100000000 bytes") != std::string::npos);
    }
    // Zero-length header: not JSON.
    write_bytes(path, u64_le(0));
    CHECK(open_error(path).find("does not start with '{'") != std::string::npos);
}

TEST_CASE("safetensors refuses malformed headers, naming file and tensor", "[safetensors]") {
    TempDir dir;
    const std::string f8 = bytes_of(std::vector<float>{1, 2}); // 8 bytes of data
    auto entry = [](const std::string& body) { return R"({"layer.w":)" + body + "}"; };

    require_refused(dir, "{not json", f8, {"does not end with '}'"});
    require_refused(dir, "{\"a\":1,}", f8, {"not valid JSON"});
    require_refused(dir, std::string("{\"a\"\0:1}", 8), f8, {"not valid JSON"});
    require_refused(dir, "{\"\xff\xfe\":{}}", f8, {"not valid JSON"}); // invalid UTF-8
    require_refused(dir, "[1, 2]", f8, {"does not start with '{'"});
    require_refused(dir, "\"str\"", f8, {"does not start with '{'"});

    require_refused(dir, entry("5"), f8, {"'layer.w'", "not a JSON object"});
    require_refused(dir, entry("[]"), f8, {"'layer.w'", "not a JSON object"});
    require_refused(dir, entry(R"({"shape":[2],"data_offsets":[0,8]})"), f8, {"'layer.w'", "dtype"});
    require_refused(dir, entry(R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "dtype"});
    require_refused(dir, entry(R"({"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "unknown dtype", "F8_E4M3"});
    require_refused(dir, entry(R"({"dtype":"f32","shape":[2],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "unknown dtype"});
    require_refused(dir, entry(R"({"dtype":"F32","data_offsets":[0,8]})"), f8, {"'layer.w'", "shape"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "shape"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "negative"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":[2.0],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "not an integer"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":[1.5],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "not an integer"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "not an integer"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":[null],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "not an integer"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'"});
    // Products that overflow int64 / uint64, with and without a later zero.
    require_refused(dir, entry(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "too many"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":[9223372036854775807,2,0],"data_offsets":[0,0]})"),
                    f8, {"'layer.w'", "too many"});
    require_refused(dir, entry(R"({"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "too many"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'"});

    require_refused(dir, entry(R"({"dtype":"F32","shape":[2]})"), f8, {"'layer.w'", "data_offsets"});
    for (const char* offsets : {"[0]", "[0,8,8]", "[\"0\",8]", "[-1,8]", "[0,8.5]", "8", "[0,null]", "{}"})
        require_refused(dir,
                        entry(std::string(R"({"dtype":"F32","shape":[2],"data_offsets":)") + offsets + "}"),
                        f8, {"'layer.w'", "data_offsets"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":[2],"data_offsets":[8,0]})"), f8,
                    {"'layer.w'", "out of order"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":[2],"data_offsets":[4,12]})"), f8,
                    {"'layer.w'", "past the data section"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]})"), f8,
                    {"'layer.w'", "past the data section"});
    // Element count x dtype size against the byte range.
    require_refused(dir, entry(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "needs 12 bytes"});
    require_refused(dir, entry(R"({"dtype":"F64","shape":[2],"data_offsets":[0,8]})"), f8,
                    {"'layer.w'", "needs 16 bytes"});
    require_refused(dir, entry(R"({"dtype":"F16","shape":[],"data_offsets":[0,4]})"), f8,
                    {"'layer.w'", "needs 2 bytes"});
    require_refused(dir, entry(R"({"dtype":"F32","shape":[0],"data_offsets":[0,4]})"), f8,
                    {"'layer.w'", "needs 0 bytes"});

    // Two tensors sharing bytes.
    require_refused(dir,
                    R"({"first":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                    R"("second":{"dtype":"F16","shape":[2],"data_offsets":[2,6]}})",
                    f8, {"'first'", "'second'", "overlap"});
    require_refused(dir,
                    R"({"outer":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
                    R"("inner":{"dtype":"F16","shape":[1],"data_offsets":[4,6]}})",
                    f8, {"'outer'", "'inner'", "overlap"});
    require_refused(dir,
                    R"({"same1":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                    R"("same2":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                    f8, {"'same1'", "'same2'", "overlap"});
    // The same name twice.
    require_refused(dir,
                    R"({"dup":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                    R"("dup":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                    f8, {"'dup'", "twice"});

    // __metadata__ must map strings to strings.
    const std::string ok_tensor = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    require_refused(dir, R"({"__metadata__":[],)" + ok_tensor + "}", f8, {"__metadata__"});
    require_refused(dir, R"({"__metadata__":"x",)" + ok_tensor + "}", f8, {"__metadata__"});
    require_refused(dir, R"({"__metadata__":{"a":"b","epoch":3},)" + ok_tensor + "}", f8,
                    {"__metadata__", "'epoch'"});
    require_refused(dir, R"({"__metadata__":{"nested":{"x":"y"}},)" + ok_tensor + "}", f8,
                    {"__metadata__", "'nested'"});

    // And the well-formed versions of the above open, so the refusals are for the stated reason.
    const std::string path = dir.file("fine.safetensors");
    write_bytes(path, craft(R"({"__metadata__":{"a":"b"},)" + ok_tensor + "}   ", f8));
    const SafetensorsFile fine = SafetensorsFile::open(path);
    CHECK(fine.read_f32("t").data == std::vector<float>{1, 2});
    CHECK(fine.metadata().at("a") == "b");
    write_bytes(path, craft(entry(R"({"dtype":"F32","shape":[0,4294967296],"data_offsets":[8,8]})"), f8));
    CHECK(SafetensorsFile::open(path).read_f32("layer.w").data.empty());
}

TEST_CASE("safetensors truncated copies of a real file are refused, never crash", "[safetensors]") {
    TempDir dir;
    const std::string whole = read_bytes(golden_path());
    uint64_t header_size = 0;
    for (int i = 0; i < 8; ++i) header_size |= uint64_t(uint8_t(whole[i])) << (8 * i);
    REQUIRE(8 + header_size < whole.size());

    std::vector<size_t> cuts;
    for (size_t c = 0; c <= 24; ++c) cuts.push_back(c);
    for (size_t c = 25; c < 8 + header_size + 16; c += 397) cuts.push_back(c); // through the header
    for (size_t c = 8 + header_size - 2; c <= 8 + header_size + 2; ++c) cuts.push_back(c);
    for (int k = 1; k <= 8; ++k) cuts.push_back(8 + header_size + (whole.size() - 8 - header_size) * k / 9);
    cuts.push_back(whole.size() - 1);

    const std::string path = dir.file("tv_tiny_cut.safetensors");
    for (size_t cut : cuts) {
        write_bytes(path, whole.substr(0, cut));
        const std::string m = open_error(path);
        INFO("cut at " << cut << ": " << m);
        // The golden file's tensors fill its data section, so every cut loses bytes of one.
        REQUIRE_FALSE(m.empty());
        CHECK(m.find(path) != std::string::npos);
    }
}

TEST_CASE("safetensors corrupted header bytes give an error or a valid file, never a crash",
          "[safetensors]") {
    TempDir dir;
    const std::string good_path = dir.file("good.safetensors");
    SafetensorsWriter writer;
    writer.add("a", Tensor({2, 2}, 1.0f));
    writer.add_f64("b", {3}, {1, 2, 3});
    writer.add_i64("c", {}, {5});
    const std::vector<uint16_t> h = {0x3c00};
    writer.add_raw("d", DType::BF16, {1}, h.data(), 2);
    writer.set_metadata("m", "v");
    writer.write(good_path);
    const std::string good = read_bytes(good_path);

    // One byte at a time, patched in place (rewriting the whole file each time is slow on a busy disk).
    const std::string path = dir.file("mutant.safetensors");
    write_bytes(path, good);
    std::fstream patch(path, std::ios::binary | std::ios::in | std::ios::out);
    REQUIRE(patch.good());
    auto put = [&](size_t pos, char c) {
        patch.seekp(std::streamoff(pos));
        patch.put(c);
        patch.flush();
        REQUIRE(patch.good());
    };
    int opened = 0, refused = 0;
    const char replacements[] = {'"', '{', '}', '[', ']', ',', ':', '0', '9', '-', 'e', '\x00', '\xff'};
    for (size_t pos = 0; pos < good.size(); ++pos) {
        for (char r : replacements) {
            if (good[pos] == r) continue;
            put(pos, r);
            try {
                const SafetensorsFile f = SafetensorsFile::open(path);
                for (const std::string& name : f.names()) {
                    if (f.info(name).dtype == DType::I64)
                        f.read_i64(name);
                    else
                        f.read_f64(name);
                }
                ++opened;
            } catch (const Error& e) {
                ++refused;
                INFO("byte " << pos << " -> " << int(r));
                REQUIRE(std::string(e.what()).find(path) != std::string::npos);
            }
        }
        put(pos, good[pos]);
    }
    CHECK(refused > 0);
    CHECK(opened > 0); // data bytes, padding and some digits change nothing structural
}

// ---------------------------------------------------------------------------------------------
// Hostile headers (issue 15): bounded nesting, bounded quotes, nothing but JSON in the header

TEST_CASE("safetensors refuses deeply nested JSON without recursing, and quotes values briefly",
          "[safetensors][hostile]") {
    TempDir dir;
    const std::string f8 = bytes_of(std::vector<float>{1, 2});
    // 100,000 levels in 'shape' (a 200 KB file) once overflowed the stack in the JSON printer
    // that quoted the value in the error message (SIGSEGV).
    for (const char* field : {"shape", "data_offsets"}) {
        const std::string nested = std::string(100000, '[') + std::string(100000, ']');
        const std::string body =
            std::string(R"({"w":{"dtype":"F32",)") +
            (std::string(field) == "shape" ? R"("shape":)" + nested + R"(,"data_offsets":[0,8]}})"
                                           : R"("shape":[2],"data_offsets":)" + nested + "}}");
        const std::string path = dir.file("nested.safetensors");
        write_bytes(path, craft(body, f8));
        const std::string m = open_error(path);
        INFO(m);
        CHECK(m.find("deeper than 16 levels") != std::string::npos);
        CHECK(m.size() < 300);
    }
    // Nesting within the limit, but wrong: the message quotes at most 80 characters of it.
    const std::string shallow = std::string(12, '[') + std::string(12, ']');
    const std::string long_string = "\"" + std::string(100000, 'x') + "\"";
    for (const std::string& bad : {shallow, long_string}) {
        const std::string path = dir.file("long.safetensors");
        write_bytes(path,
                    craft(R"({"w":{"dtype":"F32","shape":[)" + bad + R"(],"data_offsets":[0,8]}})", f8));
        const std::string m = open_error(path);
        INFO(m);
        CHECK(m.find("not an integer") != std::string::npos);
        CHECK(m.size() < 400);
    }
    const std::string long_name = std::string(100000, 'n');
    require_refused(dir, "{\"" + long_name + R"(":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", f8,
                    {"needs 12 bytes", "... (100000 bytes)"});
    const std::string path = dir.file("long_name.safetensors");
    write_bytes(path,
                craft("{\"" + long_name + R"(":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", f8));
    CHECK(open_error(path).size() < 400);
}

TEST_CASE("safetensors refuses a byte-order mark, a NUL or other bytes around the header JSON",
          "[safetensors][hostile]") {
    TempDir dir;
    const std::string f8 = bytes_of(std::vector<float>{1, 2});
    const std::string ok = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    require_refused(dir, "\xEF\xBB\xBF" + ok, f8, {"byte-order mark"});
    require_refused(dir, ok + std::string(1, '\0'), f8, {"does not end with '}'", "byte 0"});
    require_refused(dir, ok + "  " + std::string(1, '\0') + " ", f8, {"does not end with '}'"});
    require_refused(dir, ok + "\n", f8, {"does not end with '}'"});
    require_refused(dir, " " + ok, f8, {"does not start with '{'"});
    // Trailing spaces are the format's padding.
    const std::string path = dir.file("padded.safetensors");
    write_bytes(path, craft(ok + "       ", f8));
    CHECK(SafetensorsFile::open(path).read_f32("t").data == std::vector<float>{1, 2});
}

TEST_CASE("safetensors data checksum: written by effnet, verified on open, optional for others",
          "[safetensors][hostile]") {
    TempDir dir;
    const std::string path = dir.file("sum.safetensors");
    SafetensorsWriter writer;
    writer.add("a", Tensor({3}, 0.25f));
    writer.add_i64("b", {2}, {7, -7});
    writer.set_metadata("effnet.checksum", "xxh3_64:0000000000000000"); // a stale copied value
    writer.write(path);
    const std::string bytes = read_bytes(path);
    uint64_t header_size = 0;
    for (int i = 0; i < 8; ++i) header_size |= uint64_t(uint8_t(bytes[i])) << (8 * i);
    const std::string data = bytes.substr(8 + header_size);
    REQUIRE(data.size() == 3 * 4 + 2 * 8);
    // Independently: the xxHash library over the data section as it lies in the file.
    char expected[32];
    std::snprintf(expected, sizeof expected, "xxh3_64:%016llx",
                  static_cast<unsigned long long>(XXH3_64bits(data.data(), data.size())));
    const SafetensorsFile file = SafetensorsFile::open(path);
    CHECK(file.has_checksum());
    CHECK(file.metadata().at("effnet.checksum") == expected);

    // Every single flipped data bit is caught (a flipped byte once resumed with exit 0).
    for (size_t pos = 8 + header_size; pos < bytes.size(); ++pos)
        for (int bit : {0, 7}) {
            std::string damaged = bytes;
            damaged[pos] = char(damaged[pos] ^ (1 << bit));
            write_bytes(path, damaged);
            const std::string m = open_error(path);
            INFO("byte " << pos << " bit " << bit << ": " << m);
            CHECK(m.find("does not match its checksum") != std::string::npos);
        }
    // A malformed checksum value is refused; a file without one loads.
    const std::string t = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
    const std::string f8 = bytes_of(std::vector<float>{1, 2});
    for (const char* bad : {"xxh3_64:123", "crc32c:0000000000000000", "xxh3_64:ABCDEF0123456789", ""})
        require_refused(dir,
                        R"({"__metadata__":{"effnet.checksum":")" + std::string(bad) + R"("},)" + t + "}", f8,
                        {"effnet.checksum", "16 lowercase hex digits"});
    write_bytes(path, craft("{" + t + "}", f8));
    const SafetensorsFile plain = SafetensorsFile::open(path);
    CHECK_FALSE(plain.has_checksum());
    CHECK(plain.read_f32("t").data == std::vector<float>{1, 2});
}

// ---------------------------------------------------------------------------------------------
// half / bf16

TEST_CASE("half_to_float matches the definition for all 65536 patterns", "[safetensors][half]") {
    for (uint32_t h = 0; h < 65536; ++h) {
        const float got = half_to_float(uint16_t(h));
        const double want = half_value(uint16_t(h));
        if (std::isnan(want)) {
            REQUIRE(std::isnan(got));
            REQUIRE(std::signbit(got) == bool(h & 0x8000));
            // Round trip keeps it NaN with the same sign.
            const uint16_t back = float_to_half(got);
            REQUIRE((back & 0x7c00) == 0x7c00);
            REQUIRE((back & 0x3ff) != 0);
            REQUIRE((back & 0x8000) == (h & 0x8000));
            continue;
        }
        INFO("half 0x" << std::hex << h);
        REQUIRE(double(got) == want);
        REQUIRE(std::signbit(got) == bool(h & 0x8000)); // -0 stays -0
        REQUIRE(float_to_half(got) == h);               // exact values round trip exactly
    }
}

TEST_CASE("float_to_half rounds to nearest, ties to even, at every half boundary", "[safetensors][half]") {
    // Between consecutive positive halves lo, hi: the midpoint (exact in float) goes to the even
    // one, one float ulp either side goes to the nearer one. hi past 65504 is 2^16 (-> Inf).
    for (uint32_t lo = 0; lo < 0x7c00; ++lo) {
        const uint32_t hi = lo + 1;
        const double lo_value = half_value(uint16_t(lo));
        const double hi_value = hi == 0x7c00 ? 65536.0 : half_value(uint16_t(hi));
        const float mid = float((lo_value + hi_value) / 2);
        REQUIRE(double(mid) == (lo_value + hi_value) / 2);
        const uint16_t even = (lo & 1) ? uint16_t(hi) : uint16_t(lo);
        INFO("lo 0x" << std::hex << lo);
        REQUIRE(float_to_half(mid) == even);
        REQUIRE(float_to_half(-mid) == (even | 0x8000));
        REQUIRE(float_to_half(std::nextafter(mid, 0.0f)) == lo);
        REQUIRE(float_to_half(std::nextafter(mid, INFINITY)) == hi);
    }
    const float nan = std::numeric_limits<float>::quiet_NaN();
    CHECK(float_to_half(1.0f) == 0x3c00);
    CHECK(float_to_half(-2.0f) == 0xc000);
    CHECK(float_to_half(0.1f) == 0x2e66);
    CHECK(float_to_half(1.0f / 3.0f) == 0x3555);
    CHECK(float_to_half(65504.0f) == 0x7bff);
    CHECK(float_to_half(65519.99f) == 0x7bff);
    CHECK(float_to_half(65520.0f) == 0x7c00);
    CHECK(float_to_half(1e6f) == 0x7c00);
    CHECK(float_to_half(-1e30f) == 0xfc00);
    CHECK(float_to_half(INFINITY) == 0x7c00);
    CHECK(float_to_half(-INFINITY) == 0xfc00);
    CHECK(float_to_half(std::ldexp(1.0f, -24)) == 0x0001);
    CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0x0000); // tie -> even 0
    CHECK(float_to_half(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001);
    CHECK(float_to_half(std::ldexp(1.0f, -30)) == 0x0000);
    CHECK(float_to_half(std::numeric_limits<float>::denorm_min()) == 0x0000);
    CHECK(float_to_half(-std::numeric_limits<float>::denorm_min()) == 0x8000);
    CHECK(float_to_half(std::ldexp(1023.5f, -24)) ==
          0x0400); // largest subnormal + half ulp -> smallest normal
    CHECK(float_to_half(-0.0f) == 0x8000);
    const uint16_t n = float_to_half(nan);
    CHECK((n & 0x7c00) == 0x7c00);
    CHECK((n & 0x3ff) != 0);
    // A NaN whose payload sits only in the low float bits must not become Inf.
    uint32_t low_payload = 0x7f800001;
    float low_nan;
    std::memcpy(&low_nan, &low_payload, 4);
    CHECK((float_to_half(low_nan) & 0x3ff) != 0);
}

TEST_CASE("bf16 conversions: all patterns, ties to even, specials", "[safetensors][half]") {
    for (uint32_t b = 0; b < 65536; ++b) {
        const float got = bf16_to_float(uint16_t(b));
        const double want = bf16_value(uint16_t(b));
        INFO("bf16 0x" << std::hex << b);
        if (std::isnan(want)) {
            REQUIRE(std::isnan(got));
            REQUIRE(std::isnan(bf16_to_float(float_to_bf16(got))));
            continue;
        }
        REQUIRE(double(got) == want);
        REQUIRE(float_to_bf16(got) == b);
    }
    // Midpoints between consecutive positive finite bf16 values (exact in float).
    for (uint32_t lo = 0; lo < 0x7f7f; ++lo) {
        const float lo_value = bf16_to_float(uint16_t(lo)), hi_value = bf16_to_float(uint16_t(lo + 1));
        const float mid = float((double(lo_value) + double(hi_value)) / 2);
        const uint16_t even = (lo & 1) ? uint16_t(lo + 1) : uint16_t(lo);
        INFO("lo 0x" << std::hex << lo);
        REQUIRE(float_to_bf16(mid) == even);
        REQUIRE(float_to_bf16(std::nextafter(mid, 0.0f)) == lo);
        REQUIRE(float_to_bf16(std::nextafter(mid, INFINITY)) == lo + 1);
    }
    CHECK(float_to_bf16(1.0f) == 0x3f80);
    CHECK(float_to_bf16(3.0f) == 0x4040);
    CHECK(float_to_bf16(-0.0f) == 0x8000);
    CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80); // rounds past the largest bf16
    CHECK(float_to_bf16(-INFINITY) == 0xff80);
    uint32_t low_payload = 0x7f800001;
    float low_nan;
    std::memcpy(&low_nan, &low_payload, 4);
    CHECK(std::isnan(bf16_to_float(float_to_bf16(low_nan))));
}
