#pragma once
// Images in, network input out: decoding (JPEG through libjpeg-turbo with Pillow's settings;
// PNG, BMP, TGA through stb_image) and the
// preprocessing torchvision applies to PIL images (resize the shorter side with PIL's
// antialiased filters, center crop, scale to [0, 1], normalise), reproduced to PIL's uint8
// output so that weights see the input they were trained on.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "effnet/config.hpp"

namespace effnet {

// 8-bit RGB, rows top to bottom. rgb is [height, width, 3].
struct Image {
    int width = 0;
    int height = 0;
    std::vector<uint8_t> rgb;
};

// What decoding accepts. Checked on the header, before any pixel memory is allocated.
struct ImageLimits {
    int64_t max_pixels = 50'000'000; // width * height
    int max_side = 32768;            // width and height each
    int64_t max_file_bytes = int64_t(1) << 30;
};

// Reads and decodes one file. Grayscale becomes RGB, alpha is dropped (as PIL's
// convert("RGB")), 16-bit samples keep their high byte, CMYK/YCCK JPEGs are converted.
// JPEG pixels equal Pillow's Image.open(path).convert("RGB") exactly: libjpeg-turbo with
// libjpeg's defaults as Pillow (ISLOW IDCT, fancy upsampling, no scaling), CMYK taken as
// Adobe-inverted and converted with Pillow's formula, EXIF orientation not applied (as Pillow
// without ImageOps.exif_transpose). Corrupt entropy-coded data that libjpeg recovers from with
// a warning decodes as in Pillow (which ignores the warnings); a JPEG that ends early (no EOI
// marker, premature end of data) is refused, as Pillow raises "image file is truncated"
// (Pillow does decode a stream missing only its final EOI when its reader happened not to look
// past the last byte: effnet refuses that too), and so is a stream of more than 1000 scans.
// Throws effnet::Error "PATH: reason" for a missing, unreadable, empty, oversized, truncated
// or undecodable file.
Image load_image(const std::string& path, const ImageLimits& limits = {});
// The same from bytes in memory; `name` is used in error messages.
Image decode_image(const uint8_t* bytes, size_t size, const std::string& name,
                   const ImageLimits& limits = {});

// True for the extensions a directory scan picks up: .jpg .jpeg .png .bmp .tga (any case).
bool has_image_extension(const std::string& path);

// ---- Preprocessing (libeffnet/preprocess.cpp) ----

enum class Interpolation { Bilinear, Bicubic };
Interpolation parse_interpolation(const std::string& s); // "bilinear" | "bicubic", else throws

// PIL's Image.resize(size, BILINEAR|BICUBIC) on an RGB image: separable, antialiased (the
// filter is widened by the downscale factor), 8-bit fixed-point arithmetic with PIL's
// rounding, the passes in Pillow 13's order. Matches Pillow 13's output exactly (older Pillow
// always runs the horizontal pass first: it differs for images whose height shrinks by more
// than twice the pixels their width does).
Image resize_image(const Image& image, int width, int height, Interpolation interpolation);

// torchvision's Resize(size) on a PIL image: the shorter side becomes `size`, the longer
// int(size * long / short); an image whose shorter side already is `size` is returned as is.
Image resize_shorter_side(const Image& image, int size, Interpolation interpolation);

// torchvision's CenterCrop(size): offsets int(round((h - size) / 2.0)) (round half to even);
// an image smaller than size is first zero-padded as torchvision does.
Image center_crop(const Image& image, int size);

// The whole transform of `preprocess` into out[3, crop, crop] (NCHW, one image):
// resize shorter side, center crop, x / 255, (x - mean) / std, all in float32.
void preprocess_image(const Image& image, const Preprocess& preprocess, float* out);

// As preprocess_image without the normalisation: the cropped pixels / 255 (for checking the
// resize and crop against PIL).
void preprocess_image_unnormalized(const Image& image, const Preprocess& preprocess, float* out);

} // namespace effnet
