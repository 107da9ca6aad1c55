#pragma once
// JPEG decoding through libjpeg-turbo's libjpeg API, with the settings Pillow uses, so that
// the pixels equal Pillow's Image.open(path).convert("RGB") (libeffnet/jpeg_decode.cpp says
// what that takes). Internal: effnet::decode_image calls it for JPEG streams.
#include <cstddef>
#include <cstdint>
#include <string>

#include "effnet/image.hpp"

namespace effnet::detail {

// Decodes a JPEG stream that starts with FF D8 and whose marker structure decode_image has
// already walked (it ends in EOI). Throws effnet::Error "NAME: reason" on anything libjpeg
// refuses, on a premature end of data, and on sizes over `limits` (checked on the header,
// before pixel memory is allocated).
Image decode_jpeg(const uint8_t* bytes, size_t size, const std::string& name, const ImageLimits& limits);

} // namespace effnet::detail
