// Images: decoding (effnet::load_image / decode_image), effnet-classify's preprocessing, and
// its top-k (softmax in double, ties to the lower class index).
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.hpp"
#include "effnet/error.hpp"
#include "effnet/image.hpp"

namespace effnet::py {

namespace {

nb::object preprocessed(const Image& image, const Preprocess& pre) {
    parse_interpolation(pre.interpolation);
    EFFNET_CHECK(pre.resize >= 1 && pre.crop >= 1, "preprocess: resize and crop must be >= 1");
    std::vector<float> out(size_t(3) * pre.crop * pre.crop);
    {
        nb::gil_scoped_release release;
        preprocess_image(image, pre, out.data());
    }
    return host_array(std::move(out), {3, size_t(pre.crop), size_t(pre.crop)}, false);
}

Image image_from_array(nb::handle obj) {
    AnyArray a = as_array(obj, "image");
    if (a.device_type() != nb::device::cpu::value)
        value_error("image must be on the CPU, got " + device_name(a.device_type(), a.device_id()));
    if (!(a.dtype() == nb::dtype<uint8_t>()))
        type_error("image must be uint8 [height, width, 3] (RGB), got " + dtype_name(a.dtype()));
    if (a.ndim() != 3 || a.shape(2) != 3 || a.shape(0) < 1 || a.shape(1) < 1)
        value_error("image must be uint8 [height, width, 3] (RGB), got shape " + shape_text(a));
    const ImageLimits limits;
    if (int64_t(a.shape(0)) > limits.max_side || int64_t(a.shape(1)) > limits.max_side ||
        int64_t(a.shape(0)) * int64_t(a.shape(1)) > limits.max_pixels)
        value_error("image of " + shape_text(a) + " exceeds the decoder's limits (" +
                    std::to_string(limits.max_side) + " a side, " + std::to_string(limits.max_pixels) +
                    " pixels)");
    Image img;
    img.height = int(a.shape(0));
    img.width = int(a.shape(1));
    img.rgb.resize(size_t(img.height) * img.width * 3);
    const auto* base = static_cast<const uint8_t*>(a.data());
    const int64_t s0 = a.stride(0), s1 = a.stride(1), s2 = a.stride(2);
    for (int y = 0; y < img.height; ++y)
        for (int x = 0; x < img.width; ++x)
            for (int c = 0; c < 3; ++c)
                img.rgb[(size_t(y) * img.width + x) * 3 + c] = base[y * s0 + x * s1 + c * s2];
    return img;
}

} // namespace

void bind_images(nb::module_& m) {
    m.def(
        "load_image",
        [](const std::string& path) {
            Image img;
            {
                nb::gil_scoped_release release;
                img = load_image(path);
            }
            auto* owned = new std::vector<uint8_t>(std::move(img.rgb));
            nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<uint8_t>*>(p); });
            const size_t shape[3] = {size_t(img.height), size_t(img.width), 3};
            return nb::ndarray<nb::numpy, uint8_t>(owned->data(), 3, shape, owner);
        },
        nb::arg("path"),
        "Decodes an image file (JPEG, PNG, BMP, TGA) as effnet-classify does: uint8 [height, width, 3] RGB.");
    m.def(
        "_preprocess_file",
        [](const std::string& path, const Preprocess& pre) {
            Image img;
            {
                nb::gil_scoped_release release;
                img = load_image(path);
            }
            return preprocessed(img, pre);
        },
        nb::arg("path"), nb::arg("preprocess"));
    m.def(
        "_preprocess_array",
        [](nb::handle image, const Preprocess& pre) { return preprocessed(image_from_array(image), pre); },
        nb::arg("image"), nb::arg("preprocess"));
    m.def("has_image_extension", &has_image_extension, nb::arg("path"),
          "True for what a directory scan picks up: .jpg .jpeg .png .bmp .tga (any case).");
    m.def(
        "_top_k",
        [](nb::handle row_obj, int k) {
            AnyArray a = as_array(row_obj, "logits");
            if (a.device_type() != nb::device::cpu::value) value_error("logits must be on the CPU");
            check_float32_contiguous("logits", a);
            if (a.ndim() != 1 || a.shape(0) < 1) value_error("logits must be one row [classes]");
            if (k < 1) value_error("top_k must be >= 1, got " + std::to_string(k));
            const float* logits = static_cast<const float*>(a.data());
            const int classes = int(a.shape(0));
            // effnet-classify's top_k: softmax in double (subtracting the max), best first.
            double max_logit = logits[0];
            for (int i = 1; i < classes; ++i) max_logit = std::max(max_logit, double(logits[i]));
            std::vector<double> p(classes);
            double total = 0.0;
            for (int i = 0; i < classes; ++i) total += (p[i] = std::exp(double(logits[i]) - max_logit));
            std::vector<std::pair<int, double>> all(classes);
            for (int i = 0; i < classes; ++i) all[i] = {i, p[i] / total};
            k = std::min(k, classes);
            std::partial_sort(all.begin(), all.begin() + k, all.end(), [](const auto& x, const auto& y) {
                return x.second > y.second || (x.second == y.second && x.first < y.first);
            });
            all.resize(k);
            return all;
        },
        nb::arg("logits"), nb::arg("k"));
}

} // namespace effnet::py
