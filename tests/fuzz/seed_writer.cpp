// Seeds for the weights and checkpoint fuzzers, written by effnet's own writers so that they
// stay valid as the formats evolve: a tiny architecture (3 blocks, 4..12 channels: each file a
// few KB) saved with save_weights and under every family's names with assorted metadata, and
// checkpoints of it for each optimizer. Each weights seed is loaded back, so a seed the loader
// refuses is an error here rather than a silently useless corpus entry.
// Usage: effnet_fuzz_seeds WEIGHTS_DIR CHECKPOINT_DIR
#include <cstdio>
#include <map>
#include <string>

#include "effnet/error.hpp"
#include "effnet/model.hpp"
#include "effnet/safetensors.hpp"
#include "effnet/train/checkpoint.hpp"
#include "effnet/train/optimizer.hpp"
#include "weight_names.hpp"

using namespace effnet;

namespace {

BlockConfig block(int in, int expand, int out, int kernel, int se, int stage) {
    BlockConfig b;
    b.in_channels = in;
    b.expand_channels = expand;
    b.out_channels = out;
    b.kernel = kernel;
    b.se_channels = se;
    b.stage = stage;
    return b;
}

// Three stages of B0's table (kernels 3, 3, 5), so that names, kernels and stages all agree.
ModelConfig tiny_config(bool squeeze_excite) {
    ModelConfig c;
    c.stem_channels = 4;
    c.head_channels = 8;
    c.num_classes = 2;
    const int se = squeeze_excite ? 1 : 0;
    c.blocks = {block(4, 4, 4, 3, se, 0), block(4, 8, 6, 3, se, 1), block(6, 12, 8, 5, se, 2)};
    weights::assign_stages(c.blocks, {0, 1, 2}, c.stochastic_depth);
    c.resolution = 32;
    c.preprocess.resize = 36;
    c.preprocess.crop = 32;
    c.validate();
    return c;
}

void write_family(const Model& model, const std::string& family, const std::string& path,
                  const std::map<std::string, std::string>& metadata) {
    const std::map<std::string, std::string> names = weights::source_names(model.config, family);
    SafetensorsWriter w;
    for (const auto& [canonical, tensor] : model.params) w.add(names.at(canonical), tensor);
    for (const auto& [k, v] : metadata) w.set_metadata(k, v);
    w.write(path);
}

void write_checkpoints(const Model& model, const std::string& dir) {
    for (train::OptimizerKind kind :
         {train::OptimizerKind::SGD, train::OptimizerKind::RMSProp, train::OptimizerKind::AdamW}) {
        train::OptimizerConfig oc;
        oc.kind = kind;
        oc.weight_decay = 1e-4;
        train::Optimizer optimizer(oc);
        // One step with small gradients for the trainable tensors (not the running
        // statistics), so that every optimizer slot exists.
        train::ParamMap params = model.params;
        train::ParamMap grads;
        for (const ParamSpec& spec : parameter_specs(model.config)) {
            if (!spec.trainable) continue;
            Tensor g(spec.shape);
            for (size_t i = 0; i < g.data.size(); ++i) g.data[i] = 1e-3f * float(int(i % 7) - 3);
            grads.emplace(spec.name, g);
        }
        optimizer.step(params, grads, 0.01);
        Model stepped = model;
        stepped.params = params;
        train::TrainingState state;
        state.step = 1;
        state.epoch = 2;
        state.batch_in_epoch = 1;
        state.seed = 42;
        state.scaler_scale = 1024.0;
        state.metadata["args"] = "{\"lr\": 0.01, \"batch\": 4}";
        save_checkpoint(dir + "/" + train::optimizer_name(kind) + ".safetensors", stepped, optimizer, state);
    }
}

} // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s WEIGHTS_DIR CHECKPOINT_DIR\n", argv[0]);
        return 2;
    }
    const std::string weights_dir = argv[1], checkpoint_dir = argv[2];
    try {
        int written = 0;
        for (bool se : {true, false}) {
            Model model = random_model(tiny_config(se), se ? 1 : 2);
            const std::string tag = se ? "se" : "nose";
            save_weights(model, weights_dir + "/effnet-" + tag + ".safetensors");
            const std::map<std::string, std::string> meta = {{"padding", "tf_same"},
                                                             {"activation", "relu6"},
                                                             {"bn_eps", "0.001"},
                                                             {"preprocess.resize", "40"},
                                                             {"preprocess.crop", "32"},
                                                             {"preprocess.interpolation", "bicubic"},
                                                             {"preprocess.mean", "0.5,0.5,0.5"},
                                                             {"preprocess.std", "0.25,0.25,0.25"}};
            for (const char* family : {"torchvision", "timm", "lukemelas"}) {
                std::map<std::string, std::string> m = meta;
                m["effnet.family"] = family;
                if (std::string(family) == "lukemelas") {
                    m["effnet.block_stages"] = "0,1,2";
                    m["effnet.block_strides"] = "1,2,2";
                }
                write_family(model, family, weights_dir + "/" + family + "-" + tag + ".safetensors", m);
                write_family(model, family, weights_dir + "/" + family + "-" + tag + "-bare.safetensors", {});
            }
            if (se) write_checkpoints(model, checkpoint_dir);
        }
        // Every weights seed must load: a seed the loader refuses teaches the fuzzer little.
        for (const char* family : {"effnet", "torchvision", "timm", "lukemelas"})
            for (const char* tag : {"se", "nose"}) {
                load_weights(weights_dir + "/" + family + "-" + tag + ".safetensors");
                ++written;
            }
        for (const char* kind : {"sgd", "rmsprop", "adamw"})
            train::load_checkpoint(checkpoint_dir + "/" + kind + ".safetensors");
        std::printf("seeds: %d weights files load, 3 checkpoints load\n", written);
    } catch (const Error& e) {
        std::fprintf(stderr, "effnet_fuzz_seeds: %s\n", e.what());
        return 1;
    }
    return 0;
}
