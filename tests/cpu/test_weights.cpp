// Loading and saving weights: every naming family, architecture inference (including the flat
// lukemelas numbering), the errors for missing / unexpected / mis-shaped tensors and bad
// metadata, the save/load round trip, and the time of a B0 forward on the CPU.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <set>
#include <string>
#include <sys/stat.h>

#include "effnet/cpu_engine.hpp"
#include "effnet/error.hpp"
#include "effnet/model.hpp"
#include "effnet/safetensors.hpp"
#include "weight_names.hpp"

using namespace effnet;

namespace {

std::string out_path(const std::string& name) {
    const std::string dir = std::string(EFFNET_BINARY_DIR) + "/test_weights";
    ::mkdir(dir.c_str(), 0755);
    return dir + "/" + name;
}

// The golden fixtures' tiny architecture: width 0.25, depth 0.34, 10 classes.
ModelConfig tiny_config(bool squeeze_excite = true) {
    CustomOptions o;
    o.width = 0.25;
    o.depth = 0.34;
    o.num_classes = 10;
    o.squeeze_excite = squeeze_excite;
    return custom_config(o);
}

// Writes a model's tensors under a family's names. `edit` may drop (return false) or change a
// tensor before it is written.
using Edit = std::function<bool(const std::string& source_name, Tensor& t)>;
void write_as(const Model& model, const std::string& family, const std::string& path,
              const std::map<std::string, std::string>& metadata = {}, const Edit& edit = nullptr) {
    const std::map<std::string, std::string> names = weights::source_names(model.config, family);
    SafetensorsWriter w;
    for (const auto& [canonical, tensor] : model.params) {
        Tensor t = tensor;
        const std::string& src = names.at(canonical);
        if (edit && !edit(src, t)) continue;
        w.add(src, t);
    }
    for (const auto& [k, v] : metadata) w.set_metadata(k, v);
    w.write(path);
}

Tensor random_input(const Shape& shape, uint32_t seed) {
    Tensor t(shape);
    uint32_t s = seed;
    for (float& v : t.data) {
        s = s * 1664525u + 1013904223u;
        v = float(s >> 8) / float(1 << 24) * 2.0f - 1.0f;
    }
    return t;
}

// Random BN statistics so that mixing up running stats changes the output.
void randomize_bn(Model& m) {
    uint32_t s = 7;
    for (auto& [name, t] : m.params) {
        const bool mean = name.find("running_mean") != std::string::npos;
        const bool var = name.find("running_var") != std::string::npos;
        if (!mean && !var) continue;
        for (float& v : t.data) {
            s = s * 1664525u + 1013904223u;
            const float u = float(s >> 8) / float(1 << 24);
            v = mean ? u - 0.5f : 0.5f + u;
        }
    }
}

void check_same_architecture(const ModelConfig& a, const ModelConfig& b) {
    CHECK(a.stem_channels == b.stem_channels);
    CHECK(a.head_channels == b.head_channels);
    CHECK(a.num_classes == b.num_classes);
    REQUIRE(a.blocks.size() == b.blocks.size());
    for (size_t i = 0; i < a.blocks.size(); ++i) {
        INFO("block " << i);
        CHECK(a.blocks[i].in_channels == b.blocks[i].in_channels);
        CHECK(a.blocks[i].expand_channels == b.blocks[i].expand_channels);
        CHECK(a.blocks[i].out_channels == b.blocks[i].out_channels);
        CHECK(a.blocks[i].kernel == b.blocks[i].kernel);
        CHECK(a.blocks[i].stride == b.blocks[i].stride);
        CHECK(a.blocks[i].se_channels == b.blocks[i].se_channels);
        CHECK(a.blocks[i].stage == b.blocks[i].stage);
        CHECK(a.blocks[i].index_in_stage == b.blocks[i].index_in_stage);
    }
}

Tensor eval_logits(Model& m, const Tensor& x) {
    cpu::Network net(m);
    return net.forward(x).logits;
}

} // namespace

