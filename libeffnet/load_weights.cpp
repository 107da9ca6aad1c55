// load_weights: reads a safetensors file in any known naming, infers the architecture from the
// shapes, takes what shapes cannot say from metadata / options / family defaults, and checks
// that the file holds exactly the tensors that architecture needs.
#include <cmath>
#include <set>
#include <sstream>

#include "effnet/error.hpp"
#include "effnet/limits.hpp"
#include "effnet/model.hpp"
#include "effnet/safetensors.hpp"
#include "weight_names.hpp"

namespace effnet {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string trim(const std::string& s) {
    const size_t b = s.find_first_not_of(" \t");
    if (b == std::string::npos) return "";
    const size_t e = s.find_last_not_of(" \t");
    return s.substr(b, e - b + 1);
}

// Parsers for metadata values: each throws naming the file and key.
class MetadataReader {
public:
    MetadataReader(const std::map<std::string, std::string>& meta, const std::string& file)
        : meta_(meta), file_(file) {}

    const std::string* find(const std::string& key) const {
        auto it = meta_.find(key);
        return it == meta_.end() ? nullptr : &it->second;
    }
    [[noreturn]] void fail(const std::string& key, const std::string& expected) const {
        throw Error("weights '" + file_ + "': metadata '" + key + "' = '" + excerpt(meta_.at(key)) +
                    "' is not " + expected);
    }
    // One metadata number: the whole (trimmed) text must be a finite number in [lo, hi].
    double parse_number(const std::string& key, const std::string& text, double lo, double hi,
                        const std::string& expected) const {
        const std::string v = trim(text);
        size_t used = 0;
        double d = 0;
        try {
            d = std::stod(v, &used);
        } catch (const std::exception&) {
            fail(key, expected);
        }
        if (used != v.size() || !std::isfinite(d) || d < lo || d > hi) fail(key, expected);
        return d;
    }
    double number(const std::string& key, double lo, double hi, const std::string& expected) const {
        return parse_number(key, *find(key), lo, hi, expected);
    }
    int integer(const std::string& key, int lo, int hi) const {
        const double d =
            number(key, lo, hi, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
        if (d != std::floor(d)) fail(key, "an integer");
        return int(d);
    }
    std::vector<double> numbers(const std::string& key, size_t count, double lo, double hi,
                                const std::string& expected) const {
        std::vector<double> out;
        std::stringstream ss(*find(key));
        std::string item;
        while (std::getline(ss, item, ',')) {
            out.push_back(parse_number(key, item, lo, hi, expected));
        }
        if (count != 0 && out.size() != count) fail(key, expected);
        return out;
    }

private:
    const std::map<std::string, std::string>& meta_;
    const std::string& file_;
};

// The first architectural difference between two configs, or "" when they agree.
std::string first_difference(const ModelConfig& a, const ModelConfig& b) {
    auto diff = [](const std::string& what, int x, int y) {
        return what + " " + std::to_string(x) + " vs " + std::to_string(y);
    };
    if (a.in_channels != b.in_channels) return diff("input channels", a.in_channels, b.in_channels);
    if (a.stem_channels != b.stem_channels) return diff("stem channels", a.stem_channels, b.stem_channels);
    if (a.blocks.size() != b.blocks.size())
        return diff("number of blocks", int(a.blocks.size()), int(b.blocks.size()));
    for (size_t i = 0; i < a.blocks.size(); ++i) {
        const BlockConfig& x = a.blocks[i];
        const BlockConfig& y = b.blocks[i];
        const std::string blk = "block " + std::to_string(i) + " ";
        if (x.in_channels != y.in_channels) return diff(blk + "in_channels", x.in_channels, y.in_channels);
        if (x.expand_channels != y.expand_channels)
            return diff(blk + "expand_channels", x.expand_channels, y.expand_channels);
        if (x.out_channels != y.out_channels)
            return diff(blk + "out_channels", x.out_channels, y.out_channels);
        if (x.kernel != y.kernel) return diff(blk + "kernel", x.kernel, y.kernel);
        if (x.stride != y.stride) return diff(blk + "stride", x.stride, y.stride);
        if (x.se_channels != y.se_channels) return diff(blk + "se_channels", x.se_channels, y.se_channels);
        if (x.stage != y.stage) return diff(blk + "stage", x.stage, y.stage);
    }
    if (a.head_channels != b.head_channels) return diff("head channels", a.head_channels, b.head_channels);
    if (a.num_classes != b.num_classes) return diff("classes", a.num_classes, b.num_classes);
    return "";
}

// Family defaults for what shapes cannot say. A torchvision/timm/effnet file whose shapes
// equal a preset takes that preset's settings (torchvision B5..B7 use BN eps 1e-3, Lite ReLU6
// and TF padding); lukemelas models are TF ports: TF "SAME" padding, eps 1e-3, and ReLU6 for
// the Lite port (the one without squeeze-excite).
void apply_family_defaults(ModelConfig& c, const std::string& family, const ModelConfig* matching_preset) {
    if (family == "lukemelas") {
        c.padding = Padding::TfSame;
        c.bn_eps = 1e-3f;
        c.bn_momentum = 0.01f;
        bool any_se = false;
        for (const BlockConfig& b : c.blocks) any_se = any_se || b.has_se();
        c.activation = any_se ? Activation::SiLU : Activation::ReLU6;
    } else if (matching_preset) {
        c.padding = matching_preset->padding;
        c.bn_eps = matching_preset->bn_eps;
        c.activation = matching_preset->activation;
        c.bn_momentum = matching_preset->bn_momentum;
    } else {
        c.padding = Padding::Symmetric;
        c.bn_eps = 1e-5f;
        c.activation = Activation::SiLU;
    }
    if (matching_preset) {
        c.name = matching_preset->name;
        c.dropout = matching_preset->dropout;
        c.stochastic_depth = matching_preset->stochastic_depth;
        c.resolution = matching_preset->resolution;
        c.preprocess = matching_preset->preprocess;
    }
}

std::string list_preview(const std::vector<std::string>& items) {
    std::string s;
    for (size_t i = 0; i < items.size() && i < 4; ++i) s += (i ? ", " : "") + items[i];
    if (items.size() > 4) s += ", ... (" + std::to_string(items.size()) + " in all)";
    return s;
}

std::vector<int> parse_int_list(const MetadataReader& meta, const std::string& key, int lo, int hi) {
    std::vector<int> out;
    for (double d : meta.numbers(key, 0, lo, hi,
                                 "a comma-separated list of integers in [" + std::to_string(lo) + ", " +
                                     std::to_string(hi) + "]")) {
        if (d != std::floor(d)) meta.fail(key, "a list of integers");
        out.push_back(int(d));
    }
    return out;
}

} // namespace

Model load_weights(const std::string& path, const LoadOptions& options) {
    const SafetensorsFile file = SafetensorsFile::open(path);
    const std::map<std::string, std::string>& metadata = file.metadata();
    const MetadataReader meta(metadata, path);

    // Shapes of everything but the BN step counters.
    std::map<std::string, Shape> shapes;
    std::vector<std::string> names;
    for (const std::string& name : file.names()) {
        if (ends_with(name, "num_batches_tracked")) continue;
        shapes[name] = file.info(name).shape;
        names.push_back(name);
    }

    const std::string family = weights::detect_family(names, path);
    if (const std::string* f = meta.find("effnet.family")) {
        if (*f != "torchvision" && *f != "timm" && *f != "lukemelas" && *f != "effnet")
            meta.fail("effnet.family", "one of torchvision, timm, lukemelas, effnet");
        EFFNET_CHECK(*f == family, "weights '" + path + "': metadata 'effnet.family' says " + *f +
                                       " but the tensor names are " + family + "'s");
    }

    // Architecture from shapes; stages of flat-numbered blocks from metadata when given.
    std::vector<int> block_stages, block_strides;
    if (meta.find("effnet.block_stages")) block_stages = parse_int_list(meta, "effnet.block_stages", 0, 6);
    if (meta.find("effnet.block_strides")) block_strides = parse_int_list(meta, "effnet.block_strides", 1, 2);
    ModelConfig config = weights::infer_architecture(family, shapes, block_stages, path);
    if (!block_strides.empty()) {
        EFFNET_CHECK(block_strides.size() == config.blocks.size(),
                     "weights '" + path + "': metadata 'effnet.block_strides' lists " +
                         std::to_string(block_strides.size()) + " blocks, the tensors hold " +
                         std::to_string(config.blocks.size()));
        for (size_t i = 0; i < config.blocks.size(); ++i) config.blocks[i].stride = block_strides[i];
    }

    // The file must hold exactly the tensors of that architecture, in their shapes.
    const std::map<std::string, std::string> source = weights::source_names(config, family);
    std::vector<std::string> missing, misshaped, unexpected;
    std::set<std::string> used;
    const std::vector<ParamSpec> specs = parameter_specs(config);
    for (const ParamSpec& spec : specs) {
        const std::string& src = source.at(spec.name);
        used.insert(src);
        auto it = shapes.find(src);
        if (it == shapes.end())
            missing.push_back(src);
        else if (it->second != spec.shape)
            misshaped.push_back(src + " " + shape_str(it->second) + " (expected " + shape_str(spec.shape) +
                                ")");
    }
    for (const std::string& name : names)
        if (!used.count(name)) unexpected.push_back(name);
    if (!missing.empty() || !misshaped.empty() || !unexpected.empty()) {
        std::string msg = "weights '" + path + "' (" + family +
                          " names) do not fit the architecture their shapes describe:";
        if (!missing.empty()) msg += " missing " + list_preview(missing) + ";";
        if (!misshaped.empty()) msg += " wrong shape " + list_preview(misshaped) + ";";
        if (!unexpected.empty()) msg += " unexpected " + list_preview(unexpected) + ";";
        msg.pop_back();
        throw Error(msg);
    }

    // Settings: family / preset defaults, then metadata, then options.
    const ModelConfig* matching = nullptr;
    std::vector<ModelConfig> presets;
    for (const std::string& name : preset_names()) presets.push_back(preset(name, config.num_classes));
    for (const ModelConfig& p : presets)
        if (first_difference(config, p).empty()) {
            matching = &p;
            break;
        }
    apply_family_defaults(config, family, matching);

    if (meta.find("padding")) {
        try {
            config.padding = parse_padding(*meta.find("padding"));
        } catch (const Error&) {
            meta.fail("padding", "symmetric or tf_same");
        }
    }
    if (meta.find("activation")) {
        try {
            config.activation = parse_activation(*meta.find("activation"));
        } catch (const Error&) {
            meta.fail("activation", "silu or relu6");
        }
    }
    if (meta.find("bn_eps")) config.bn_eps = float(meta.number("bn_eps", 1e-12, 1.0, "a number in (0, 1]"));
    if (config.bn_eps <= 0) meta.fail("bn_eps", "positive");
    if (meta.find("bn_momentum"))
        config.bn_momentum = float(meta.number("bn_momentum", 0.0, 1.0, "a number in [0, 1]"));
    if (meta.find("dropout"))
        config.dropout = float(meta.number("dropout", 0.0, 0.999, "a number in [0, 1)"));
    if (meta.find("stochastic_depth"))
        config.stochastic_depth = float(meta.number("stochastic_depth", 0.0, 0.999, "a number in [0, 1)"));
    if (meta.find("resolution"))
        config.resolution = meta.integer("resolution", 8, limits::kMaxPreprocessSide);
    if (meta.find("preset")) {
        const std::string name = *meta.find("preset");
        if (name != "custom") {
            ModelConfig p;
            try {
                p = preset(name, config.num_classes);
            } catch (const Error&) {
                meta.fail("preset", "a known preset name or 'custom'");
            }
            const std::string d = first_difference(config, p);
            EFFNET_CHECK(d.empty(), "weights '" + path + "': metadata says preset '" + name +
                                        "' but the tensors differ: " + d + " (file vs preset)");
            config.name = p.name;
        } else {
            config.name = name;
        }
    }
    Preprocess& pre = config.preprocess;
    // The same bound as preprocessing's own: a crop of 65536 once ended in std::bad_alloc.
    if (meta.find("preprocess.resize"))
        pre.resize = meta.integer("preprocess.resize", 1, limits::kMaxPreprocessSide);
    if (meta.find("preprocess.crop"))
        pre.crop = meta.integer("preprocess.crop", 1, limits::kMaxPreprocessSide);
    if (const std::string* v = meta.find("preprocess.interpolation")) {
        if (*v != "bilinear" && *v != "bicubic") meta.fail("preprocess.interpolation", "bilinear or bicubic");
        pre.interpolation = *v;
    }
    if (meta.find("preprocess.mean")) {
        const auto m = meta.numbers("preprocess.mean", 3, -1e3, 1e3, "three comma-separated numbers");
        for (int i = 0; i < 3; ++i) pre.mean[i] = float(m[i]);
    }
    if (meta.find("preprocess.std")) {
        const auto s = meta.numbers("preprocess.std", 3, 1e-9, 1e3, "three comma-separated positive numbers");
        for (int i = 0; i < 3; ++i) pre.std[i] = float(s[i]);
    }

    if (options.padding) config.padding = *options.padding;
    if (options.activation) config.activation = *options.activation;
    if (options.bn_eps) {
        EFFNET_CHECK(*options.bn_eps > 0 && std::isfinite(*options.bn_eps),
                     "bn_eps must be a positive number, got " + std::to_string(*options.bn_eps));
        config.bn_eps = *options.bn_eps;
    }
    if (!options.preset.empty()) {
        const ModelConfig p = preset(options.preset, config.num_classes); // throws on unknown names
        const std::string d = first_difference(config, p);
        EFFNET_CHECK(d.empty(), "weights '" + path + "' do not match preset '" + options.preset + "': " + d +
                                    " (file vs preset)");
        config.name = p.name;
    }
    // Stochastic depth per block follows the (possibly updated) rate.
    weights::assign_stages(
        config.blocks,
        [&] {
            std::vector<int> s;
            for (const BlockConfig& b : config.blocks) s.push_back(b.stage);
            return s;
        }(),
        config.stochastic_depth);
    if (!block_strides.empty())
        for (size_t i = 0; i < config.blocks.size(); ++i) config.blocks[i].stride = block_strides[i];
    config.validate();

    Model model;
    model.config = config;
    model.family = family;
    model.metadata = metadata;
    for (const ParamSpec& spec : specs) {
        const std::string& src = source.at(spec.name);
        Tensor t = file.read_f32(src);
        // A variance below zero cannot come from data: BN would take the root of a negative.
        const int64_t bad = first_invalid_element(spec.name, t);
        if (bad >= 0) {
            const float v = t.data[size_t(bad)];
            EFFNET_CHECK(!std::isfinite(v), "weights '" + path + "': tensor '" + src +
                                                "' holds the negative variance " + std::to_string(v) +
                                                "; batch-norm variances are >= 0");
            throw Error("weights '" + path + "': tensor '" + src + "' holds a non-finite value");
        }
        model.params.emplace(spec.name, std::move(t));
        model.source_names[spec.name] = src;
    }
    return model;
}

} // namespace effnet
