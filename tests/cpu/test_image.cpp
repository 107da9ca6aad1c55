// Image decoding (libeffnet/image.cpp) and the torchvision-style geometry of preprocessing
// (libeffnet/preprocess.cpp). Pixel-exactness of the resize against Pillow is checked by
// tests/python/test_preprocess.py, of JPEG decoding by tests/python/test_jpeg_pillow.py, which
// have Pillow at hand.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "effnet/error.hpp"
#include "effnet/image.hpp"

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

namespace {

// A per-test scratch directory, removed afterwards.
struct TempDir {
    fs::path path;
    TempDir() {
        path = fs::temp_directory_path() / ("effnet_test_image_" + std::to_string(::getpid()));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string file(const std::string& name) const { return (path / name).string(); }
};

// Deterministic content with every channel different.
std::vector<uint8_t> pattern(int w, int h, int channels) {
    std::vector<uint8_t> px(size_t(w) * h * channels);
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < channels; ++c)
                px[(size_t(y) * w + x) * channels + c] = uint8_t((x * 37 + y * 11 + c * 71 + x * y) & 0xFF);
    return px;
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

uint32_t crc32(const uint8_t* p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; ++i) {
        c ^= p[i];
        for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

void put_be32(std::vector<uint8_t>& v, uint32_t x) {
    for (int s = 24; s >= 0; s -= 8) v.push_back(uint8_t(x >> s));
}

void put_chunk(std::vector<uint8_t>& png, const char* type, const std::vector<uint8_t>& payload) {
    put_be32(png, uint32_t(payload.size()));
    std::vector<uint8_t> body(type, type + 4);
    body.insert(body.end(), payload.begin(), payload.end());
    png.insert(png.end(), body.begin(), body.end());
    put_be32(png, crc32(body.data(), body.size()));
}

// A well-formed PNG stream whose IHDR claims width x height (the IDAT is a tiny stored block).
std::vector<uint8_t> png_claiming(uint32_t width, uint32_t height) {
    std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    std::vector<uint8_t> ihdr;
    put_be32(ihdr, width);
    put_be32(ihdr, height);
    ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});
    put_chunk(png, "IHDR", ihdr);
    put_chunk(png, "IDAT", {0x78, 0x01, 0x01, 0x01, 0x00, 0xFE, 0xFF, 0x00, 0x00, 0x01, 0x00, 0x01});
    put_chunk(png, "IEND", {});
    return png;
}

std::string error_of(const std::string& path) {
    try {
        effnet::load_image(path);
    } catch (const effnet::Error& e) {
        return e.what();
    }
    return "";
}

} // namespace

TEST_CASE("image: PNG, BMP and TGA round trips are lossless", "[image]") {
    TempDir dir;
    const int w = 17, h = 11; // odd sizes: BMP rows are padded to 4 bytes
    const std::vector<uint8_t> rgb = pattern(w, h, 3);
    const std::string png = dir.file("a.png"), bmp = dir.file("a.bmp"), tga = dir.file("a.tga");
    REQUIRE(stbi_write_png(png.c_str(), w, h, 3, rgb.data(), w * 3));
    REQUIRE(stbi_write_bmp(bmp.c_str(), w, h, 3, rgb.data()));
    REQUIRE(stbi_write_tga(tga.c_str(), w, h, 3, rgb.data()));
    for (const std::string& path : {png, bmp, tga}) {
        INFO(path);
        const effnet::Image im = effnet::load_image(path);
        CHECK(im.width == w);
        CHECK(im.height == h);
        CHECK(im.rgb == rgb);
    }
}

TEST_CASE("image: grayscale is replicated, alpha is dropped", "[image]") {
    TempDir dir;
    const int w = 9, h = 6;
    const std::vector<uint8_t> gray = pattern(w, h, 1);
    const std::vector<uint8_t> rgba = pattern(w, h, 4);
    REQUIRE(stbi_write_png(dir.file("g.png").c_str(), w, h, 1, gray.data(), w));
    REQUIRE(stbi_write_png(dir.file("a.png").c_str(), w, h, 4, rgba.data(), w * 4));
    const effnet::Image g = effnet::load_image(dir.file("g.png"));
    const effnet::Image a = effnet::load_image(dir.file("a.png"));
    for (size_t i = 0; i < size_t(w) * h; ++i) {
        for (int c = 0; c < 3; ++c) {
            CHECK(g.rgb[i * 3 + c] == gray[i]);
            CHECK(a.rgb[i * 3 + c] == rgba[i * 4 + c]);
        }
    }
}

TEST_CASE("image: JPEG decodes close to the original", "[image]") {
    TempDir dir;
    const int w = 32, h = 24;
    std::vector<uint8_t> rgb(size_t(w) * h * 3);
    for (int y = 0; y < h; ++y) // smooth content: JPEG at quality 95 keeps it within a few levels
        for (int x = 0; x < w; ++x)
            for (int c = 0; c < 3; ++c)
                rgb[(size_t(y) * w + x) * 3 + c] = uint8_t(20 + 3 * x + 2 * y + 20 * c);
    REQUIRE(stbi_write_jpg(dir.file("a.jpg").c_str(), w, h, 3, rgb.data(), 95));
    const effnet::Image im = effnet::load_image(dir.file("a.jpg"));
    REQUIRE(im.width == w);
    REQUIRE(im.height == h);
    double total = 0;
    for (size_t i = 0; i < rgb.size(); ++i) total += std::abs(int(im.rgb[i]) - int(rgb[i]));
    CHECK(total / double(rgb.size()) < 3.0); // mean error in levels
}