TEST_CASE("weights: every family's names load to the same model", "[weights]") {
    for (bool se : {true, false}) {
        Model model = random_model(tiny_config(se), 1);
        randomize_bn(model);
        model.config.padding = Padding::TfSame; // what lukemelas defaults to; others get it from metadata
        model.config.bn_eps = 1e-3f;
        model.config.activation = se ? Activation::SiLU : Activation::ReLU6;
        const Tensor x = random_input({2, 3, 33, 40}, 3);
        const Tensor expected = eval_logits(model, x);
        for (const std::string family : {"torchvision", "timm", "lukemelas", "effnet"}) {
            INFO(family << (se ? " with SE" : " without SE"));
            const std::string path = out_path(family + (se ? "_se" : "_plain") + ".safetensors");
            std::map<std::string, std::string> meta;
            if (family != "lukemelas") // lukemelas: the family defaults (TF SAME, 1e-3, ReLU6 without SE)
                meta = {{"padding", "tf_same"}, {"bn_eps", "0.001"}, {"activation", se ? "silu" : "relu6"}};
            write_as(model, family, path, meta);
            Model loaded = load_weights(path);
            CHECK(loaded.family == family);
            check_same_architecture(loaded.config, model.config);
            CHECK(loaded.config.padding == Padding::TfSame);
            CHECK(loaded.config.bn_eps == 1e-3f);
            CHECK(loaded.config.activation == model.config.activation);
            for (const auto& [name, t] : model.params) {
                INFO(name);
                REQUIRE(loaded.params.count(name) == 1);
                CHECK(loaded.params.at(name).data == t.data);
                CHECK(loaded.source_names.at(name) == weights::source_names(model.config, family).at(name));
            }
            CHECK(eval_logits(loaded, x).data == expected.data);
        }
    }
}

TEST_CASE("weights: torchvision / timm / lukemelas names of a B0", "[weights]") {
    const ModelConfig b0 = preset("b0");
    const auto tv = weights::source_names(b0, "torchvision");
    CHECK(tv.at("stem.conv.weight") == "features.0.0.weight");
    CHECK(tv.at("blocks.0.dw.conv.weight") == "features.1.0.block.0.0.weight");
    CHECK(tv.at("blocks.0.se.reduce.weight") == "features.1.0.block.1.fc1.weight");
    CHECK(tv.at("blocks.0.project.bn.running_var") == "features.1.0.block.2.1.running_var");
    CHECK(tv.at("blocks.2.expand.conv.weight") == "features.2.1.block.0.0.weight");
    CHECK(tv.at("blocks.2.se.expand.bias") == "features.2.1.block.2.fc2.bias");
    CHECK(tv.at("blocks.2.project.conv.weight") == "features.2.1.block.3.0.weight");
    CHECK(tv.at("head.bn.weight") == "features.8.1.weight");
    CHECK(tv.at("classifier.weight") == "classifier.1.weight");
    const auto timm = weights::source_names(b0, "timm");
    CHECK(timm.at("blocks.0.project.conv.weight") == "blocks.0.0.conv_pw.weight");
    CHECK(timm.at("blocks.0.dw.bn.weight") == "blocks.0.0.bn1.weight");
    CHECK(timm.at("blocks.15.expand.conv.weight") == "blocks.6.0.conv_pw.weight");
    CHECK(timm.at("blocks.15.project.bn.bias") == "blocks.6.0.bn3.bias");
    CHECK(timm.at("blocks.1.se.reduce.weight") == "blocks.1.0.se.conv_reduce.weight");
    CHECK(timm.at("head.bn.running_mean") == "bn2.running_mean");
    const auto luke = weights::source_names(b0, "lukemelas");
    CHECK(luke.at("stem.bn.weight") == "_bn0.weight");
    CHECK(luke.at("blocks.15.expand.bn.weight") == "_blocks.15._bn0.weight");
    CHECK(luke.at("blocks.15.dw.conv.weight") == "_blocks.15._depthwise_conv.weight");
    CHECK(luke.at("head.bn.bias") == "_bn1.bias");
    CHECK(luke.at("classifier.bias") == "_fc.bias");
}

