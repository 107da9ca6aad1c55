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
#include <cstdint>
#include <vector>

#include "effnet/error.hpp"
#include "effnet/image.hpp"
#include "effnet/limits.hpp"

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

// For each output position of a window [begin, begin + first.size()) along one axis: the
// first input index, how many inputs, and their fixed-point weights. A position's weights
// depend on nothing but its own index, so a window is exactly that part of the whole axis.
struct AxisWeights {
    int taps = 0;                 // stride of `weights` per output position
    std::vector<int> first;       // [out]
    std::vector<int> count;       // [out]
    std::vector<int32_t> weights; // [out, taps]

    int input_begin() const { return first.front(); }
    int input_end() const { return first.back() + count.back(); }
    void shift_inputs(int by) {
        for (int& f : first) f -= by;
    }
};

AxisWeights axis_weights(int in_size, int out_size, int begin, int n_out, Interpolation interpolation) {
    const bool cubic = interpolation == Interpolation::Bicubic;
    const double filter_support = cubic ? 2.0 : 1.0;
    const double scale = double(in_size) / double(out_size);
    const double filter_scale = std::max(scale, 1.0); // widen only when shrinking
    const double support = filter_support * filter_scale;

    AxisWeights a;
    a.taps = int(std::ceil(support)) * 2 + 1;
    a.first.resize(n_out);
    a.count.resize(n_out);
    a.weights.assign(size_t(n_out) * a.taps, 0);
    std::vector<double> w(a.taps);
    const double inv_filter_scale = 1.0 / filter_scale; // multiplied, as PIL does (not divided)
    for (int j = 0; j < n_out; ++j) {
        const int o = begin + j;
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
        int32_t* fixed = &a.weights[size_t(j) * a.taps];
        for (int i = 0; i < n; ++i) {
            const double v = total != 0.0 ? w[i] / total : w[i];
            const double scaled = v * double(1 << kPrecisionBits);
            fixed[i] = v < 0 ? int32_t(-0.5 + scaled) : int32_t(0.5 + scaled);
        }
        a.first[j] = lo;
        a.count[j] = n;
    }
    return a;
}

// An axis that keeps its size: each output is its input, weight 1.0 (exact through the
// fixed-point rounding, so the pass order does not matter for it).
AxisWeights identity_weights(int begin, int n_out) {
    AxisWeights a;
    a.taps = 1;
    a.first.resize(n_out);
    for (int j = 0; j < n_out; ++j) a.first[j] = begin + j;
    a.count.assign(n_out, 1);
    a.weights.assign(n_out, int32_t(1) << kPrecisionBits);
    return a;
}

// Accumulators are int32, as PIL's: 255 * (sum of |weights| <= 1.5) * 2^22 + 2^21 < 2^31, so
// no sum overflows (the 2 bits of headroom in kPrecisionBits are for that), and int32 lets the
// compiler vectorise the passes.
uint8_t clamp_to_u8(int32_t acc) {
    if (acc >= (int32_t(256) << kPrecisionBits)) return 255;
    if (acc <= 0) return 0;
    return uint8_t(acc >> kPrecisionBits);
}

// Horizontal pass with every output pixel taking exactly N taps (weights zero-padded): the tap
// loop is unrolled and the pixels' sums interleave. Adding a zero-weighted input adds 0, so the
// sums are those of the variable-count loop, bit for bit.
template <int N>
void resample_rows_fixed(const Image& in, int row_begin, int rows, const int* first, const int32_t* weights,
                         Image& out) {
    const int out_w = out.width;
#pragma omp parallel for schedule(static) if (int64_t(rows) * out_w > 65536)
    for (int y = 0; y < rows; ++y) {
        const uint8_t* src = &in.rgb[size_t(y + row_begin) * in.width * 3];
        uint8_t* dst = &out.rgb[size_t(y) * out_w * 3];
        for (int x = 0; x < out_w; ++x) {
            const int32_t* k = weights + size_t(x) * N;
            const uint8_t* s = src + size_t(first[x]) * 3;
            int32_t r = 1 << (kPrecisionBits - 1), g = r, b = r; // +0.5 for rounding
            for (int i = 0; i < N; ++i) {
                r += int32_t(s[3 * i + 0]) * k[i];
                g += int32_t(s[3 * i + 1]) * k[i];
                b += int32_t(s[3 * i + 2]) * k[i];
            }
            dst[3 * x + 0] = clamp_to_u8(r);
            dst[3 * x + 1] = clamp_to_u8(g);
            dst[3 * x + 2] = clamp_to_u8(b);
        }
    }
}

