// JPEG through libjpeg-turbo, decoded as Pillow decodes it, so that effnet's pixels equal
// Pillow's Image.open(path).convert("RGB") (tests/python/test_jpeg_pillow.py: every kind of
// JPEG Pillow writes, max difference 0). What Pillow does, and so what we do:
//  - libjpeg's defaults: ISLOW integer IDCT, fancy (triangle-filter) chroma upsampling, no
//    scaling, no draft mode; the colour space libjpeg infers from the JFIF/Adobe markers.
//  - 1 component (L): gray, replicated to RGB (convert("RGB")); libjpeg's GRAYSCALE -> RGB
//    output is that replication.
//  - 3 components: libjpeg's RGB output (YCbCr -> RGB, or RGB as stored).
//  - 4 components: libjpeg's CMYK output (YCCK -> CMYK done by libjpeg), taken as Adobe-inverted
//    whatever the markers say ("CMYK;I": Pillow assumes Adobe conventions), then Pillow's
//    cmyk2rgb: with C = 255 - c, K = 255 - k: R = (255 - K) - muldiv255(C, 255 - K), same for G, B.
//  - Only 8-bit samples and 1, 3 or 4 components (Pillow refuses others); EXIF orientation is
//    not applied (Pillow applies it only through ImageOps.exif_transpose).
//  - Warnings: libjpeg recovers from corrupt entropy-coded data (bad Huffman codes, extraneous
//    bytes, a marker in the middle of a scan) by filling in, and Pillow ignores its warnings
//    and returns those pixels: so do we. A premature end of data is an error, as Pillow raises
//    "image file is truncated" (without ImageFile.LOAD_TRUNCATED_IMAGES); decode_image refuses
//    a stream without EOI before it gets here.
// libjpeg reports fatal errors through error_exit, which must not return: ours longjmps back
// to decode_jpeg's setjmp, in a function that holds no C++ object with a destructor between
// the two (the output buffer belongs to the caller, the decompressor to a guard declared
// before setjmp), and the caller turns the message into effnet::Error.
#include "jpeg_decode.hpp"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <vector>

#include <jpeglib.h>
#include <jerror.h> // message codes: JWRN_JPEG_EOF
// jconfig.h names the implementation. IJG libjpeg 9 upsamples chroma differently (and has no
// SIMD): its pixels are not Pillow's, so it is refused rather than silently inexact.
#if !defined(LIBJPEG_TURBO_VERSION)
#error "effnet needs libjpeg-turbo (Debian: libjpeg62-turbo-dev), the JPEG library Pillow uses"
#endif

#include "effnet/error.hpp"