TEST_CASE("image: a PNG claiming 100000x100000 is refused from its header", "[image]") {
    TempDir dir;
    write_bytes(dir.file("huge.png"), png_claiming(100000, 100000));
    const std::string msg = error_of(dir.file("huge.png"));
    CHECK(msg.find("huge.png") != std::string::npos);
    CHECK(msg.find("image too large (100000x100000") != std::string::npos);
    // Within the side limit but over the pixel limit.
    write_bytes(dir.file("wide.png"), png_claiming(30000, 20000));
    CHECK(error_of(dir.file("wide.png")).find("image too large (30000x20000") != std::string::npos);
}

TEST_CASE("image: empty, missing, directory, text and truncated files give clear errors", "[image]") {
    TempDir dir;
    write_bytes(dir.file("empty.jpg"), {});
    CHECK(error_of(dir.file("empty.jpg")) == dir.file("empty.jpg") + ": empty file");
    CHECK(error_of(dir.file("missing.png")) == dir.file("missing.png") + ": no such file");
    CHECK(error_of(dir.path.string()) == dir.path.string() + ": is a directory");
    const std::string text = "hello, I am a text file\n";
    write_bytes(dir.file("text.jpg"), std::vector<uint8_t>(text.begin(), text.end()));
    CHECK(error_of(dir.file("text.jpg")).find("not a JPEG, PNG, BMP or TGA image") != std::string::npos);

    const int w = 40, h = 30;
    const std::vector<uint8_t> rgb = pattern(w, h, 3);
    REQUIRE(stbi_write_jpg(dir.file("full.jpg").c_str(), w, h, 3, rgb.data(), 90));
    REQUIRE(stbi_write_png(dir.file("full.png").c_str(), w, h, 3, rgb.data(), w * 3));
    REQUIRE(stbi_write_bmp(dir.file("full.bmp").c_str(), w, h, 3, rgb.data()));
    for (const char* ext : {"jpg", "png", "bmp"}) {
        std::ifstream f(dir.file(std::string("full.") + ext), std::ios::binary);
        std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
        bytes.resize(bytes.size() * 2 / 3);
        const std::string cut = dir.file(std::string("cut.") + ext);
        write_bytes(cut, bytes);
        INFO(cut);
        CHECK(error_of(cut).find("truncated") != std::string::npos);
    }
}

TEST_CASE("image: extension filter for directory scans", "[image]") {
    CHECK(effnet::has_image_extension("a/b/photo.JPG"));
    CHECK(effnet::has_image_extension("x.jpeg"));
    CHECK(effnet::has_image_extension("x.png"));
    CHECK(effnet::has_image_extension("x.bmp"));
    CHECK(effnet::has_image_extension("x.tga"));
    CHECK_FALSE(effnet::has_image_extension("x.txt"));
    CHECK_FALSE(effnet::has_image_extension("jpg"));
}

TEST_CASE("preprocess: torchvision's resize and center-crop geometry", "[image]") {
    effnet::Image im{30, 20, pattern(30, 20, 3)};
    // Shorter side 20 -> 10, longer int(10 * 30 / 20) = 15.
    const effnet::Image r = effnet::resize_shorter_side(im, 10, effnet::Interpolation::Bilinear);
    CHECK(r.width == 15);
    CHECK(r.height == 10);
    // Already the right size: returned unchanged.
    CHECK(effnet::resize_shorter_side(im, 20, effnet::Interpolation::Bicubic).rgb == im.rgb);
    // int() truncates: 7 * 30 / 20 = 10.5 -> 10.
    CHECK(effnet::resize_shorter_side(im, 7, effnet::Interpolation::Bicubic).width == 10);

    // Crop offsets round half to even: (30 - 27) / 2 = 1.5 -> 2, (20 - 17) / 2 = 1.5 -> 2;
    // (30 - 25) / 2 = 2.5 -> 2.
    effnet::Image wide{30, 30, pattern(30, 30, 3)};
    const effnet::Image c = effnet::center_crop(wide, 27);
    CHECK(c.rgb[0] == wide.rgb[(2 * 30 + 2) * 3]);
    const effnet::Image c2 = effnet::center_crop(wide, 25);
    CHECK(c2.rgb[0] == wide.rgb[(2 * 30 + 2) * 3]);

    // Larger than the image: zero padding, left/top get the smaller half.
    effnet::Image small{3, 2, pattern(3, 2, 3)};
    const effnet::Image p = effnet::center_crop(small, 6);
    CHECK(p.rgb[(size_t(2) * 6 + 1) * 3] == small.rgb[0]); // (6-2)/2 = 2 rows, (6-3)/2 = 1 column
    CHECK(p.rgb[0] == 0);
}

TEST_CASE("preprocess: constant image normalises to (v/255 - mean) / std", "[image]") {
    effnet::Image im{50, 37, std::vector<uint8_t>(size_t(50) * 37 * 3, 200)};
    effnet::Preprocess pre;
    pre.resize = 40;
    pre.crop = 32;
    pre.interpolation = "bicubic";
    std::vector<float> out(3 * 32 * 32);
    effnet::preprocess_image(im, pre, out.data());
    for (int c = 0; c < 3; ++c) {
        // Weights are normalised to sum 1 in fixed point: a constant image stays constant.
        const float expect = (200.0f / 255.0f - pre.mean[c]) / pre.std[c];
        for (int i = 0; i < 32 * 32; ++i)
            REQUIRE(out[size_t(c) * 32 * 32 + i] == Approx(expect).margin(1e-6));
    }
    pre.interpolation = "nearest";
    CHECK_THROWS_AS(effnet::preprocess_image(im, pre, out.data()), effnet::Error);
}
