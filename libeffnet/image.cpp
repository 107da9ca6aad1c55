// Image decoding: JPEG through libjpeg-turbo with Pillow's settings (libeffnet/jpeg_decode.cpp),
// PNG, BMP and TGA through stb_image, with the checks stb leaves to the caller: the format is
// recognised by its signature, the size is refused from the header before any pixel memory
// exists, and JPEG/PNG/BMP files that end early are refused (stb fills the missing part in;
// Pillow raises on a truncated JPEG).
#include "effnet/image.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "effnet/error.hpp"
#include "jpeg_decode.hpp"

// The one stb_image implementation in the project. Only the formats we document, JPEG not
// among them (libjpeg-turbo decodes it); the file is read by us (clear errors for directories,
// empty and unreadable files), so no stdio.
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_TGA
#define STBI_FAILURE_USERMSG
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#endif
// stb_image 2.27 (Debian's) shifted by 32 or more in its JPEG bit reader on corrupt entropy-coded
// data (stbi__grow_buffer_unsafe: code_bits goes negative; fixed upstream later), when stb still
// decoded JPEG. UBSan's shift check stays waived for stb's functions only (the fuzz build is
// clang; our own code stays checked), in case its other decoders do the same.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((no_sanitize("shift"))), apply_to = function)
#endif
#include <stb_image.h>
#if defined(__clang__)
#pragma clang attribute pop
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace effnet {

namespace {

enum class Format { Jpeg, Png, Bmp, Tga, Unknown };

std::string lower_extension(const std::string& path) {
    std::string ext = std::filesystem::path(path).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(),
                   [](unsigned char c) { return char(std::tolower(c)); });
    return ext;
}

// Where a JPEG's SOI marker ends, or 0 when the file does not start with one. Any number of
// 0xFF fill bytes, then 0xD8 (stb's test, kept: fuzz_image found FF FF D8 in a .tga decoded
// unchecked); libjpeg gets the stream from the last FF before D8.
size_t jpeg_soi_end(const uint8_t* p, size_t n) {
    size_t i = 0;
    while (i < n && p[i] == 0xFF) ++i;
    return i >= 1 && i < n && p[i] == 0xD8 ? i + 1 : 0;
}

// By signature, as stb tries them (JPEG, PNG, BMP, then TGA); TGA has none, so only a .tga
// name makes stb try it (a random file would otherwise sometimes pass stb's loose TGA test
// and decode as noise).
Format detect_format(const uint8_t* p, size_t n, const std::string& name) {
    static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (jpeg_soi_end(p, n) != 0) return Format::Jpeg;
    if (n >= 8 && std::memcmp(p, kPng, 8) == 0) return Format::Png;
    if (n >= 2 && p[0] == 'B' && p[1] == 'M') return Format::Bmp;
    if (lower_extension(name) == ".tga") return Format::Tga;
    return Format::Unknown;
}

uint32_t be32(const uint8_t* p) {
    return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}
uint32_t le32(const uint8_t* p) {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
uint16_t le16(const uint8_t* p) {
    return uint16_t(p[0] | p[1] << 8);
}

// Width and height as the header states them (0 when not found), read before stb so that the
// size limit applies even where stb itself would give a vaguer error.
struct HeaderSize {
    int64_t width = 0, height = 0;
};

// A DHT segment's tables: each a class/id byte, 16 code counts, then as many symbols. At most
// 256 symbols per table (stb_image 2.27 wrote past its arrays for more, found by
// tests/fuzz/fuzz_image; libjpeg refuses them too, as "Bogus Huffman table definition").
std::string jpeg_huffman_problem(const uint8_t* p, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (n - i < 17) return "corrupt JPEG (Huffman table header cut off)";
        size_t symbols = 0;
        for (int k = 1; k <= 16; ++k) symbols += p[i + k];
        if (symbols > 256)
            return "corrupt JPEG (Huffman table with " + std::to_string(symbols) + " codes; at most 256)";
        if (n - i - 17 < symbols) return "corrupt JPEG (Huffman table cut off)";
        i += 17 + symbols;
    }
    return "";
}

// Walks the JPEG marker segments and entropy-coded data up to EOI. Returns an empty string
// when the stream is complete, else why not. Bytes after EOI are allowed (cameras append).
// Records the frame size from the first SOFn segment.
std::string jpeg_structure_problem(const uint8_t* p, size_t n, HeaderSize& size) {
    size_t i = jpeg_soi_end(p, n);
    for (;;) {
        while (i < n && p[i] != 0xFF) ++i; // tolerate stray bytes between segments, as libjpeg
        while (i < n && p[i] == 0xFF) ++i; // fill bytes
        if (i >= n) return "truncated JPEG (no end-of-image marker)";
        const uint8_t marker = p[i++];
        if (marker == 0xD9) return ""; // EOI
        if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x00) continue;
        if (i + 2 > n) return "truncated JPEG (segment header cut off)";
        const size_t length = size_t(p[i]) << 8 | p[i + 1];
        if (length < 2) return "corrupt JPEG (segment length < 2)";
        if (i + length > n) return "truncated JPEG (segment cut off)";
        const bool sof =
            marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
        if (marker == 0xC4) {
            const std::string dht = jpeg_huffman_problem(p + i + 2, length - 2);
            if (!dht.empty()) return dht;
        }
        if (sof && length >= 7 && size.width == 0) {
            size.height = int64_t(p[i + 3]) << 8 | p[i + 4];
            size.width = int64_t(p[i + 5]) << 8 | p[i + 6];
        }
        i += length;
        if (marker == 0xDA) { // SOS: entropy-coded data runs to the next real marker
            for (;;) {
                if (i + 1 >= n) return "truncated JPEG (image data cut off)";
                if (p[i] == 0xFF) {
                    const uint8_t q = p[i + 1];
                    if (q == 0x00 || (q >= 0xD0 && q <= 0xD7)) {
                        i += 2;
                        continue;
                    } // stuffing, RSTn
                    if (q == 0xFF) {
                        ++i;
                        continue;
                    }
                    break;
                }
                // On to the next 0xFF (memchr: this walk runs over every byte of every JPEG).
                const void* ff = std::memchr(p + i, 0xFF, n - i);
                i = ff ? size_t(static_cast<const uint8_t*>(ff) - p) : n;
            }
        }
    }
}

