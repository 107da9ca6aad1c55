#pragma once
// Images and augmentation: torchvision's RandomResizedCrop + flip, and the validation transform.
#include <string>

#include "effnet/image.hpp"
#include "effnet/train/rng.hpp"

namespace effnet::train {

struct Normalize {
    float mean[3] = {0.485f, 0.456f, 0.406f};
    float std[3] = {0.229f, 0.224f, 0.225f};
};

struct CropBox {
    int x = 0, y = 0, width = 0, height = 0;
};
// torchvision's RandomResizedCrop.get_params: up to 10 attempts of area in scale * image area,
// log-uniform aspect ratio; fallback: the central crop with the ratio clamped to the range.
CropBox random_resized_crop_box(int width, int height, Rng& rng, double scale_lo = 0.08,
                                double scale_hi = 1.0, double ratio_lo = 3.0 / 4.0,
                                double ratio_hi = 4.0 / 3.0);

// Crops `box` out of `image`, resizes it to out x out (PIL's antialiased bilinear, as
// torchvision's RandomResizedCrop on PIL images), optionally mirrors it, scales to [0, 1],
// normalises and writes CHW float into dst [3, out, out].
void crop_resize_normalize(const Image& image, const CropBox& box, int out, bool flip, const Normalize& norm,
                           float* dst);

// Training transform: RandomResizedCrop + horizontal flip (p = 0.5) with the given RNG.
void train_transform(const Image& image, int out, Rng& rng, const Normalize& norm, float* dst);

// Validation transform: resize the shorter side to `resize` with `interpolation` ("bilinear" |
// "bicubic"), center crop `crop` x `crop`, normalise (effnet::preprocess_image).
void eval_transform(const Image& image, int resize, int crop, const Normalize& norm, float* dst,
                    const std::string& interpolation = "bilinear");

} // namespace effnet::train