TEST_CASE("weights: lukemelas B0 numbering infers stages and strides", "[weights]") {
    for (const char* name : {"b0", "b3", "lite0"}) {
        INFO(name);
        const Model model = random_model(preset(name, 10), 2);
        const std::string path = out_path(std::string("luke_") + name + ".safetensors");
        write_as(model, "lukemelas", path);
        const Model loaded = load_weights(path);
        check_same_architecture(loaded.config, model.config);
        CHECK(loaded.config.name == name); // the architecture equals the preset
        CHECK(loaded.config.padding == Padding::TfSame);
        CHECK(loaded.config.bn_eps == 1e-3f);
        CHECK(loaded.config.activation == model.config.activation); // ReLU6 for Lite (no SE)
    }
    // Blocks whose channels and kernels never change fit no stage split.
    std::vector<BlockConfig> flat(5);
    for (BlockConfig& b : flat) {
        b.in_channels = b.out_channels = 16;
        b.expand_channels = 96;
    }
    CHECK_THROWS_WITH(weights::infer_stages(flat, "x.safetensors"),
                      Catch::Contains("cannot infer the stages"));
    // Kernels that do not follow the B0 table.
    ModelConfig odd = preset("b0");
    for (BlockConfig& b : odd.blocks) b.kernel = 3;
    CHECK_THROWS_WITH(weights::infer_stages(odd.blocks, "x.safetensors"), Catch::Contains("B0 table"));
}

TEST_CASE("weights: missing, unexpected and mis-shaped tensors are named", "[weights]") {
    const Model model = random_model(tiny_config(), 4);
    const std::string path = out_path("broken.safetensors");
    write_as(model, "timm", path, {}, [](const std::string& name, Tensor& t) {
        if (name == "blocks.3.1.bn3.running_var" || name == "bn2.bias") return false;
        if (name == "blocks.2.0.se.conv_reduce.bias") t = Tensor({t.numel() + 1});
        return true;
    });
    {
        // Add an unexpected tensor and a BN step counter (ignored).
        SafetensorsFile f = SafetensorsFile::open(path);
        SafetensorsWriter w;
        for (const std::string& n : f.names()) w.add(n, f.read_f32(n));
        w.add("extra.weight", Tensor({3}));
        w.add_i64("bn1.num_batches_tracked", {}, {5});
        w.write(path);
    }
    try {
        load_weights(path);
        FAIL("load_weights accepted a broken file");
    } catch (const Error& e) {
        const std::string msg = e.what();
        INFO(msg);
        CHECK(msg.find(path) != std::string::npos);
        CHECK(msg.find("missing") != std::string::npos);
        CHECK(msg.find("blocks.3.1.bn3.running_var") != std::string::npos);
        CHECK(msg.find("bn2.bias") != std::string::npos);
        CHECK(msg.find("blocks.2.0.se.conv_reduce.bias") != std::string::npos);
        CHECK(msg.find("unexpected extra.weight") != std::string::npos);
        CHECK(msg.find("num_batches_tracked") == std::string::npos);
    }
    // A tensor the inference itself needs.
    const std::string path2 = out_path("no_dw.safetensors");
    write_as(model, "effnet", path2, {},
             [](const std::string& name, Tensor&) { return name != "blocks.4.dw.conv.weight"; });
    CHECK_THROWS_WITH(load_weights(path2), Catch::Contains("blocks.4.dw.conv.weight"));
    // Names of no known family.
    SafetensorsWriter w;
    w.add("layer1.conv.weight", Tensor({4, 3, 3, 3}));
    w.write(out_path("resnet.safetensors"));
    CHECK_THROWS_WITH(load_weights(out_path("resnet.safetensors")), Catch::Contains("layer1.conv.weight"));
}

