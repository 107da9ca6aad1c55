// effnet.Model and effnet.Preprocess: weights loading, saving, parameters as NumPy copies.
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstring>

#include "common.hpp"
#include "effnet/config.hpp"
#include "effnet/error.hpp"
#include "effnet/image.hpp"
#include "effnet/model.hpp"

namespace effnet::py {

namespace {

nb::object param_copy(const Tensor& t) {
    std::vector<size_t> shape(t.shape.begin(), t.shape.end());
    return host_array(std::vector<float>(t.data), shape, false);
}

std::tuple<float, float, float> triple(const float* v) {
    return {v[0], v[1], v[2]};
}

} // namespace

void bind_model(nb::module_& m) {
    nb::class_<Preprocess>(
        m, "Preprocess",
        "How images are prepared for a model (what effnet-classify does): the shorter side "
        "resized to `resize` (PIL's antialiased bilinear or bicubic), a center crop of "
        "`crop` x `crop`, x / 255, then (x - mean) / std per channel.")
        .def(nb::init<>())
        .def_rw("resize", &Preprocess::resize)
        .def_rw("crop", &Preprocess::crop)
        .def_rw("interpolation", &Preprocess::interpolation, "'bilinear' or 'bicubic'")
        .def_prop_rw(
            "mean", [](const Preprocess& p) { return triple(p.mean); },
            [](Preprocess& p, std::tuple<float, float, float> v) {
                p.mean[0] = std::get<0>(v), p.mean[1] = std::get<1>(v), p.mean[2] = std::get<2>(v);
            })
        .def_prop_rw(
            "std", [](const Preprocess& p) { return triple(p.std); },
            [](Preprocess& p, std::tuple<float, float, float> v) {
                p.std[0] = std::get<0>(v), p.std[1] = std::get<1>(v), p.std[2] = std::get<2>(v);
            })
        .def("__repr__", [](const Preprocess& p) {
            char buf[256];
            std::snprintf(
                buf, sizeof buf,
                "Preprocess(resize=%d, crop=%d, interpolation='%s', mean=(%g, %g, %g), std=(%g, %g, %g))",
                p.resize, p.crop, p.interpolation.c_str(), p.mean[0], p.mean[1], p.mean[2], p.std[0],
                p.std[1], p.std[2]);
            return std::string(buf);
        });

    nb::class_<Model>(m, "Model", nb::dynamic_attr(),
                      "A network: its configuration and every parameter and buffer under canonical names "
                      "(PyTorch layouts). Made by effnet.load_weights or Model.random.")
        .def_static(
            "random",
            [](const std::string& preset_name, int num_classes, uint64_t seed) {
                return random_model(preset(preset_name, num_classes), seed);
            },
            nb::arg("preset"), nb::arg("num_classes") = 1000, nb::arg("seed") = 0,
            "A preset's architecture ('b0'..'b7', 'lite0'..'lite4') with seeded random weights.")
        .def(
            "copy", [](const Model& m) { return Model(m); }, "A deep copy.")
        .def_prop_ro(
            "name", [](const Model& m) { return m.config.name; }, "'b0'..'b7', 'lite0'..'lite4', or 'custom'")
        .def_prop_ro(
            "family", [](const Model& m) { return m.family; },
            "where the weights' names came from: torchvision, timm, lukemelas or effnet")
        .def_prop_ro("num_classes", [](const Model& m) { return m.config.num_classes; })
        .def_prop_ro(
            "resolution", [](const Model& m) { return m.config.resolution; },
            "the preset's native input size")
        .def_prop_ro("activation",
                     [](const Model& m) { return std::string(activation_name(m.config.activation)); })
        .def_prop_ro("padding", [](const Model& m) { return std::string(padding_name(m.config.padding)); })
        .def_prop_ro("bn_eps", [](const Model& m) { return m.config.bn_eps; })
        .def_prop_ro("num_blocks", [](const Model& m) { return int(m.config.blocks.size()); })
        .def_prop_ro("num_stages", [](const Model& m) { return m.config.num_stages(); })
        .def_prop_ro("stem_channels", [](const Model& m) { return m.config.stem_channels; })
        .def_prop_ro("head_channels", [](const Model& m) { return m.config.head_channels; })
        .def_prop_ro(
            "num_parameters", [](const Model& m) { return parameter_count(m.config); },
            "trainable parameters (running statistics not counted)")
        .def_prop_rw(
            "preprocess", [](const Model& m) { return m.config.preprocess; },
            [](Model& m, const Preprocess& p) {
                EFFNET_CHECK(p.resize >= 1 && p.crop >= 1, "preprocess: resize and crop must be >= 1");
                parse_interpolation(p.interpolation);
                m.config.preprocess = p;
            },
            "the preprocessing the weights ask for (a copy; assign to change it)")
        .def_prop_ro(
            "source_names", [](const Model& m) { return m.source_names; },
            "{canonical name: the name in the file it was loaded from}")
        .def_prop_ro(
            "metadata", [](const Model& m) { return m.metadata; }, "extra metadata of the weights file")
        .def_prop_ro(
            "parameter_names",
            [](const Model& m) {
                std::vector<std::string> names;
                for (const ParamSpec& s : parameter_specs(m.config)) names.push_back(s.name);
                return names;
            },
            "canonical names of every parameter and buffer, in network order")
        .def(
            "parameter", [](const Model& m, const std::string& name) { return param_copy(m.param(name)); },
            nb::arg("name"), "A float32 NumPy copy of one parameter (canonical name).")
        .def(
            "parameters",
            [](const Model& m) {
                nb::dict d;
                for (const ParamSpec& s : parameter_specs(m.config))
                    d[nb::str(s.name.c_str())] = param_copy(m.param(s.name));
                return d;
            },
            "{canonical name: float32 NumPy copy}, in network order.")
        .def(
            "set_parameter",
            [](Model& m, const std::string& name, nb::handle value) {
                Tensor& t = m.param(name);
                AnyArray a = as_array(value, ("parameter " + name).c_str());
                if (a.device_type() != nb::device::cpu::value)
                    value_error("set_parameter: the array must be on the CPU, got " +
                                device_name(a.device_type(), a.device_id()));
                check_float32_contiguous(("parameter " + name).c_str(), a);
                Shape shape;
                for (size_t i = 0; i < a.ndim(); ++i) shape.push_back(int64_t(a.shape(i)));
                if (shape != t.shape)
                    value_error("set_parameter: " + name + " has shape " + shape_str(t.shape) + ", got " +
                                shape_str(shape));
                Tensor copy(shape);
                std::memcpy(copy.ptr(), a.data(), sizeof(float) * size_t(copy.numel()));
                const int64_t bad = first_invalid_element(name, copy);
                EFFNET_CHECK(bad < 0,
                             "set_parameter: " + name + " element " + std::to_string(bad) +
                                 " is not a valid value (non-finite, or a negative running variance)");
                t = std::move(copy);
            },
            nb::arg("name"), nb::arg("value"),
            "Replaces one parameter with a copy of a float32 array of its shape.")
        .def(
            "save", [](const Model& m, const std::string& path) { save_weights(m, path); }, nb::arg("path"),
            "Writes the weights (canonical names, metadata with the config and preprocessing, a checksum).")
        .def("__repr__", [](const Model& m) {
            return "<effnet.Model " + m.config.name + " (" + m.family + "), " +
                   std::to_string(m.config.num_classes) + " classes, " +
                   std::to_string(parameter_count(m.config)) + " parameters>";
        });

    m.def(
        "_load_weights",
        [](const std::string& path, std::optional<std::string> preset, std::optional<std::string> padding,
           std::optional<float> bn_eps, std::optional<std::string> activation) {
            LoadOptions o;
            if (preset) o.preset = *preset;
            if (padding) o.padding = parse_padding(*padding);
            if (bn_eps) o.bn_eps = *bn_eps;
            if (activation) o.activation = parse_activation(*activation);
            nb::gil_scoped_release release;
            return load_weights(path, o);
        },
        nb::arg("path"), nb::arg("preset") = nb::none(), nb::arg("padding") = nb::none(),
        nb::arg("bn_eps") = nb::none(), nb::arg("activation") = nb::none());
    m.def("preset_names", &preset_names, "The presets: b0..b7, lite0..lite4.");
}

} // namespace effnet::py
