// The image decoders (JPEG, PNG, BMP, TGA) in one harness. decode_image picks the decoder by
// signature and tries TGA (which has none) only for a .tga name, so naming every input
// "fuzz.tga" reaches all four: a mutated PNG that loses its signature still tests the TGA
// path, and one corpus lets libFuzzer carry structure between formats. A decoded image that
// is small goes through preprocessing too (resize + crop to a few pixels), so that every
// decodable shape reaches the resampler.
#include <vector>

#include "effnet/image.hpp"
#include "expect_errors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // Smaller than the defaults (50 Mpixels) so that each execution stays fast: the decoders'
    // paths are the same, and the size checks see headers far above these limits anyway.
    effnet::ImageLimits limits;
    limits.max_pixels = 4'000'000;
    limits.max_side = 16384;
    expect_only_effnet_errors([&] {
        const effnet::Image image = effnet::decode_image(data, size, "fuzz.tga", limits);
        if (int64_t(image.width) * image.height > 512 * 512) return;
        effnet::Preprocess p;
        p.resize = 9;
        p.crop = 7;
        p.interpolation = size % 2 ? "bicubic" : "bilinear";
        std::vector<float> out(3 * 7 * 7);
        effnet::preprocess_image(image, p, out.data());
    });
    return 0;
}