namespace effnet::detail {

namespace {

// More scans than any encoder writes (a progressive JPEG has about 10): a stream of thousands
// of tiny scans makes libjpeg re-run its progressive pass for each, slowly (a known DoS;
// TurboJPEG's own scan limit is 500 in its fuzzers).
constexpr int kMaxScans = 1000;

struct ErrorManager {
    jpeg_error_mgr pub; // first: libjpeg casts cinfo->err to it
    jpeg_progress_mgr progress;
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX + 64];
};

[[noreturn]] void error_exit(j_common_ptr cinfo) {
    ErrorManager* err = reinterpret_cast<ErrorManager*>(cinfo->err);
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    std::snprintf(err->message, sizeof(err->message), "cannot decode the JPEG (%s)", text);
    std::longjmp(err->jump, 1);
}

// Warnings (level -1): all ignored as Pillow ignores them, except the end of the data, which
// Pillow reports as a truncated file. Trace messages (level >= 0) are dropped.
void emit_message(j_common_ptr cinfo, int level) {
    if (level >= 0) return;
    ErrorManager* err = reinterpret_cast<ErrorManager*>(cinfo->err);
    err->pub.num_warnings++;
    if (err->pub.msg_code == JWRN_JPEG_EOF) {
        std::snprintf(err->message, sizeof(err->message), "truncated JPEG (premature end of data)");
        std::longjmp(err->jump, 1);
    }
}

void output_message(j_common_ptr) {}

void progress_monitor(j_common_ptr cinfo) {
    if (!cinfo->is_decompressor) return;
    const auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
    if (d->input_scan_number > kMaxScans) {
        ErrorManager* err = reinterpret_cast<ErrorManager*>(cinfo->err);
        std::snprintf(err->message, sizeof(err->message),
                      "corrupt JPEG (more than %d scans; no encoder writes that many)", kMaxScans);
        std::longjmp(err->jump, 1);
    }
}

// Destroys the decompressor on every path (normal return, longjmp, exception).
struct DecompressGuard {
    jpeg_decompress_struct* cinfo;
    bool created = false;
    ~DecompressGuard() {
        if (created) jpeg_destroy_decompress(cinfo);
    }
};

// Pillow's MULDIV255: a * b / 255 rounded, in integers.
inline int muldiv255(int a, int b) {
    const int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

// Pillow's CMYK;I unpack then cmyk2rgb, one row.
void cmyk_row_to_rgb(const uint8_t* cmyk, uint8_t* rgb, int width) {
    for (int x = 0; x < width; ++x) {
        const int nk = cmyk[4 * x + 3]; // 255 - K with K = 255 - k
        for (int c = 0; c < 3; ++c) rgb[3 * x + c] = uint8_t(nk - muldiv255(255 - cmyk[4 * x + c], nk));
    }
}

enum class Status { Ok, Error, TooLarge, Unsupported };

// The setjmp frame. Only trivially destructible locals; `out` and `row` belong to the caller.
// On failure `err.message` (Error) or `detail` (TooLarge / Unsupported) says why.
Status run_decoder(const uint8_t* bytes, size_t size, const ImageLimits& limits,
                   jpeg_decompress_struct& cinfo, ErrorManager& err, DecompressGuard& guard, Image& out,
                   std::vector<uint8_t>& row, char* detail, size_t detail_size) {
    if (setjmp(err.jump)) return Status::Error;
    jpeg_create_decompress(&cinfo);
    guard.created = true;
    cinfo.progress = &err.progress;
    jpeg_mem_src(&cinfo, bytes, static_cast<unsigned long>(size));
    jpeg_read_header(&cinfo, TRUE);

    const int64_t width = cinfo.image_width, height = cinfo.image_height;
    if (width > limits.max_side || height > limits.max_side || width * height > limits.max_pixels) {
        std::snprintf(detail, detail_size, "%lldx%lld", static_cast<long long>(width),
                      static_cast<long long>(height));
        return Status::TooLarge;
    }
    if (cinfo.data_precision != 8) {
        std::snprintf(detail, detail_size, "%d-bit samples (only 8-bit JPEGs are supported, as Pillow)",
                      cinfo.data_precision);
        return Status::Unsupported;
    }
    const int components = cinfo.num_components;
    if (components != 1 && components != 3 && components != 4) {
        std::snprintf(detail, detail_size, "%d components (1, 3 or 4 are supported, as Pillow)", components);
        return Status::Unsupported;
    }
    // Pillow's settings are libjpeg's defaults (jpeg_read_header set them): JDCT_ISLOW,
    // do_fancy_upsampling, scale 1/1, no quantisation. Only the output colour space is chosen.
    const bool cmyk = components == 4;
    cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_width != cinfo.image_width || cinfo.output_height != cinfo.image_height ||
        cinfo.output_components != (cmyk ? 4 : 3)) {
        std::snprintf(detail, detail_size, "libjpeg's output is %ux%u x%d", cinfo.output_width,
                      cinfo.output_height, cinfo.output_components);
        return Status::Unsupported;
    }
    out.width = int(width);
    out.height = int(height);
    out.rgb.resize(size_t(width) * size_t(height) * 3);
    if (cmyk) row.resize(size_t(width) * 4);
    while (cinfo.output_scanline < cinfo.output_height) {
        const size_t y = cinfo.output_scanline;
        JSAMPROW dst = cmyk ? row.data() : &out.rgb[y * size_t(width) * 3];
        if (jpeg_read_scanlines(&cinfo, &dst, 1) != 1) {
            std::snprintf(err.message, sizeof(err.message), "truncated JPEG (premature end of data)");
            return Status::Error;
        }
        if (cmyk) cmyk_row_to_rgb(row.data(), &out.rgb[y * size_t(width) * 3], int(width));
    }
    jpeg_finish_decompress(&cinfo);
    return Status::Ok;
}

} // namespace

Image decode_jpeg(const uint8_t* bytes, size_t size, const std::string& name, const ImageLimits& limits) {
    jpeg_decompress_struct cinfo;
    ErrorManager err;
    std::memset(&cinfo, 0, sizeof(cinfo));
    std::memset(&err, 0, sizeof(err));
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = error_exit;
    err.pub.emit_message = emit_message;
    err.pub.output_message = output_message;
    err.progress.progress_monitor = progress_monitor;
    DecompressGuard guard{&cinfo};
    Image out;
    std::vector<uint8_t> row;
    char detail[160] = {0};
    const Status status =
        run_decoder(bytes, size, limits, cinfo, err, guard, out, row, detail, sizeof(detail));
    switch (status) {
    case Status::Ok:
        return out;
    case Status::TooLarge:
        throw Error(name + ": image too large (" + detail + "; the limit is " +
                    std::to_string(limits.max_side) + " pixels a side and " +
                    std::to_string(limits.max_pixels / 1000000) + " Mpixels)");
    case Status::Unsupported:
        throw Error(name + ": unsupported JPEG (" + detail + ")");
    case Status::Error:
        break;
    }
    throw Error(name + ": " + err.message);
}

} // namespace effnet::detail
