// Training and validation transforms. RandomResizedCrop follows torchvision's get_params;
// resampling uses the library's PIL-exact resize, so the pixels match torchvision on PIL images.
#include <cmath>

#include "effnet/error.hpp"
#include "effnet/train/augment.hpp"

namespace effnet::train {
namespace {

// Python's round(): half to even (the default floating-point rounding mode).
int round_half_even(double x) {
    return int(std::nearbyint(x));
}

void check_image(const Image& image) {
    EFFNET_CHECK(image.width > 0 && image.height > 0 &&
                     image.rgb.size() == size_t(image.width) * size_t(image.height) * 3,
                 "transform: invalid image " + std::to_string(image.width) + "x" +
                     std::to_string(image.height));
}

// uint8 RGB [out, out, 3] -> normalised CHW float [3, out, out], mirrored when asked.
void to_chw(const Image& image, bool flip, const Normalize& norm, float* dst) {
    const int w = image.width, h = image.height;
    for (int c = 0; c < 3; ++c) {
        const float scale = 1.0f / (255.0f * norm.std[c]);
        const float shift = norm.mean[c] / norm.std[c];
        float* plane = dst + size_t(c) * h * w;
        for (int y = 0; y < h; ++y)
            for (int x = 0; x < w; ++x) {
                const int sx = flip ? w - 1 - x : x;
                const uint8_t v = image.rgb[(size_t(y) * w + sx) * 3 + c];
                plane[size_t(y) * w + x] = float(v) * scale - shift;
            }
    }
}

} // namespace

CropBox random_resized_crop_box(int width, int height, Rng& rng, double scale_lo, double scale_hi,
                                double ratio_lo, double ratio_hi) {
    EFFNET_CHECK(width > 0 && height > 0, "random_resized_crop_box: empty image");
    EFFNET_CHECK(0 < scale_lo && scale_lo <= scale_hi && 0 < ratio_lo && ratio_lo <= ratio_hi,
                 "random_resized_crop_box: invalid scale or ratio range");
    const double area = double(width) * double(height);
    const double log_lo = std::log(ratio_lo), log_hi = std::log(ratio_hi);
    for (int attempt = 0; attempt < 10; ++attempt) {
        const double target_area = area * rng.uniform(scale_lo, scale_hi);
        const double aspect = std::exp(rng.uniform(log_lo, log_hi));
        const int w = round_half_even(std::sqrt(target_area * aspect));
        const int h = round_half_even(std::sqrt(target_area / aspect));
        if (0 < w && w <= width && 0 < h && h <= height) {
            CropBox box;
            box.y = int(rng.below(height - h + 1));
            box.x = int(rng.below(width - w + 1));
            box.width = w;
            box.height = h;
            return box;
        }
    }
    // Fallback: the central crop, its aspect ratio clamped into [ratio_lo, ratio_hi].
    const double in_ratio = double(width) / double(height);
    int w = width, h = height;
    if (in_ratio < ratio_lo) {
        h = round_half_even(w / ratio_lo);
    } else if (in_ratio > ratio_hi) {
        w = round_half_even(h * ratio_hi);
    }
    CropBox box;
    box.width = std::max(1, std::min(w, width));
    box.height = std::max(1, std::min(h, height));
    box.x = (width - box.width) / 2;
    box.y = (height - box.height) / 2;
    return box;
}

void crop_resize_normalize(const Image& image, const CropBox& box, int out, bool flip, const Normalize& norm,
                           float* dst) {
    check_image(image);
    EFFNET_CHECK(out >= 1, "crop_resize_normalize: output size must be >= 1");
    EFFNET_CHECK(box.x >= 0 && box.y >= 0 && box.width >= 1 && box.height >= 1 &&
                     box.x + box.width <= image.width && box.y + box.height <= image.height,
                 "crop_resize_normalize: crop box outside the image");
    Image crop;
    crop.width = box.width;
    crop.height = box.height;
    crop.rgb.resize(size_t(box.width) * box.height * 3);
    for (int y = 0; y < box.height; ++y) {
        const uint8_t* src = image.rgb.data() + ((size_t(box.y) + y) * image.width + box.x) * 3;
        std::copy(src, src + size_t(box.width) * 3, crop.rgb.data() + size_t(y) * box.width * 3);
    }
    const Image resized = (crop.width == out && crop.height == out)
                              ? crop
                              : resize_image(crop, out, out, Interpolation::Bilinear);
    to_chw(resized, flip, norm, dst);
}

void train_transform(const Image& image, int out, Rng& rng, const Normalize& norm, float* dst) {
    check_image(image);
    const CropBox box = random_resized_crop_box(image.width, image.height, rng);
    const bool flip = rng.uniform() < 0.5;
    crop_resize_normalize(image, box, out, flip, norm, dst);
}

void eval_transform(const Image& image, int resize, int crop, const Normalize& norm, float* dst,
                    const std::string& interpolation) {
    check_image(image);
    EFFNET_CHECK(resize >= 1 && crop >= 1, "eval_transform: sizes must be >= 1");
    Preprocess p;
    p.resize = resize;
    p.crop = crop;
    p.interpolation = interpolation;
    for (int c = 0; c < 3; ++c) {
        p.mean[c] = norm.mean[c];
        p.std[c] = norm.std[c];
    }
    preprocess_image(image, p, dst);
}

} // namespace effnet::train