TEST_CASE("weights: preset mismatch is reported", "[weights]") {
    const Model model = random_model(tiny_config(), 5);
    const std::string path = out_path("tiny_tv.safetensors");
    write_as(model, "torchvision", path);
    LoadOptions o;
    o.preset = "b0";
    CHECK_THROWS_WITH(load_weights(path, o),
                      Catch::Contains("preset 'b0'") && Catch::Contains("stem channels 8 vs 32"));
    o.preset = "b9";
    CHECK_THROWS_WITH(load_weights(path, o), Catch::Contains("unknown preset"));
    // A preset recorded in the metadata (convert.py --preset) is checked too.
    write_as(model, "torchvision", path, {{"preset", "b1"}});
    CHECK_THROWS_WITH(load_weights(path), Catch::Contains("preset 'b1'"));
    // And a B0 checks out against "b0", whichever way it is spelled.
    const Model b0 = random_model(preset("b0"), 6);
    write_as(b0, "torchvision", path);
    o.preset = "efficientnet_b0";
    CHECK(load_weights(path, o).config.name == "b0");
    o.preset = "b1";
    CHECK_THROWS_WITH(load_weights(path, o), Catch::Contains("number of blocks 16 vs 23"));
}

TEST_CASE("weights: metadata and options decide padding, eps, activation, preprocessing", "[weights]") {
    const Model model = random_model(tiny_config(), 7);
    const std::string path = out_path("meta.safetensors");
    write_as(model, "timm", path,
             {{"padding", "tf_same"},
              {"bn_eps", "0.001"},
              {"activation", "relu6"},
              {"preprocess.resize", "80"},
              {"preprocess.crop", "72"},
              {"preprocess.interpolation", "bilinear"},
              {"preprocess.mean", "0.5,0.25, 0.125"},
              {"preprocess.std", "0.5,0.5,0.5"},
              {"note", "kept"}});
    Model m = load_weights(path);
    CHECK(m.config.padding == Padding::TfSame);
    CHECK(m.config.bn_eps == 1e-3f);
    CHECK(m.config.activation == Activation::ReLU6);
    CHECK(m.config.preprocess.resize == 80);
    CHECK(m.config.preprocess.crop == 72);
    CHECK(m.config.preprocess.interpolation == "bilinear");
    CHECK(m.config.preprocess.mean[2] == 0.125f);
    CHECK(m.config.preprocess.std[0] == 0.5f);
    CHECK(m.metadata.at("note") == "kept");
    LoadOptions o;
    o.padding = Padding::Symmetric;
    o.bn_eps = 1e-5f;
    o.activation = Activation::SiLU;
    m = load_weights(path, o);
    CHECK(m.config.padding == Padding::Symmetric);
    CHECK(m.config.bn_eps == 1e-5f);
    CHECK(m.config.activation == Activation::SiLU);
    // Without metadata: the family defaults (timm: symmetric, 1e-5, SiLU).
    write_as(model, "timm", path);
    m = load_weights(path);
    CHECK(m.config.padding == Padding::Symmetric);
    CHECK(m.config.bn_eps == 1e-5f);
    CHECK(m.config.activation == Activation::SiLU);

    const std::pair<const char*, const char*> bad[] = {
        {"padding", "diagonal"},
        {"bn_eps", "-1"},
        {"bn_eps", "1e-3x"},
        {"activation", "gelu"},
        {"preprocess.crop", "0"},
        {"preprocess.mean", "0.5,0.5"},
        {"preprocess.std", "1,0,1"},
        {"preprocess.interpolation", "nearest"},
        {"preset", "b42"},
        {"effnet.family", "keras"},
        {"dropout", "2"},
    };
    for (const auto& [key, value] : bad) {
        INFO(key << " = " << value);
        write_as(model, "timm", path, {{key, value}});
        CHECK_THROWS_WITH(load_weights(path), Catch::Contains(std::string("'") + key + "'"));
    }
    // Metadata naming another family than the tensor names.
    write_as(model, "timm", path, {{"effnet.family", "torchvision"}});
    CHECK_THROWS_WITH(load_weights(path), Catch::Contains("effnet.family"));
}

