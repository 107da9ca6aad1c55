#include "weight_names.hpp"

#include <algorithm>
#include <cmath>
#include <regex>
#include <set>

#include "effnet/error.hpp"
#include "effnet/model.hpp"

namespace effnet::weights {

namespace {

// Where one block's modules live in a family's naming ("" when the block has none).
struct BlockModules {
    std::string expand_conv, expand_bn, dw_conv, dw_bn, se_reduce, se_expand, project_conv, project_bn;
};

struct TopModules {
    std::string stem_conv, stem_bn, head_conv, head_bn, classifier;
};

TopModules top_modules(const std::string& family, int num_stages) {
    if (family == "torchvision") {
        const std::string head = "features." + std::to_string(num_stages + 1);
        return {"features.0.0", "features.0.1", head + ".0", head + ".1", "classifier.1"};
    }
    if (family == "timm") return {"conv_stem", "bn1", "conv_head", "bn2", "classifier"};
    if (family == "lukemelas") return {"_conv_stem", "_bn0", "_conv_head", "_bn1", "_fc"};
    if (family == "effnet") return {"stem.conv", "stem.bn", "head.conv", "head.bn", "classifier"};
    throw Error("unknown weight family '" + family + "'");
}

BlockModules block_modules(const std::string& family, const BlockConfig& b, int flat_index) {
    BlockModules m;
    if (family == "torchvision") {
        // block.{k}: [expand], dw, [SE], project; each conv is a Conv2dNormActivation (0 = conv, 1 = BN).
        const std::string p =
            "features." + std::to_string(b.stage + 1) + "." + std::to_string(b.index_in_stage) + ".block.";
        int k = 0;
        if (b.has_expand()) {
            m.expand_conv = p + std::to_string(k) + ".0";
            m.expand_bn = p + std::to_string(k) + ".1";
            ++k;
        }
        m.dw_conv = p + std::to_string(k) + ".0";
        m.dw_bn = p + std::to_string(k) + ".1";
        ++k;
        if (b.has_se()) {
            m.se_reduce = p + std::to_string(k) + ".fc1";
            m.se_expand = p + std::to_string(k) + ".fc2";
            ++k;
        }
        m.project_conv = p + std::to_string(k) + ".0";
        m.project_bn = p + std::to_string(k) + ".1";
    } else if (family == "timm") {
        const std::string p =
            "blocks." + std::to_string(b.stage) + "." + std::to_string(b.index_in_stage) + ".";
        if (b.has_expand()) { // InvertedResidual
            m.expand_conv = p + "conv_pw";
            m.expand_bn = p + "bn1";
            m.dw_conv = p + "conv_dw";
            m.dw_bn = p + "bn2";
            m.project_conv = p + "conv_pwl";
            m.project_bn = p + "bn3";
        } else { // DepthwiseSeparable: its conv_pw is the project
            m.dw_conv = p + "conv_dw";
            m.dw_bn = p + "bn1";
            m.project_conv = p + "conv_pw";
            m.project_bn = p + "bn2";
        }
        if (b.has_se()) {
            m.se_reduce = p + "se.conv_reduce";
            m.se_expand = p + "se.conv_expand";
        }
    } else if (family == "lukemelas") {
        const std::string p = "_blocks." + std::to_string(flat_index) + ".";
        if (b.has_expand()) {
            m.expand_conv = p + "_expand_conv";
            m.expand_bn = p + "_bn0";
        }
        m.dw_conv = p + "_depthwise_conv";
        m.dw_bn = p + "_bn1";
        if (b.has_se()) {
            m.se_reduce = p + "_se_reduce";
            m.se_expand = p + "_se_expand";
        }
        m.project_conv = p + "_project_conv";
        m.project_bn = p + "_bn2";
    } else if (family == "effnet") {
        const std::string p = "blocks." + std::to_string(flat_index) + ".";
        if (b.has_expand()) {
            m.expand_conv = p + "expand.conv";
            m.expand_bn = p + "expand.bn";
        }
        m.dw_conv = p + "dw.conv";
        m.dw_bn = p + "dw.bn";
        if (b.has_se()) {
            m.se_reduce = p + "se.reduce";
            m.se_expand = p + "se.expand";
        }
        m.project_conv = p + "project.conv";
        m.project_bn = p + "project.bn";
    } else {
        throw Error("unknown weight family '" + family + "'");
    }
    return m;
}

const char* const kBnFields[] = {"weight", "bias", "running_mean", "running_var"};

bool has(const std::map<std::string, Shape>& shapes, const std::string& name) {
    return shapes.count(name) != 0;
}

std::string names_preview(const std::vector<std::string>& names) {
    std::string s;
    for (size_t i = 0; i < names.size() && i < 5; ++i) s += (i ? ", " : "") + names[i];
    if (names.size() > 5) s += ", ... (" + std::to_string(names.size()) + " tensors)";
    return s;
}

// Shape of a tensor the inference needs, checked for rank (and for 1x1 / depthwise layout).
class ShapeReader {
public:
    ShapeReader(const std::map<std::string, Shape>& shapes, const std::string& file)
        : shapes_(shapes), file_(file) {}