// Walks the PNG chunks up to IEND; the size comes from IHDR (the first chunk).
std::string png_structure_problem(const uint8_t* p, size_t n, HeaderSize& size) {
    if (n >= 24 && std::memcmp(p + 12, "IHDR", 4) == 0) {
        size.width = be32(p + 16);
        size.height = be32(p + 20);
    }
    size_t i = 8;
    for (;;) {
        if (i + 12 > n) return "truncated PNG (no IEND chunk)";
        const uint32_t length = be32(p + i);
        if (length > 0x7FFFFFFFu) return "corrupt PNG (chunk length out of range)";
        if (uint64_t(i) + 12 + length > n) return "truncated PNG (chunk cut off)";
        const bool iend = std::memcmp(p + i + 4, "IEND", 4) == 0;
        i += 12 + size_t(length);
        if (iend) return "";
    }
}

// Uncompressed BMPs (BI_RGB, BI_BITFIELDS) must hold every row the header promises.
std::string bmp_structure_problem(const uint8_t* p, size_t n, HeaderSize& size) {
    if (n < 54) return "truncated BMP (header cut off)";
    const uint32_t data_offset = le32(p + 10);
    const uint32_t header_size = le32(p + 14);
    if (header_size < 40) return ""; // OS/2 headers: leave to stb
    const int64_t width = int32_t(le32(p + 18));
    const int64_t height = int32_t(le32(p + 22));
    size.width = width < 0 ? -width : width;
    size.height = height < 0 ? -height : height;
    const int bpp = le16(p + 28);
    const uint32_t compression = le32(p + 30);
    if (compression != 0 && compression != 3) return "";
    if (width <= 0 || height == 0 || bpp == 0) return ""; // stb reports these
    const int64_t row = (int64_t(bpp) * width + 31) / 32 * 4;
    const int64_t rows = height < 0 ? -height : height;
    // Divided rather than multiplied: row * rows overflows for huge headers (found by fuzz_image).
    const int64_t available = int64_t(n) - int64_t(data_offset);
    if (available < 0 || rows > available / row) return "truncated BMP (pixel rows cut off)";
    return "";
}

struct StbFree {
    void operator()(stbi_uc* p) const { stbi_image_free(p); }
};

} // namespace