TEST_CASE("weights: save_weights / load_weights round trip", "[weights]") {
    ModelConfig c = tiny_config(false);
    c.padding = Padding::TfSame;
    c.bn_eps = 1e-3f;
    c.activation = Activation::ReLU6;
    c.dropout = 0.25f;
    c.stochastic_depth = 0.1f;
    c.bn_momentum = 0.05f;
    c.resolution = 96;
    c.preprocess.resize = 110;
    c.preprocess.crop = 96;
    c.preprocess.interpolation = "bilinear";
    c.preprocess.mean[1] = 0.3f;
    c.preprocess.std[2] = 0.7f;
    for (size_t i = 0; i < c.blocks.size(); ++i)
        c.blocks[i].drop_path = c.stochastic_depth * float(i) / c.blocks.size();
    Model model = random_model(c, 8);
    randomize_bn(model);
    const std::string path = out_path("roundtrip.safetensors");
    save_weights(model, path);
    const Model loaded = load_weights(path);
    CHECK(loaded.family == "effnet");
    const ModelConfig& l = loaded.config;
    check_same_architecture(l, c);
    CHECK(l.name == c.name);
    CHECK(l.padding == c.padding);
    CHECK(l.bn_eps == c.bn_eps);
    CHECK(l.activation == c.activation);
    CHECK(l.dropout == c.dropout);
    CHECK(l.stochastic_depth == c.stochastic_depth);
    CHECK(l.bn_momentum == c.bn_momentum);
    CHECK(l.resolution == c.resolution);
    CHECK(l.preprocess.resize == c.preprocess.resize);
    CHECK(l.preprocess.crop == c.preprocess.crop);
    CHECK(l.preprocess.interpolation == c.preprocess.interpolation);
    for (int i = 0; i < 3; ++i) {
        CHECK(l.preprocess.mean[i] == c.preprocess.mean[i]);
        CHECK(l.preprocess.std[i] == c.preprocess.std[i]);
    }
    for (size_t i = 0; i < c.blocks.size(); ++i) CHECK(l.blocks[i].drop_path == c.blocks[i].drop_path);
    REQUIRE(loaded.params.size() == model.params.size());
    for (const auto& [name, t] : model.params) {
        INFO(name);
        CHECK(loaded.params.at(name).shape == t.shape);
        CHECK(loaded.params.at(name).data == t.data);
    }
    // A preset model keeps its name and settings.
    const Model b5 = random_model(preset("b5", 10), 9);
    save_weights(b5, out_path("b5.safetensors"));
    const Model b5l = load_weights(out_path("b5.safetensors"));
    CHECK(b5l.config.name == "b5");
    CHECK(b5l.config.bn_eps == 1e-3f);
    CHECK(b5l.config.bn_momentum == 0.01f);
    CHECK(b5l.config.dropout == 0.4f);
    CHECK(b5l.config.resolution == 456);
}

TEST_CASE("weights: torchvision B5 without metadata gets the preset's BN eps", "[weights]") {
    const Model b5 = random_model(preset("b5", 10), 10);
    write_as(b5, "torchvision", out_path("tv_b5.safetensors"));
    const Model m = load_weights(out_path("tv_b5.safetensors"));
    CHECK(m.config.name == "b5");
    CHECK(m.config.bn_eps == 1e-3f);
    CHECK(m.config.padding == Padding::Symmetric);
}

