// Hostile images and extreme shapes (issue 15): inputs tests/fuzz/fuzz_image found crashing
// or misdecoding, each refused with a clear error now, and preprocessing of valid images with
// extreme aspect ratios, compared with Pillow's torchvision transform exactly.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "effnet/error.hpp"
#include "effnet/image.hpp"
#include "effnet/limits.hpp"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb/stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace fs = std::filesystem;
using effnet::Image;

namespace {

// Smooth ramps with hard edges every 5 pixels: where resampling lobes over- and undershoot,
// so that any difference in rounding or pass order shows.
Image test_image(int w, int h) {
    Image img{w, h, std::vector<uint8_t>(size_t(w) * h * 3)};
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            uint8_t* p = &img.rgb[(size_t(y) * w + x) * 3];
            const bool edge = (x / 5 + y / 5) % 2 == 0;
            p[0] = uint8_t((x * 7 + y * 3) & 0xFF);
            p[1] = edge ? 250 : 5;
            p[2] = uint8_t((x * y + 3 * x) & 0xFF);
        }
    return img;
}

void append(std::vector<uint8_t>* out, const void* data, int size) {
    const auto* p = static_cast<const uint8_t*>(data);
    out->insert(out->end(), p, p + size);
}

std::vector<uint8_t> jpeg_bytes(int w, int h) {
    const Image img = test_image(w, h);
    std::vector<uint8_t> out;
    stbi_write_jpg_to_func(
        [](void* ctx, void* data, int size) { append(static_cast<std::vector<uint8_t>*>(ctx), data, size); },
        &out, w, h, 3, img.rgb.data(), 90);
    return out;
}

std::string decode_error(const std::vector<uint8_t>& bytes, const std::string& name) {
    try {
        effnet::decode_image(bytes.data(), bytes.size(), name);
    } catch (const effnet::Error& e) {
        return e.what();
    }
    return "";
}