bool has_image_extension(const std::string& path) {
    const std::string ext = lower_extension(path);
    return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".bmp" || ext == ".tga";
}

Image decode_image(const uint8_t* bytes, size_t size, const std::string& name, const ImageLimits& limits) {
    EFFNET_CHECK(size > 0, name + ": empty file");
    EFFNET_CHECK(size <= size_t(0x7FFFFFFF), name + ": file too large for the decoder");
    const Format format = detect_format(bytes, size, name);
    EFFNET_CHECK(format != Format::Unknown,
                 name + ": not a JPEG, PNG, BMP or TGA image (unrecognised file signature)");

    auto check_size = [&](int64_t width, int64_t height) {
        if (width > limits.max_side || height > limits.max_side || width * height > limits.max_pixels)
            throw Error(name + ": image too large (" + std::to_string(width) + "x" + std::to_string(height) +
                        "; the limit is " + std::to_string(limits.max_side) + " pixels a side and " +
                        std::to_string(limits.max_pixels / 1000000) + " Mpixels)");
    };
    std::string problem;
    HeaderSize stated;
    if (format == Format::Jpeg) problem = jpeg_structure_problem(bytes, size, stated);
    if (format == Format::Png) problem = png_structure_problem(bytes, size, stated);
    if (format == Format::Bmp) problem = bmp_structure_problem(bytes, size, stated);
    if (format == Format::Tga && size >= 18) {
        stated.width = le16(bytes + 12);
        stated.height = le16(bytes + 14);
    }
    check_size(stated.width, stated.height); // before anything else: never decode a bomb
    EFFNET_CHECK(problem.empty(), name + ": " + problem);
    if (format == Format::Jpeg) {
        // libjpeg wants FF D8 first: skip any extra fill bytes before it.
        const size_t soi = jpeg_soi_end(bytes, size) - 2;
        return detail::decode_jpeg(bytes + soi, size - soi, name, limits);
    }

    // Header only: refuse huge images before stb allocates anything for the pixels.
    int width = 0, height = 0, channels = 0;
    if (!stbi_info_from_memory(bytes, int(size), &width, &height, &channels)) {
        const char* why = stbi_failure_reason();
        throw Error(name + ": cannot read the image header (" + (why ? why : "unknown reason") + ")");
    }
    EFFNET_CHECK(width > 0 && height > 0, name + ": image has no pixels (" + std::to_string(width) + "x" +
                                              std::to_string(height) + ")");
    check_size(width, height);

    int w = 0, h = 0, c = 0;
    // 3 channels requested: gray is replicated, alpha dropped, 16-bit reduced to the high byte.
    std::unique_ptr<stbi_uc, StbFree> pixels(stbi_load_from_memory(bytes, int(size), &w, &h, &c, 3));
    if (!pixels) {
        const char* why = stbi_failure_reason();
        throw Error(name + ": cannot decode the image (" + (why ? why : "unknown reason") + ")");
    }
    EFFNET_CHECK(w == width && h == height, name + ": decoded size differs from the header");
    Image image;
    image.width = w;
    image.height = h;
    image.rgb.assign(pixels.get(), pixels.get() + size_t(w) * size_t(h) * 3);
    return image;
}

Image load_image(const std::string& path, const ImageLimits& limits) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    if (ec || !fs::exists(status)) throw Error(path + ": no such file");
    EFFNET_CHECK(!fs::is_directory(status), path + ": is a directory");
    EFFNET_CHECK(fs::is_regular_file(status), path + ": not a regular file");

    std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!file) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
    const uintmax_t file_size = fs::file_size(path, ec);
    if (ec) throw Error(path + ": cannot read the file size (" + ec.message() + ")");
    EFFNET_CHECK(file_size > 0, path + ": empty file");
    EFFNET_CHECK(file_size <= uintmax_t(limits.max_file_bytes),
                 path + ": file too large (" + std::to_string(file_size) + " bytes)");

    std::vector<uint8_t> bytes(static_cast<size_t>(file_size));
    const size_t got = std::fread(bytes.data(), 1, bytes.size(), file.get());
    if (got != bytes.size())
        throw Error(path + ": read error (" + std::to_string(got) + " of " + std::to_string(bytes.size()) +
                    " bytes)");
    return decode_image(bytes.data(), bytes.size(), path, limits);
}

} // namespace effnet
