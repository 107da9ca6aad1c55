// torchvision's eval transform on PIL images, reproduced: Resize (PIL's resampling), CenterCrop,
// ToTensor, Normalize.
//
// PIL resamples separably, one axis after the other, each output pixel a weighted sum of the
// input pixels under a filter centred on it. When shrinking, the filter is stretched by the
// scale factor (antialiasing). Weights are normalised to sum 1, converted to fixed point with
// 22 fractional bits, and each pass rounds and clamps to uint8; we do the same arithmetic so
// the result is PIL's to the level.
#include <algorithm>
#include <cmath>

#include "effnet/error.hpp"
#include "effnet/image.hpp"

namespace effnet {

namespace {

constexpr int kPrecisionBits = 22; // 32 - 8 (pixel) - 2 (headroom for negative lobes)

double triangle_filter(double x) {
    x = std::fabs(x);
    return x < 1.0 ? 1.0 - x : 0.0;
}

// Keys' cubic with a = -0.5 (PIL's BICUBIC).
double cubic_filter(double x) {
    constexpr double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

// For each output position along one axis: the first input index, how many inputs, and
// their fixed-point weights.
struct AxisWeights {
    int taps = 0;                 // stride of `weights` per output position
    std::vector<int> first;       // [out]
    std::vector<int> count;       // [out]
    std::vector<int32_t> weights; // [out, taps]
};

AxisWeights axis_weights(int in_size, int out_size, Interpolation interpolation) {
    const bool cubic = interpolation == Interpolation::Bicubic;
    const double filter_support = cubic ? 2.0 : 1.0;
    const double scale = double(in_size) / double(out_size);
    const double filter_scale = std::max(scale, 1.0); // widen only when shrinking
    const double support = filter_support * filter_scale;

    AxisWeights a;
    a.taps = int(std::ceil(support)) * 2 + 1;
    a.first.resize(out_size);
    a.count.resize(out_size);
    a.weights.assign(size_t(out_size) * a.taps, 0);
    std::vector<double> w(a.taps);
    const double inv_filter_scale = 1.0 / filter_scale; // multiplied, as PIL does (not divided)
    for (int o = 0; o < out_size; ++o) {
        const double center = (o + 0.5) * scale;
        // Truncation toward zero after +0.5, as PIL rounds these bounds.
        const int lo = std::max(int(center - support + 0.5), 0);
        const int hi = std::min(int(center + support + 0.5), in_size);
        const int n = hi - lo;
        double total = 0.0;
        for (int i = 0; i < n; ++i) {
            const double x = (i + lo - center + 0.5) * inv_filter_scale;
            w[i] = cubic ? cubic_filter(x) : triangle_filter(x);
            total += w[i];
        }
        int32_t* fixed = &a.weights[size_t(o) * a.taps];
        for (int i = 0; i < n; ++i) {
            const double v = total != 0.0 ? w[i] / total : w[i];
            const double scaled = v * double(1 << kPrecisionBits);
            fixed[i] = v < 0 ? int32_t(-0.5 + scaled) : int32_t(0.5 + scaled);
        }
        a.first[o] = lo;
        a.count[o] = n;
    }
    return a;
}

uint8_t clamp_to_u8(int64_t acc) {
    if (acc >= (int64_t(256) << kPrecisionBits)) return 255;
    if (acc <= 0) return 0;
    return uint8_t(acc >> kPrecisionBits);
}

// in [rows, in_w, 3] -> out [rows, out_w, 3], rows taken from in starting at row_offset.
void resample_rows(const Image& in, int row_offset, int rows, const AxisWeights& a, Image& out) {
    const int out_w = out.width;
#pragma omp parallel for schedule(static) if (int64_t(rows) * out_w > 65536)
    for (int y = 0; y < rows; ++y) {
        const uint8_t* src = &in.rgb[size_t(y + row_offset) * in.width * 3];
        uint8_t* dst = &out.rgb[size_t(y) * out_w * 3];
        for (int x = 0; x < out_w; ++x) {
            const int32_t* k = &a.weights[size_t(x) * a.taps];
            const uint8_t* s = src + size_t(a.first[x]) * 3;
            int64_t r = 1 << (kPrecisionBits - 1), g = r, b = r; // +0.5 for rounding
            for (int i = 0; i < a.count[x]; ++i) {
                r += int64_t(s[3 * i + 0]) * k[i];
                g += int64_t(s[3 * i + 1]) * k[i];
                b += int64_t(s[3 * i + 2]) * k[i];
            }
            dst[3 * x + 0] = clamp_to_u8(r);
            dst[3 * x + 1] = clamp_to_u8(g);
            dst[3 * x + 2] = clamp_to_u8(b);
        }
    }
}

// in [in_h, w, 3] -> out [out_h, w, 3]; a.first is relative to in's first row.
void resample_columns(const Image& in, const AxisWeights& a, Image& out) {
    const int w = in.width;
    const size_t row_stride = size_t(w) * 3;
#pragma omp parallel for schedule(static) if (int64_t(out.height) * w > 65536)
    for (int y = 0; y < out.height; ++y) {
        const int32_t* k = &a.weights[size_t(y) * a.taps];
        const uint8_t* src = &in.rgb[size_t(a.first[y]) * row_stride];
        uint8_t* dst = &out.rgb[size_t(y) * row_stride];
        for (size_t c = 0; c < row_stride; ++c) {
            int64_t acc = 1 << (kPrecisionBits - 1);
            for (int i = 0; i < a.count[y]; ++i) acc += int64_t(src[i * row_stride + c]) * k[i];
            dst[c] = clamp_to_u8(acc);
        }
    }
}

void check_image(const Image& image, const char* what) {
    EFFNET_CHECK(image.width > 0 && image.height > 0 &&
                     image.rgb.size() == size_t(image.width) * size_t(image.height) * 3,
                 std::string(what) + ": image is empty or its pixel buffer does not match " +
                     std::to_string(image.width) + "x" + std::to_string(image.height) + "x3");
}

void check_preprocess(const Preprocess& p) {
    EFFNET_CHECK(p.resize >= 1 && p.resize <= 16384,
                 "preprocess: resize must be in [1, 16384], got " + std::to_string(p.resize));
    EFFNET_CHECK(p.crop >= 1 && p.crop <= 16384,
                 "preprocess: crop must be in [1, 16384], got " + std::to_string(p.crop));
    for (int c = 0; c < 3; ++c)
        EFFNET_CHECK(std::isfinite(p.mean[c]) && std::isfinite(p.std[c]) && p.std[c] != 0.0f,
                     "preprocess: mean and std must be finite and std non-zero");
}

} // namespace

Interpolation parse_interpolation(const std::string& s) {
    if (s == "bilinear") return Interpolation::Bilinear;
    if (s == "bicubic") return Interpolation::Bicubic;
    throw Error("unknown interpolation '" + s + "' (expected bilinear or bicubic)");
}

Image resize_image(const Image& image, int width, int height, Interpolation interpolation) {
    check_image(image, "resize");
    EFFNET_CHECK(width >= 1 && height >= 1 && width <= 65536 && height <= 65536,
                 "resize: output size " + std::to_string(width) + "x" + std::to_string(height) +
                     " out of range");
    const bool horizontal = width != image.width;
    const bool vertical = height != image.height;
    if (!horizontal && !vertical) return image;

    const AxisWeights ay = axis_weights(image.height, height, interpolation);
    if (!horizontal) {
        Image out{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
        resample_columns(image, ay, out);
        return out;
    }
    const AxisWeights ax = axis_weights(image.width, width, interpolation);
    // Each pass rounds and clamps to uint8, so the order of the passes shows in the result.
    // Pillow 13 runs the vertical pass first when the height loses more than twice as many
    // pixels as the width (python-pillow/Pillow#9549; found to hold exactly by testing
    // Pillow 13.0 on a few hundred shapes), else the horizontal pass first as before.
    if (vertical && height < image.height && image.height - height > 2 * (image.width - width)) {
        Image tmp{image.width, height, std::vector<uint8_t>(size_t(image.width) * height * 3)};
        resample_columns(image, ay, tmp);
        Image out{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
        resample_rows(tmp, 0, height, ax, out);
        return out;
    }
    // Only the input rows the vertical pass will read go through the horizontal pass.
    const int first_row = vertical ? ay.first[0] : 0;
    const int last_row = vertical ? ay.first[height - 1] + ay.count[height - 1] : image.height;
    Image tmp{width, last_row - first_row, {}};
    tmp.rgb.resize(size_t(tmp.width) * tmp.height * 3);
    resample_rows(image, first_row, tmp.height, ax, tmp);
    if (!vertical) return tmp;

    AxisWeights ay_local = ay;
    for (int& f : ay_local.first) f -= first_row;
    Image out{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
    resample_columns(tmp, ay_local, out);
    return out;
}

Image resize_shorter_side(const Image& image, int size, Interpolation interpolation) {
    check_image(image, "resize");
    EFFNET_CHECK(size >= 1, "resize: size must be >= 1, got " + std::to_string(size));
    const bool portrait = image.width <= image.height;
    const int64_t short_side = portrait ? image.width : image.height;
    const int64_t long_side = portrait ? image.height : image.width;
    if (short_side == size) return image;
    // torchvision: int(size * long / short) with Python's true division.
    const int new_long = int(double(int64_t(size) * long_side) / double(short_side));
    const int w = portrait ? size : new_long;
    const int h = portrait ? new_long : size;
    return resize_image(image, std::max(w, 1), std::max(h, 1), interpolation);
}

Image center_crop(const Image& image, int size) {
    check_image(image, "center crop");
    EFFNET_CHECK(size >= 1, "center crop: size must be >= 1, got " + std::to_string(size));
    // Zero padding first when the image is smaller (left/top get the smaller half).
    const int pad_left = size > image.width ? (size - image.width) / 2 : 0;
    const int pad_top = size > image.height ? (size - image.height) / 2 : 0;
    const int pad_right = size > image.width ? (size - image.width + 1) / 2 : 0;
    const int pad_bottom = size > image.height ? (size - image.height + 1) / 2 : 0;
    const int padded_w = image.width + pad_left + pad_right;
    const int padded_h = image.height + pad_top + pad_bottom;
    // Python's round() rounds half to even; so does nearbyint in the default rounding mode.
    const int top = int(std::nearbyint((padded_h - size) / 2.0));
    const int left = int(std::nearbyint((padded_w - size) / 2.0));

    Image out{size, size, std::vector<uint8_t>(size_t(size) * size * 3, 0)};
    for (int y = 0; y < size; ++y) {
        const int sy = y + top - pad_top; // row in the unpadded image
        if (sy < 0 || sy >= image.height) continue;
        for (int x = 0; x < size; ++x) {
            const int sx = x + left - pad_left;
            if (sx < 0 || sx >= image.width) continue;
            const uint8_t* s = &image.rgb[(size_t(sy) * image.width + sx) * 3];
            uint8_t* d = &out.rgb[(size_t(y) * size + x) * 3];
            d[0] = s[0];
            d[1] = s[1];
            d[2] = s[2];
        }
    }
    return out;
}

namespace {

// Shared by both entry points: out[3, crop, crop] = (pixel / 255 - mean) / std.
void preprocess_into(const Image& image, const Preprocess& p, const float mean[3], const float stdev[3],
                     float* out) {
    check_preprocess(p);
    EFFNET_CHECK(out != nullptr, "preprocess: output pointer is null");
    const Interpolation interpolation = parse_interpolation(p.interpolation);
    const Image cropped = center_crop(resize_shorter_side(image, p.resize, interpolation), p.crop);
    const size_t plane = size_t(p.crop) * p.crop;
    for (int c = 0; c < 3; ++c)
        for (size_t i = 0; i < plane; ++i) {
            // As ToTensor then Normalize: float32 divide by 255, subtract, divide.
            const float v = float(cropped.rgb[i * 3 + c]) / 255.0f;
            out[c * plane + i] = (v - mean[c]) / stdev[c];
        }
}

} // namespace

void preprocess_image(const Image& image, const Preprocess& preprocess, float* out) {
    preprocess_into(image, preprocess, preprocess.mean, preprocess.std, out);
}

void preprocess_image_unnormalized(const Image& image, const Preprocess& preprocess, float* out) {
    const float zero[3] = {0.0f, 0.0f, 0.0f};
    const float one[3] = {1.0f, 1.0f, 1.0f};
    preprocess_into(image, preprocess, zero, one, out);
}

} // namespace effnet