struct TempDir {
    fs::path path = fs::temp_directory_path() / ("effnet_test_image_hostile_" + std::to_string(::getpid()));
    TempDir() { fs::create_directories(path); }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

// torchvision's Resize(resize) + CenterCrop(crop) with Pillow, as uint8 [crop, crop, 3]; empty
// when python3 with Pillow is not there.
std::vector<uint8_t> pillow_preprocess(const Image& img, int resize, int crop,
                                       const std::string& interpolation, const TempDir& dir) {
    const std::string png = (dir.path / "in.png").string(), raw = (dir.path / "out.raw").string(),
                      script = (dir.path / "ref.py").string();
    REQUIRE(stbi_write_png(png.c_str(), img.width, img.height, 3, img.rgb.data(), img.width * 3));
    std::ofstream(script) << R"(import sys
from PIL import Image
import numpy as np
src, dst, size, crop, interp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
img = Image.open(src).convert("RGB")
w, h = img.size
short, long = (w, h) if w <= h else (h, w)
if short != size:
    new_long = int(size * long / short)
    img = img.resize((size, new_long) if w <= h else (new_long, size),
                     Image.BICUBIC if interp == "bicubic" else Image.BILINEAR)
a = np.asarray(img)
h, w = a.shape[:2]
if crop > w or crop > h:
    pl, pt = ((crop - w) // 2 if crop > w else 0), ((crop - h) // 2 if crop > h else 0)
    pr, pb = ((crop - w + 1) // 2 if crop > w else 0), ((crop - h + 1) // 2 if crop > h else 0)
    a = np.pad(a, ((pt, pb), (pl, pr), (0, 0)))
    h, w = a.shape[:2]
top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
open(dst, "wb").write(np.ascontiguousarray(a[top:top + crop, left:left + crop]).tobytes())
)";
    const std::string cmd = "python3 " + script + " " + png + " " + raw + " " + std::to_string(resize) + " " +
                            std::to_string(crop) + " " + interpolation + " 2>/dev/null";
    if (std::system(cmd.c_str()) != 0) return {};
    std::ifstream f(raw, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

} // namespace

// stb_image 2.27 writes past its Huffman arrays for a DHT table whose 16 counts sum past 256
// (fuzz_image: UBSan index 257 out of bounds in stbi__build_huffman). Before the fix this
// decoded (or not) with memory corrupted; now it is refused before stb sees it.
TEST_CASE("image hostile: a JPEG Huffman table with more than 256 codes is refused", "[image][hostile]") {
    std::vector<uint8_t> jpg = jpeg_bytes(16, 16);
    REQUIRE_NOTHROW(effnet::decode_image(jpg.data(), jpg.size(), "ok.jpg"));
    size_t dht = 0;
    for (size_t i = 2; i + 1 < jpg.size(); ++i)
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xC4) {
            dht = i;
            break;
        }
    REQUIRE(dht != 0);
    // After FF C4, length (2 bytes), class/id (1 byte): the 16 code counts.
    for (int k = 0; k < 16; ++k) jpg[dht + 5 + k] = 0x20; // 512 codes
    const std::string err = decode_error(jpg, "bad.jpg");
    CHECK(err.find("bad.jpg") != std::string::npos);
    CHECK(err.find("Huffman table with 512 codes") != std::string::npos);
}

// stb takes any run of 0xFF fill bytes before D8 as a JPEG start; effnet asked for FF D8 FF, so
// such a file named .tga went to stb unchecked (fuzz_image). A truncated one was then decoded
// with the missing part filled in; now it gets the JPEG checks whatever its name.
TEST_CASE("image hostile: a JPEG behind fill bytes gets the JPEG checks", "[image][hostile]") {
    std::vector<uint8_t> jpg = jpeg_bytes(16, 16);
    jpg.insert(jpg.begin(), {0xFF, 0xFF});
    const Image img = effnet::decode_image(jpg.data(), jpg.size(), "fill.tga");
    CHECK((img.width == 16 && img.height == 16));
    jpg.resize(jpg.size() / 2);
    const std::string err = decode_error(jpg, "fill.tga");
    CHECK(err.find("truncated JPEG") != std::string::npos);
}

// A BMP header of 2^31 - 1 x 2^31 - 1 at 32 bits overflowed int64 in the truncation check
// (fuzz_image: UBSan signed overflow; the effnet_tests build has no UBSan, so this case shows the
// failure only there, and in tests/fuzz's regression run). The error names the size limit.
TEST_CASE("image hostile: a BMP header with huge sides is refused without overflow", "[image][hostile]") {
    std::vector<uint8_t> bmp(54 + 16, 0);
    auto le32 = [&](size_t at, uint32_t v) {
        for (int i = 0; i < 4; ++i) bmp[at + i] = uint8_t(v >> (8 * i));
    };
    bmp[0] = 'B';
    bmp[1] = 'M';
    le32(10, 54);
    le32(14, 40);
    le32(18, 0x7FFFFFFF);
    le32(22, 0x7FFFFFFF);
    bmp[26] = 1;  // planes
    bmp[28] = 32; // bits per pixel
    const std::string err = decode_error(bmp, "huge.bmp");
    CHECK(err.find("image too large") != std::string::npos);
}

// Issue 15 item 10: a valid 10000x10 image was refused at the resize step ("output size
// 256000x256 out of range"). torchvision resizes it to 256000x256 and crops 224x224; effnet now
// computes only the cropped window, with Pillow's arithmetic and pass order, byte for byte.
TEST_CASE("preprocess: extreme aspect ratios match Pillow exactly (only the crop is computed)",
          "[image][hostile]") {
    TempDir dir;
    struct Case {
        int w, h, resize, crop;
        const char* interpolation;
    };
    // Wide and tall (upscaled 25.6x along the long side), and shapes on both sides of Pillow
    // 13's pass-order rule (300x2000 -> 256x1706 runs the vertical pass first).
    const Case cases[] = {{10000, 10, 256, 224, "bilinear"},
                          {10, 10000, 256, 224, "bicubic"},
                          {300, 2000, 256, 224, "bicubic"},
                          {2000, 300, 256, 224, "bilinear"},
                          {4000, 7, 20, 24, "bicubic"}};
    for (const Case& c : cases) {
        INFO(c.w << "x" << c.h << " resize " << c.resize << " crop " << c.crop << " " << c.interpolation);
        const Image img = test_image(c.w, c.h);
        effnet::Preprocess p;
        p.resize = c.resize;
        p.crop = c.crop;
        p.interpolation = c.interpolation;
        std::vector<float> ours(size_t(3) * c.crop * c.crop);
        effnet::preprocess_image_unnormalized(img, p, ours.data());
        const std::vector<uint8_t> ref = pillow_preprocess(img, c.resize, c.crop, c.interpolation, dir);
        if (ref.empty()) {
            WARN("python3 with Pillow and numpy not available: comparison skipped");
            return;
        }
        REQUIRE(ref.size() == size_t(c.crop) * c.crop * 3);
        const size_t plane = size_t(c.crop) * c.crop;
        int differing = 0;
        for (size_t i = 0; i < plane; ++i)
            for (int ch = 0; ch < 3; ++ch)
                if (ours[ch * plane + i] != float(ref[i * 3 + ch]) / 255.0f) ++differing;
        CHECK(differing == 0);
    }
}

// Preprocessing's side limit is limits::kMaxPreprocessSide (was a literal 16384), and the error
// names it.
TEST_CASE("preprocess: resize and crop are bounded by limits::kMaxPreprocessSide", "[image][hostile]") {
    const Image img = test_image(8, 8);
    std::vector<float> out(3 * 4 * 4);
    effnet::Preprocess p;
    p.resize = effnet::limits::kMaxPreprocessSide + 1;
    p.crop = 4;
    try {
        effnet::preprocess_image(img, p, out.data());
        FAIL("resize past the limit accepted");
    } catch (const effnet::Error& e) {
        CHECK(std::string(e.what()).find(std::to_string(effnet::limits::kMaxPreprocessSide)) !=
              std::string::npos);
        CHECK(std::string(e.what()).find("kMaxPreprocessSide") != std::string::npos);
    }
    p.resize = 4;
    p.crop = effnet::limits::kMaxPreprocessSide + 1;
    CHECK_THROWS_AS(effnet::preprocess_image(img, p, out.data()), effnet::Error);
}

// A scan whose Huffman table was never defined (the DHT segments dropped): stb_image 2.27
// decoded with whatever memory the table slots held (fuzz_image: UBSan index 18 past stb's
// maxcode table), so effnet refused such files. JPEG is libjpeg-turbo's now, which (as Pillow,
// for Motion JPEG frames) falls back to the standard tables of the JPEG spec, the ones
// stb_image_write uses: the stream decodes to the same pixels as with its DHT segments.
TEST_CASE("image hostile: a JPEG without Huffman tables decodes with the standard ones", "[image][hostile]") {
    const std::vector<uint8_t> jpg = jpeg_bytes(16, 16);
    std::vector<uint8_t> no_dht(jpg.begin(), jpg.begin() + 2);
    size_t i = 2;
    while (i + 3 < jpg.size() && jpg[i] == 0xFF && jpg[i + 1] != 0xDA) {
        const size_t length = size_t(jpg[i + 2]) << 8 | jpg[i + 3];
        if (jpg[i + 1] != 0xC4) no_dht.insert(no_dht.end(), jpg.begin() + i, jpg.begin() + i + 2 + length);
        i += 2 + length;
    }
    REQUIRE(no_dht.size() < i); // a DHT was dropped
    no_dht.insert(no_dht.end(), jpg.begin() + i, jpg.end());
    const Image with = effnet::decode_image(jpg.data(), jpg.size(), "dht.jpg");
    const Image without = effnet::decode_image(no_dht.data(), no_dht.size(), "nodht.jpg");
    CHECK(without.width == 16);
    CHECK(without.rgb == with.rgb);
}

// libjpeg's fatal errors come back as one effnet::Error naming the file (error_exit longjmps,
// never exit()s), and the sizes in the frame header are checked before libjpeg allocates.
TEST_CASE("image hostile: libjpeg errors and huge JPEG headers are clear errors", "[image][hostile]") {
    const std::vector<uint8_t> jpg = jpeg_bytes(16, 16);
    size_t sof = 0;
    for (size_t i = 2; i + 1 < jpg.size(); ++i)
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xC0) {
            sof = i;
            break;
        }
    REQUIRE(sof != 0);
    // FF C0, length (2), precision (1), height (2), width (2), components (1).
    std::vector<uint8_t> huge = jpg;
    huge[sof + 5] = huge[sof + 6] = huge[sof + 7] = huge[sof + 8] = 0xFF; // 65535 x 65535
    CHECK(decode_error(huge, "huge.jpg").find("huge.jpg: image too large (65535x65535") != std::string::npos);
    std::vector<uint8_t> wide = jpg;
    wide[sof + 5] = 0x10; // 4112 x 16 is fine, but the limits say at most 1000 a side
    effnet::ImageLimits limits;
    limits.max_side = 1000;
    try {
        effnet::decode_image(wide.data(), wide.size(), "wide.jpg", limits);
        FAIL("a JPEG over the side limit was decoded");
    } catch (const effnet::Error& e) {
        CHECK(std::string(e.what()).find("wide.jpg: image too large (16x4112") != std::string::npos);
    }
    std::vector<uint8_t> precision = jpg;
    precision[sof + 4] = 12;
    CHECK(decode_error(precision, "p12.jpg") ==
          "p12.jpg: cannot decode the JPEG (Unsupported JPEG data precision 12)");
    std::vector<uint8_t> components = jpg;
    components[sof + 9] = 2; // the component specs no longer match the length: libjpeg refuses
    CHECK(decode_error(components, "c2.jpg").find("c2.jpg: cannot decode the JPEG (") == 0);
    // Entropy-coded data overwritten with a marker-free pattern: libjpeg warns and fills in,
    // Pillow ignores the warnings and returns the pixels, and so does effnet.
    size_t data = 0;
    for (size_t i = 2; i + 3 < jpg.size(); ++i)
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xDA) {
            data = i + 2 + (size_t(jpg[i + 2]) << 8 | jpg[i + 3]);
            break;
        }
    REQUIRE(data != 0);
    std::vector<uint8_t> noise = jpg;
    for (size_t i = (data + jpg.size()) / 2; i + 2 < jpg.size(); ++i) noise[i] = uint8_t(0x35 + i % 7);
    CHECK_NOTHROW(effnet::decode_image(noise.data(), noise.size(), "noise.jpg"));
}