TEST_CASE("weights: B0 CPU eval at 224x224, batch 1", "[weights][timing]") {
    Model model = random_model(preset("b0"), 11);
    cpu::Network net(model);
    const Tensor x = random_input({1, 3, 224, 224}, 12);
    // Best of three: the first run pays for page faults, and a shared machine adds noise.
    double seconds = 1e30;
    cpu::ForwardResult r;
    for (int run = 0; run < 3; ++run) {
        const auto t0 = std::chrono::steady_clock::now();
        r = net.forward(x);
        seconds =
            std::min(seconds, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::printf("[timing] B0 CPU eval forward 1x3x224x224: %.3f s (best of 3)\n", seconds);
    REQUIRE(r.logits.shape == Shape{1, 1000});
    for (float v : r.logits.data) REQUIRE(std::isfinite(v));
    CHECK(seconds < 2.0); // a loose guard against an accidentally quadratic op
}

TEST_CASE("network: eval-mode backward matches finite differences", "[network]") {
    // Eval mode is a fixed function of input and parameters, so central differences in double
    // of the float32 network check the whole backward (including the recomputed forward).
    Model model = random_model(tiny_config(), 13);
    randomize_bn(model);
    const Tensor x = random_input({2, 3, 19, 23}, 14);
    const Tensor r = random_input({2, 10}, 15); // loss = sum(logits * r)
    cpu::Network net(model);
    net.forward(x);
    const cpu::Gradients g = net.backward(r);
    auto loss = [&](const Tensor& input) {
        const Tensor logits = net.forward(input).logits;
        double s = 0;
        for (int64_t i = 0; i < logits.numel(); ++i) s += double(logits.data[i]) * r.data[i];
        return s;
    };
    // h = 1e-2 balances truncation (O(h^2)) and float32 rounding of the loss (~1e-7 / h).
    const float h = 1e-2f;
    double num = 0, den = 0;
    for (int64_t i = 0; i < x.numel(); i += 97) {
        Tensor xp = x, xm = x;
        xp.data[i] += h;
        xm.data[i] -= h;
        const double fd = (loss(xp) - loss(xm)) / (2.0 * h);
        num += (fd - g.input.data[i]) * (fd - g.input.data[i]);
        den += fd * fd;
    }
    const double input_err = std::sqrt(num / den);
    // A parameter deep inside: the depthwise weights of block 5.
    Tensor& w = model.param("blocks.5.dw.conv.weight");
    const Tensor& gw = g.params.at("blocks.5.dw.conv.weight");
    num = den = 0;
    for (int64_t i = 0; i < w.numel(); i += 37) {
        const float saved = w.data[i];
        w.data[i] = saved + h;
        const double lp = loss(x);
        w.data[i] = saved - h;
        const double lm = loss(x);
        w.data[i] = saved;
        const double fd = (lp - lm) / (2.0 * h);
        num += (fd - gw.data[i]) * (fd - gw.data[i]);
        den += fd * fd;
    }
    const double param_err = std::sqrt(num / den);
    std::printf("[network] eval backward vs finite differences: input %.2e, blocks.5.dw %.2e\n", input_err,
                param_err);
    CHECK(input_err < 1e-2); // measured ~1e-4: the bound leaves room for float32 noise
    CHECK(param_err < 1e-2);
    CHECK(g.params.size() == [&] {
        size_t n = 0;
        for (const ParamSpec& s : parameter_specs(model.config)) n += s.trainable ? 1 : 0;
        return n;
    }());
}

TEST_CASE("network: running statistics, dropout and stochastic depth", "[network]") {
    ModelConfig c = tiny_config();
    c.dropout = 0.5f;
    c.stochastic_depth = 0.5f;
    for (size_t i = 0; i < c.blocks.size(); ++i) c.blocks[i].drop_path = 0.5f * float(i) / c.blocks.size();
    Model model = random_model(c, 16);
    randomize_bn(model);
    const Model original = model;
    const Tensor x = random_input({4, 3, 24, 24}, 17);
    cpu::Network net(model);
    const std::string stat = "blocks.3.expand.bn.running_mean";

    // Eval changes nothing; stages are recorded with the expected shapes.
    cpu::ForwardOptions eval;
    eval.record_stages = true;
    const cpu::ForwardResult e = net.forward(x, eval);
    CHECK(model.param(stat).data == original.param(stat).data);
    REQUIRE(e.stages.size() == 10);
    CHECK(e.stages.at("stem").shape == Shape{4, 8, 12, 12});
    CHECK(e.stages.at("stage.6").shape == Shape{4, 80, 1, 1});
    CHECK(e.stages.at("head").shape == Shape{4, 320, 1, 1});
    CHECK(e.stages.at("pool").shape == Shape{4, 320});

    // Train without the update leaves the statistics; with it, they move.
    cpu::ForwardOptions train;
    train.train = true;
    train.update_running_stats = false;
    train.dropout = false;
    const Tensor plain = net.forward(x, train).logits;
    CHECK(model.param(stat).data == original.param(stat).data);
    train.update_running_stats = true;
    CHECK(net.forward(x, train).logits.data == plain.data);
    CHECK(model.param(stat).data != original.param(stat).data);

    // Dropout and stochastic depth: deterministic in the seed, different across seeds.
    train.update_running_stats = false;
    train.dropout = true;
    train.seed = 1;
    const Tensor a = net.forward(x, train).logits;
    const Tensor b = net.forward(x, train).logits;
    train.seed = 2;
    const Tensor d = net.forward(x, train).logits;
    CHECK(a.data == b.data);
    CHECK(a.data != d.data);
    CHECK(a.data != plain.data);
    // Backward goes through the masks: gradients are finite and the classifier sees dropout.
    const cpu::Gradients g = net.backward(random_input({4, 10}, 18));
    for (float v : g.input.data) REQUIRE(std::isfinite(v));

    // Bad inputs are refused with the shape in the message.
    CHECK_THROWS_WITH(net.forward(Tensor({3, 24, 24})), Catch::Contains("[3, 24, 24]"));
    CHECK_THROWS_WITH(net.forward(Tensor({1, 4, 24, 24})), Catch::Contains("channels"));
    CHECK_THROWS_WITH(net.backward(Tensor({3, 10})), Catch::Contains("dlogits"));
    // Train-mode BN needs more than one value per channel (batch 1 reaching 1x1).
    cpu::ForwardOptions t1;
    t1.train = true;
    CHECK_THROWS_WITH(net.forward(random_input({1, 3, 24, 24}, 19), t1),
                      Catch::Contains("more than one value"));
}

TEST_CASE("network: random models are seeded and well scaled in eval mode", "[network]") {
    // Engines are compared on random models (fp16 included): their eval-mode activations must
    // neither vanish nor blow up. Bounds on the logits' RMS are loose (measured 0.02 .. 2).
    for (const char* name : {"b0", "lite0"}) {
        INFO(name);
        const ModelConfig c = preset(name);
        const Model a = random_model(c, 21), b = random_model(c, 21), other = random_model(c, 22);
        CHECK(a.params.at("blocks.3.dw.conv.weight").data == b.params.at("blocks.3.dw.conv.weight").data);
        CHECK(a.params.at("blocks.3.dw.conv.weight").data != other.params.at("blocks.3.dw.conv.weight").data);
        Model m = a;
        cpu::Network net(m);
        const Tensor logits = net.forward(random_input({1, 3, 96, 96}, 23)).logits;
        double sq = 0;
        for (float v : logits.data) sq += double(v) * v;
        const double rms = std::sqrt(sq / logits.numel());
        std::printf("[network] random %s: eval logits RMS %.3g\n", name, rms);
        CHECK(rms > 1e-3);
        CHECK(rms < 1e2);
    }
}