// Horizontal pass: out [rows, a.first.size(), 3] from in's rows [row_begin, row_begin + rows);
// a.first indexes in's columns.
void resample_rows(const Image& in, int row_begin, int rows, const AxisWeights& a, Image& out) {
    const int out_w = out.width;
    // The common case (at most 8 taps, the input at least as wide): pad every pixel's taps to
    // the most any pixel has, moving a window that would run past the right edge left (its
    // weights right, zeros in front), and run the unrolled kernel.
    const int n = *std::max_element(a.count.begin(), a.count.end());
    if (n <= 8 && n <= in.width) {
        std::vector<int> first(a.first);
        std::vector<int32_t> weights(size_t(out_w) * n, 0);
        for (int x = 0; x < out_w; ++x) {
            const int shift = std::max(first[x] + n - in.width, 0);
            first[x] -= shift;
            for (int i = 0; i < a.count[x]; ++i)
                weights[size_t(x) * n + shift + i] = a.weights[size_t(x) * a.taps + i];
        }
        switch (n) {
        case 1:
            return resample_rows_fixed<1>(in, row_begin, rows, first.data(), weights.data(), out);
        case 2:
            return resample_rows_fixed<2>(in, row_begin, rows, first.data(), weights.data(), out);
        case 3:
            return resample_rows_fixed<3>(in, row_begin, rows, first.data(), weights.data(), out);
        case 4:
            return resample_rows_fixed<4>(in, row_begin, rows, first.data(), weights.data(), out);
        case 5:
            return resample_rows_fixed<5>(in, row_begin, rows, first.data(), weights.data(), out);
        case 6:
            return resample_rows_fixed<6>(in, row_begin, rows, first.data(), weights.data(), out);
        case 7:
            return resample_rows_fixed<7>(in, row_begin, rows, first.data(), weights.data(), out);
        default:
            return resample_rows_fixed<8>(in, row_begin, rows, first.data(), weights.data(), out);
        }
    }
#pragma omp parallel for schedule(static) if (int64_t(rows) * out_w > 65536)
    for (int y = 0; y < rows; ++y) {
        const uint8_t* src = &in.rgb[size_t(y + row_begin) * in.width * 3];
        uint8_t* dst = &out.rgb[size_t(y) * out_w * 3];
        for (int x = 0; x < out_w; ++x) {
            const int32_t* k = &a.weights[size_t(x) * a.taps];
            const uint8_t* s = src + size_t(a.first[x]) * 3;
            int32_t r = 1 << (kPrecisionBits - 1), g = r, b = r; // +0.5 for rounding
            for (int i = 0; i < a.count[x]; ++i) {
                r += int32_t(s[3 * i + 0]) * k[i];
                g += int32_t(s[3 * i + 1]) * k[i];
                b += int32_t(s[3 * i + 2]) * k[i];
            }
            dst[3 * x + 0] = clamp_to_u8(r);
            dst[3 * x + 1] = clamp_to_u8(g);
            dst[3 * x + 2] = clamp_to_u8(b);
        }
    }
}

// Vertical pass: out [a.first.size(), out.width, 3] from in's columns [col_begin, col_begin +
// out.width); a.first indexes in's rows.
void resample_columns(const Image& in, int col_begin, const AxisWeights& a, Image& out) {
    const size_t in_stride = size_t(in.width) * 3;
    const size_t out_stride = size_t(out.width) * 3;
#pragma omp parallel if (int64_t(out.height) * out.width > 65536)
    {
        std::vector<int32_t> row(out_stride); // one output row's sums, per thread
        int32_t* acc = row.data();
#pragma omp for schedule(static)
        for (int y = 0; y < out.height; ++y) {
            const int32_t* k = &a.weights[size_t(y) * a.taps];
            const uint8_t* src = &in.rgb[size_t(a.first[y]) * in_stride + size_t(col_begin) * 3];
            uint8_t* dst = &out.rgb[size_t(y) * out_stride];
            // Tap by tap over the whole row (contiguous, vectorised): the same sums as PIL's.
            std::fill(acc, acc + out_stride, int32_t(1) << (kPrecisionBits - 1));
            // (omp simd: vectorised without a runtime alias check, uint8_t may alias the sums.)
            for (int i = 0; i < a.count[y]; ++i) {
                const uint8_t* s = src + i * in_stride;
                const int32_t w = k[i];
#pragma omp simd
                for (size_t c = 0; c < out_stride; ++c) acc[c] += int32_t(s[c]) * w;
            }
#pragma omp simd
            for (size_t c = 0; c < out_stride; ++c) dst[c] = clamp_to_u8(acc[c]);
        }
    }
}