    const Shape& get(const std::string& name, size_t rank) const {
        auto it = shapes_.find(name);
        EFFNET_CHECK(it != shapes_.end(), "weights '" + file_ + "': missing tensor '" + name +
                                              "' (needed to infer the architecture)");
        const Shape& s = it->second;
        bool ok = s.size() == rank;
        for (int64_t d : s) ok = ok && d > 0;
        EFFNET_CHECK(ok, "weights '" + file_ + "': tensor '" + name + "' has shape " + shape_str(s) +
                             ", expected rank " + std::to_string(rank) + " with positive sizes");
        return s;
    }
    // [O, I, 1, 1]
    const Shape& pointwise(const std::string& name) const {
        const Shape& s = get(name, 4);
        EFFNET_CHECK(s[2] == 1 && s[3] == 1, "weights '" + file_ + "': tensor '" + name + "' has shape " +
                                                 shape_str(s) + ", expected a 1x1 convolution [O, I, 1, 1]");
        return s;
    }
    // [C, 1, k, k]
    const Shape& depthwise(const std::string& name) const {
        const Shape& s = get(name, 4);
        EFFNET_CHECK(s[1] == 1 && s[2] == s[3], "weights '" + file_ + "': tensor '" + name + "' has shape " +
                                                    shape_str(s) +
                                                    ", expected a depthwise convolution [C, 1, k, k]");
        return s;
    }

private:
    const std::map<std::string, Shape>& shapes_;
    const std::string& file_;
};

// One block as found in the names: where it sits and which optional modules it has.
struct FoundBlock {
    int stage = -1; // -1: flat numbering, stage unknown
    int index_in_stage = 0;
    bool has_expand = false, has_se = false;
};

int to_int(const std::string& s) {
    return std::stoi(s);
}

// The blocks a family's names describe, in network order.
std::vector<FoundBlock> find_blocks(const std::string& family, const std::map<std::string, Shape>& shapes,
                                    const std::string& file) {
    std::vector<FoundBlock> blocks;
    if (family == "torchvision" || family == "timm") {
        const std::regex re(family == "torchvision" ? R"(^features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)$)"
                                                    : R"(^blocks\.(\d+)\.(\d+)\.(.+)$)");
        std::map<std::pair<int, int>, std::set<std::string>> members; // (stage, j) -> rest of the names
        for (const auto& kv : shapes) {
            std::smatch m;
            if (!std::regex_match(kv.first, m, re)) continue;
            const int stage = to_int(m[1]) - (family == "torchvision" ? 1 : 0);
            const std::string rest = family == "torchvision" ? m[3].str() + "." + m[4].str() : m[3].str();
            members[{stage, to_int(m[2])}].insert(rest);
        }
        int expected_stage = -1, expected_j = 0;
        for (const auto& kv : members) {
            const auto [stage, j] = kv.first;
            // Stages and blocks must be numbered densely from 0 (torchvision from features.1).
            if (stage != expected_stage || j != expected_j) {
                if (stage == expected_stage + 1 && j == 0) {
                    expected_stage = stage;
                } else {
                    const std::string where =
                        family == "torchvision"
                            ? "features." + std::to_string(stage + 1) + "." + std::to_string(j)
                            : "blocks." + std::to_string(stage) + "." + std::to_string(j);
                    throw Error("weights '" + file + "': block '" + where +
                                "' is out of sequence (blocks must be "
                                "numbered densely)");
                }
            }
            expected_j = j + 1;
            FoundBlock b;
            b.stage = stage;
            b.index_in_stage = j;
            const std::set<std::string>& rest = kv.second;
            if (family == "torchvision") {
                int convs = 0;
                for (int k = 0; k < 8; ++k) convs += rest.count(std::to_string(k) + ".0.weight") ? 1 : 0;
                b.has_expand = convs >= 3;
                for (int k = 0; k < 8; ++k)
                    b.has_se = b.has_se || rest.count(std::to_string(k) + ".fc1.weight");
            } else {
                b.has_expand = rest.count("conv_pwl.weight") != 0;
                b.has_se = rest.count("se.conv_reduce.weight") != 0;
            }
            blocks.push_back(b);
        }
    } else {
        const std::regex re(family == "lukemelas" ? R"(^_blocks\.(\d+)\..+$)" : R"(^blocks\.(\d+)\..+$)");
        std::set<int> indices;
        for (const auto& kv : shapes) {
            std::smatch m;
            if (std::regex_match(kv.first, m, re)) indices.insert(to_int(m[1]));
        }
        int expected = 0;
        for (int i : indices) {
            EFFNET_CHECK(i == expected, "weights '" + file + "': block " + std::to_string(expected) +
                                            " is missing (blocks must be numbered densely from 0)");
            ++expected;
            const std::string p = (family == "lukemelas" ? "_blocks." : "blocks.") + std::to_string(i) + ".";
            FoundBlock b;
            b.has_expand =
                has(shapes, p + (family == "lukemelas" ? "_expand_conv.weight" : "expand.conv.weight"));
            b.has_se = has(shapes, p + (family == "lukemelas" ? "_se_reduce.weight" : "se.reduce.weight"));
            blocks.push_back(b);
        }
    }
    EFFNET_CHECK(!blocks.empty(), "weights '" + file + "': no blocks found for the " + family + " naming");
    return blocks;
}

} // namespace

std::string detect_family(const std::vector<std::string>& names, const std::string& file) {
    const std::set<std::string> set(names.begin(), names.end());
    if (set.count("features.0.0.weight")) return "torchvision";
    if (set.count("conv_stem.weight")) return "timm";
    if (set.count("_conv_stem.weight")) return "lukemelas";
    if (set.count("stem.conv.weight")) return "effnet";
    // No stem: guess from the blocks so that the missing stem is reported by name.
    const std::regex tv(R"(^features\.\d+\.\d+\.block\..+)"), timm(R"(^blocks\.\d+\.\d+\..+)"),
        luke(R"(^_blocks\.\d+\..+)"), eff(R"(^blocks\.\d+\.(expand|dw|se|project)\..+)");
    for (const std::string& n : names) {
        if (std::regex_match(n, tv)) return "torchvision";
        if (std::regex_match(n, luke)) return "lukemelas";
        if (std::regex_match(n, eff)) return "effnet";
        if (std::regex_match(n, timm)) return "timm";
    }
    throw Error("weights '" + file +
                "': tensor names match no known EfficientNet naming (torchvision, timm, "
                "lukemelas, effnet): " +
                (names.empty() ? std::string("the file holds no tensors") : names_preview(names)));
}

std::map<std::string, std::string> source_names(const ModelConfig& config, const std::string& family) {
    std::map<std::string, std::string> map;
    auto conv_bn = [&](const std::string& canonical, const std::string& conv, const std::string& bn) {
        map[canonical + ".conv.weight"] = conv + ".weight";
        for (const char* f : kBnFields) map[canonical + ".bn." + f] = bn + "." + f;
    };
    const TopModules top = top_modules(family, config.num_stages());
    conv_bn("stem", top.stem_conv, top.stem_bn);
    for (size_t i = 0; i < config.blocks.size(); ++i) {
        const BlockConfig& b = config.blocks[i];
        const BlockModules m = block_modules(family, b, int(i));
        const std::string p = "blocks." + std::to_string(i) + ".";
        if (b.has_expand()) conv_bn(p + "expand", m.expand_conv, m.expand_bn);
        conv_bn(p + "dw", m.dw_conv, m.dw_bn);
        if (b.has_se()) {
            map[p + "se.reduce.weight"] = m.se_reduce + ".weight";
            map[p + "se.reduce.bias"] = m.se_reduce + ".bias";
            map[p + "se.expand.weight"] = m.se_expand + ".weight";
            map[p + "se.expand.bias"] = m.se_expand + ".bias";
        }
        conv_bn(p + "project", m.project_conv, m.project_bn);
    }
    conv_bn("head", top.head_conv, top.head_bn);
    map["classifier.weight"] = top.classifier + ".weight";
    map["classifier.bias"] = top.classifier + ".bias";
    return map;
}

void assign_stages(std::vector<BlockConfig>& blocks, const std::vector<int>& stages, float stochastic_depth) {
    const int total = int(blocks.size());
    for (int i = 0; i < total; ++i) {
        BlockConfig& b = blocks[i];
        b.stage = stages[i];
        b.index_in_stage = (i > 0 && stages[i - 1] == stages[i]) ? blocks[i - 1].index_in_stage + 1 : 0;
        b.stride = (b.index_in_stage == 0 && b.stage < kNumStages) ? kStageStride[b.stage] : 1;
        b.drop_path = stochastic_depth * float(i) / float(total);
    }
}

std::vector<int> infer_stages(const std::vector<BlockConfig>& blocks, const std::string& file) {
    const int n = int(blocks.size());
    // Boundaries every reading agrees on: a block that changes channels, kernel or block type
    // starts a stage (blocks after the first of a stage repeat it with in == out).
    std::vector<bool> boundary(n, false);
    int count = n > 0 ? 1 : 0;
    for (int i = 1; i < n; ++i) {
        const BlockConfig& a = blocks[i - 1];
        const BlockConfig& b = blocks[i];
        boundary[i] = b.out_channels != a.out_channels || b.in_channels != b.out_channels ||
                      b.kernel != a.kernel || b.has_expand() != a.has_expand() || b.has_se() != a.has_se();
        count += boundary[i] ? 1 : 0;
    }
    auto kernels_match = [&](const std::vector<int>& stages) {
        for (int i = 0; i < n; ++i)
            if (stages[i] >= kNumStages || blocks[i].kernel != kStageKernel[stages[i]]) return false;
        return true;
    };
    std::vector<int> stages(n, 0);
    for (int i = 1; i < n; ++i) stages[i] = stages[i - 1] + (boundary[i] ? 1 : 0);
    const std::string what =
        "weights '" + file + "': cannot infer the stages of " + std::to_string(n) + " blocks: ";
    if (count == kNumStages) {
        EFFNET_CHECK(kernels_match(stages),
                     what + "the depthwise kernels do not follow the B0 table 3,3,5,3,5,5,3");
        return stages;
    }
    EFFNET_CHECK(count < kNumStages, what + "channel and kernel changes give " + std::to_string(count) +
                                         " stages, more than the 7 of EfficientNet");
    // Fewer: some stage boundary keeps channels and kernel. Try the presets' repeat counts.
    std::vector<std::vector<int>> fits;
    for (const std::string& name : preset_names()) {
        const ModelConfig p = preset(name, 1);
        if (int(p.blocks.size()) != n) continue;
        std::vector<int> candidate(n);
        bool ok = true;
        for (int i = 0; i < n; ++i) {
            candidate[i] = p.blocks[i].stage;
            const bool starts = i > 0 && candidate[i] != candidate[i - 1];
            if (boundary[i] && !starts) ok = false;
        }
        if (ok && kernels_match(candidate) && std::find(fits.begin(), fits.end(), candidate) == fits.end())
            fits.push_back(candidate);
    }
    EFFNET_CHECK(!fits.empty(), what + "channel and kernel changes give only " + std::to_string(count) +
                                    " stages and no preset's stage repeats fit");
    EFFNET_CHECK(fits.size() == 1, what + "several presets' stage repeats fit; name the stages in metadata "
                                          "'effnet.block_stages'");
    return fits[0];
}

ModelConfig infer_architecture(const std::string& family, const std::map<std::string, Shape>& shapes,
                               const std::vector<int>& block_stages, const std::string& file) {
    const ShapeReader read(shapes, file);
    const std::vector<FoundBlock> found = find_blocks(family, shapes, file);
    const bool flat = found[0].stage < 0;
    // Block modules' names depend on stage only for the nested families, which know it.
    ModelConfig c;
    c.blocks.clear();
    for (size_t i = 0; i < found.size(); ++i) {
        BlockConfig b;
        b.stage = flat ? 0 : found[i].stage;
        b.index_in_stage = found[i].index_in_stage;
        // Names depend on has_expand / has_se only; fake channel counts that give them.
        b.in_channels = 1;
        b.expand_channels = found[i].has_expand ? 2 : 1;
        b.se_channels = found[i].has_se ? 1 : 0;
        const BlockModules m = block_modules(family, b, int(i));
        const Shape& dw = read.depthwise(m.dw_conv + ".weight");
        const Shape& project = read.pointwise(m.project_conv + ".weight");
        b.expand_channels = int(dw[0]);
        b.kernel = int(dw[2]);
        b.out_channels = int(project[0]);
        b.in_channels =
            found[i].has_expand ? int(read.pointwise(m.expand_conv + ".weight")[1]) : b.expand_channels;
        b.se_channels = found[i].has_se ? int(read.pointwise(m.se_reduce + ".weight")[0]) : 0;
        EFFNET_CHECK(!found[i].has_expand || b.expand_channels != b.in_channels,
                     "weights '" + file + "': block " + std::to_string(i) +
                         " has an expand convolution that keeps " + std::to_string(b.in_channels) +
                         " channels, which effnet does not support");
        c.blocks.push_back(b);
    }
    std::vector<int> stages;
    if (!flat) {
        for (const BlockConfig& b : c.blocks) stages.push_back(b.stage);
        EFFNET_CHECK(stages.back() < kNumStages, "weights '" + file +
                                                     "': " + std::to_string(stages.back() + 1) +
                                                     " stages found, EfficientNet has 7");
    } else if (!block_stages.empty()) {
        EFFNET_CHECK(block_stages.size() == c.blocks.size(),
                     "weights '" + file + "': metadata 'effnet.block_stages' lists " +
                         std::to_string(block_stages.size()) + " blocks, the tensors hold " +
                         std::to_string(c.blocks.size()));
        stages = block_stages;
    } else {
        stages = infer_stages(c.blocks, file);
    }
    assign_stages(c.blocks, stages, c.stochastic_depth);

    const TopModules top = top_modules(family, c.num_stages());
    const Shape& stem = read.get(top.stem_conv + ".weight", 4);
    EFFNET_CHECK(stem[2] == 3 && stem[3] == 3, "weights '" + file + "': stem convolution '" + top.stem_conv +
                                                   ".weight' has shape " + shape_str(stem) +
                                                   ", expected a 3x3 kernel");
    c.stem_channels = int(stem[0]);
    c.in_channels = int(stem[1]);
    c.head_channels = int(read.pointwise(top.head_conv + ".weight")[0]);
    c.num_classes = int(read.get(top.classifier + ".weight", 2)[0]);
    c.validate();
    return c;
}

} // namespace effnet::weights