Image blank(int width, int height) {
    return Image{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
}

// The window [x0, x0 + w) x [y0, y0 + h) of PIL's resize of `image` to width x height, without
// the rest: the same weights, pass order and rounding, so its pixels are those of the whole
// resize; the work and memory follow the window (and the input it reads), not the full size.
Image resize_window(const Image& image, int width, int height, int x0, int y0, int w, int h,
                    Interpolation interpolation) {
    const bool horizontal = width != image.width;
    const bool vertical = height != image.height;
    AxisWeights ax =
        horizontal ? axis_weights(image.width, width, x0, w, interpolation) : identity_weights(x0, w);
    AxisWeights ay =
        vertical ? axis_weights(image.height, height, y0, h, interpolation) : identity_weights(y0, h);
    // Each pass rounds and clamps to uint8, so the order of the passes shows in the result.
    // Pillow 13 runs the vertical pass first when the height loses more than twice as many
    // pixels as the width (python-pillow/Pillow#9549; found to hold exactly by testing
    // Pillow 13.0 on a few hundred shapes), else the horizontal pass first as before. (The
    // order decides on the whole sizes, whatever the window.)
    const bool vertical_first =
        horizontal && vertical && height < image.height && image.height - height > 2 * (image.width - width);
    if (vertical_first) {
        // Only the input columns the horizontal pass will read go through the vertical pass.
        const int col_begin = ax.input_begin();
        Image tmp = blank(ax.input_end() - col_begin, h);
        resample_columns(image, col_begin, ay, tmp);
        ax.shift_inputs(col_begin);
        Image out = blank(w, h);
        resample_rows(tmp, 0, h, ax, out);
        return out;
    }
    // Only the input rows the vertical pass will read go through the horizontal pass.
    const int row_begin = ay.input_begin();
    Image tmp = blank(w, ay.input_end() - row_begin);
    resample_rows(image, row_begin, tmp.height, ax, tmp);
    ay.shift_inputs(row_begin);
    Image out = blank(w, h);
    resample_columns(tmp, 0, ay, out);
    return out;
}

// torchvision's Resize(size) output size: the shorter side becomes `size`, the longer
// int(size * long / short) with Python's true division.
void shorter_side_size(const Image& image, int size, int& width, int& height) {
    const bool portrait = image.width <= image.height;
    const int64_t short_side = portrait ? image.width : image.height;
    const int64_t long_side = portrait ? image.height : image.width;
    if (short_side == size) {
        width = image.width;
        height = image.height;
        return;
    }
    const double new_long = std::max(double(int64_t(size) * long_side) / double(short_side), 1.0);
    EFFNET_CHECK(new_long < 2147483647.0, "resize: " + std::to_string(image.width) + "x" +
                                              std::to_string(image.height) + " with shorter side " +
                                              std::to_string(size) + " is too long a side");
    width = portrait ? size : int(new_long);
    height = portrait ? int(new_long) : size;
}

// torchvision's CenterCrop(size) on a width x height image: the crop's pixel (x, y) is the
// image's (x + offset_x, y + offset_y) where that is inside the image, else zero padding.
struct CropWindow {
    int offset_x = 0, offset_y = 0;
    int x0 = 0, y0 = 0, x1 = 0, y1 = 0; // the image pixels the crop holds, [x0, x1) x [y0, y1)
};

CropWindow crop_window(int width, int height, int size) {
    // Zero padding first when the image is smaller (left/top get the smaller half).
    const int pad_left = size > width ? (size - width) / 2 : 0;
    const int pad_top = size > height ? (size - height) / 2 : 0;
    const int pad_right = size > width ? (size - width + 1) / 2 : 0;
    const int pad_bottom = size > height ? (size - height + 1) / 2 : 0;
    const int padded_w = width + pad_left + pad_right;
    const int padded_h = height + pad_top + pad_bottom;
    // Python's round() rounds half to even; so does nearbyint in the default rounding mode.
    CropWindow c;
    c.offset_y = int(std::nearbyint((padded_h - size) / 2.0)) - pad_top;
    c.offset_x = int(std::nearbyint((padded_w - size) / 2.0)) - pad_left;
    c.x0 = std::max(c.offset_x, 0);
    c.y0 = std::max(c.offset_y, 0);
    c.x1 = std::min(c.offset_x + size, width);
    c.y1 = std::min(c.offset_y + size, height);
    return c;
}

// Copies window (the image's pixels [c.x0, c.x1) x [c.y0, c.y1)) into a zeroed size x size crop.
Image place_in_crop(const Image& window, const CropWindow& c, int size) {
    Image out = blank(size, size);
    for (int y = c.y0; y < c.y1; ++y)
        std::copy_n(&window.rgb[size_t(y - c.y0) * window.width * 3], size_t(c.x1 - c.x0) * 3,
                    &out.rgb[(size_t(y - c.offset_y) * size + (c.x0 - c.offset_x)) * 3]);
    return out;
}

void check_image(const Image& image, const char* what) {
    EFFNET_CHECK(image.width > 0 && image.height > 0 &&
                     image.rgb.size() == size_t(image.width) * size_t(image.height) * 3,
                 std::string(what) + ": image is empty or its pixel buffer does not match " +
                     std::to_string(image.width) + "x" + std::to_string(image.height) + "x3");
}

void check_preprocess(const Preprocess& p) {
    constexpr int kMax = limits::kMaxPreprocessSide;
    EFFNET_CHECK(p.resize >= 1 && p.resize <= kMax,
                 "preprocess: resize must be in [1, " + std::to_string(kMax) +
                     "] (limits::kMaxPreprocessSide), got " + std::to_string(p.resize));
    EFFNET_CHECK(p.crop >= 1 && p.crop <= kMax, "preprocess: crop must be in [1, " + std::to_string(kMax) +
                                                    "] (limits::kMaxPreprocessSide), got " +
                                                    std::to_string(p.crop));
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
    if (width == image.width && height == image.height) return image;
    return resize_window(image, width, height, 0, 0, width, height, interpolation);
}

Image resize_shorter_side(const Image& image, int size, Interpolation interpolation) {
    check_image(image, "resize");
    EFFNET_CHECK(size >= 1, "resize: size must be >= 1, got " + std::to_string(size));
    int w = 0, h = 0;
    shorter_side_size(image, size, w, h);
    if (w == image.width && h == image.height) return image;
    return resize_image(image, w, h, interpolation);
}

Image center_crop(const Image& image, int size) {
    check_image(image, "center crop");
    EFFNET_CHECK(size >= 1, "center crop: size must be >= 1, got " + std::to_string(size));
    const CropWindow c = crop_window(image.width, image.height, size);
    Image window = blank(c.x1 - c.x0, c.y1 - c.y0);
    for (int y = c.y0; y < c.y1; ++y)
        std::copy_n(&image.rgb[(size_t(y) * image.width + c.x0) * 3], size_t(window.width) * 3,
                    &window.rgb[size_t(y - c.y0) * window.width * 3]);
    return place_in_crop(window, c, size);
}

namespace {

// Shared by both entry points: out[3, crop, crop] = (pixel / 255 - mean) / std.
void preprocess_into(const Image& image, const Preprocess& p, const float mean[3], const float stdev[3],
                     float* out) {
    check_preprocess(p);
    EFFNET_CHECK(out != nullptr, "preprocess: output pointer is null");
    const Interpolation interpolation = parse_interpolation(p.interpolation);
    check_image(image, "preprocess");
    // Resize then crop, computing only the resized pixels the crop keeps: a 10000x10 image
    // resized to 256000x256 for a 224 crop costs a 224x224 window, not 196 MB.
    int width = 0, height = 0;
    shorter_side_size(image, p.resize, width, height);
    const CropWindow c = crop_window(width, height, p.crop);
    const Image window =
        resize_window(image, width, height, c.x0, c.y0, c.x1 - c.x0, c.y1 - c.y0, interpolation);
    const Image cropped = place_in_crop(window, c, p.crop);
    const size_t plane = size_t(p.crop) * p.crop;
    // As ToTensor then Normalize: float32 divide by 255, subtract, divide; computed once for
    // each of the 256 levels of each channel (the same float operations, so the same values).
    float table[3][256];
    for (int c = 0; c < 3; ++c)
        for (int v = 0; v < 256; ++v) table[c][v] = (float(v) / 255.0f - mean[c]) / stdev[c];
    for (int c = 0; c < 3; ++c) {
        const float* t = table[c];
        float* o = out + c * plane;
        const uint8_t* px = cropped.rgb.data() + c;
        for (size_t i = 0; i < plane; ++i) o[i] = t[px[i * 3]];
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
