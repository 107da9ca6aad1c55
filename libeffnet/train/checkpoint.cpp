// Training checkpoints: model, optimizer state, loss scaler, counters and the architecture in
// one safetensors file, written atomically by SafetensorsWriter (temp file, fsync, rename,
// fsync of the directory). Every float32 is stored as is, so a resume is bit-exact.
#include <nlohmann/json.hpp>

#include "effnet/error.hpp"
#include "effnet/safetensors.hpp"
#include "effnet/train/checkpoint.hpp"

namespace effnet::train {
namespace {

const char* kFormat = "effnet-checkpoint-1";
using json = nlohmann::json;

} // namespace

std::string config_to_json(const ModelConfig& c) {
    json j;
    j["name"] = c.name;
    j["in_channels"] = c.in_channels;
    j["stem_channels"] = c.stem_channels;
    j["head_channels"] = c.head_channels;
    j["num_classes"] = c.num_classes;
    j["activation"] = activation_name(c.activation);
    j["padding"] = padding_name(c.padding);
    j["bn_eps"] = c.bn_eps;
    j["bn_momentum"] = c.bn_momentum;
    j["dropout"] = c.dropout;
    j["stochastic_depth"] = c.stochastic_depth;
    j["resolution"] = c.resolution;
    j["preprocess"] = {{"resize", c.preprocess.resize},
                       {"crop", c.preprocess.crop},
                       {"interpolation", c.preprocess.interpolation},
                       {"mean", {c.preprocess.mean[0], c.preprocess.mean[1], c.preprocess.mean[2]}},
                       {"std", {c.preprocess.std[0], c.preprocess.std[1], c.preprocess.std[2]}}};
    json blocks = json::array();
    for (const BlockConfig& b : c.blocks)
        blocks.push_back({{"in", b.in_channels},
                          {"expand", b.expand_channels},
                          {"out", b.out_channels},
                          {"kernel", b.kernel},
                          {"stride", b.stride},
                          {"se", b.se_channels},
                          {"stage", b.stage},
                          {"index_in_stage", b.index_in_stage},
                          {"drop_path", b.drop_path}});
    j["blocks"] = blocks;
    return j.dump();
}

ModelConfig config_from_json(const std::string& text) {
    ModelConfig c;
    try {
        const json j = json::parse(text);
        c.name = j.at("name").get<std::string>();
        c.in_channels = j.at("in_channels").get<int>();
        c.stem_channels = j.at("stem_channels").get<int>();
        c.head_channels = j.at("head_channels").get<int>();
        c.num_classes = j.at("num_classes").get<int>();
        c.activation = parse_activation(j.at("activation").get<std::string>());
        c.padding = parse_padding(j.at("padding").get<std::string>());
        c.bn_eps = j.at("bn_eps").get<float>();
        c.bn_momentum = j.at("bn_momentum").get<float>();
        c.dropout = j.at("dropout").get<float>();
        c.stochastic_depth = j.at("stochastic_depth").get<float>();
        c.resolution = j.at("resolution").get<int>();
        const json& p = j.at("preprocess");
        c.preprocess.resize = p.at("resize").get<int>();
        c.preprocess.crop = p.at("crop").get<int>();
        c.preprocess.interpolation = p.at("interpolation").get<std::string>();
        for (int i = 0; i < 3; ++i) {
            c.preprocess.mean[i] = p.at("mean").at(i).get<float>();
            c.preprocess.std[i] = p.at("std").at(i).get<float>();
        }
        for (const json& b : j.at("blocks")) {
            BlockConfig block;
            block.in_channels = b.at("in").get<int>();
            block.expand_channels = b.at("expand").get<int>();
            block.out_channels = b.at("out").get<int>();
            block.kernel = b.at("kernel").get<int>();
            block.stride = b.at("stride").get<int>();
            block.se_channels = b.at("se").get<int>();
            block.stage = b.at("stage").get<int>();
            block.index_in_stage = b.at("index_in_stage").get<int>();
            block.drop_path = b.at("drop_path").get<float>();
            c.blocks.push_back(block);
        }
    } catch (const json::exception& e) {
        throw Error(std::string("model config JSON is invalid: ") + e.what());
    }
    c.validate();
    return c;
}

void save_checkpoint(const std::string& path, const Model& model, const Optimizer& optimizer,
                     const TrainingState& state) {
    SafetensorsWriter writer;
    for (const ParamSpec& spec : parameter_specs(model.config)) {
        const Tensor& t = model.param(spec.name);
        EFFNET_CHECK(t.shape == spec.shape, "checkpoint: parameter '" + spec.name + "' has shape " +
                                                shape_str(t.shape) + ", expected " + shape_str(spec.shape));
        writer.add("model/" + spec.name, t);
    }
    for (const auto& [key, t] : optimizer.state()) writer.add("optim/" + key, t);
    writer.add_i64(
        "state/counters", {5},
        {state.step, state.epoch, state.batch_in_epoch, optimizer.step_count(), int64_t(state.seed)});
    writer.add_f64("state/scaler", {3},
                   {state.scaler_scale, double(state.scaler_good_steps), double(state.scaler_skipped)});
    for (const auto& [k, v] : state.metadata) writer.set_metadata(k, v);
    writer.set_metadata("checkpoint_format", kFormat);
    writer.set_metadata("model_config", config_to_json(model.config));
    writer.set_metadata("optimizer", optimizer_name(optimizer.config().kind));
    writer.write(path);
}

Checkpoint load_checkpoint(const std::string& path) {
    const SafetensorsFile file = SafetensorsFile::open(path);
    const auto& meta = file.metadata();
    auto get = [&](const std::string& key) {
        auto it = meta.find(key);
        EFFNET_CHECK(it != meta.end(), "checkpoint '" + path + "': metadata '" + key + "' is missing");
        return it->second;
    };
    auto format = meta.find("checkpoint_format");
    EFFNET_CHECK(format != meta.end() && format->second == kFormat,
                 "checkpoint '" + path +
                     "' is not an effnet training checkpoint (metadata "
                     "'checkpoint_format' is not '" +
                     kFormat + "')");
    Checkpoint ck;
    try {
        ck.model.config = config_from_json(get("model_config"));
    } catch (const Error& e) {
        throw Error("checkpoint '" + path + "': " + e.what());
    }
    ck.model.family = "effnet";
    for (const ParamSpec& spec : parameter_specs(ck.model.config)) {
        const std::string key = "model/" + spec.name;
        EFFNET_CHECK(file.contains(key), "checkpoint '" + path + "': tensor '" + key + "' is missing");
        Tensor t = file.read_f32(key);
        EFFNET_CHECK(t.shape == spec.shape, "checkpoint '" + path + "': tensor '" + key + "' has shape " +
                                                shape_str(t.shape) + ", expected " + shape_str(spec.shape));
        ck.model.params[spec.name] = std::move(t);
    }
    for (const std::string& name : file.names())
        if (name.rfind("optim/", 0) == 0) ck.optimizer_state[name.substr(6)] = file.read_f32(name);
    ck.optimizer_name = get("optimizer");

    const auto counters = file.read_i64("state/counters");
    EFFNET_CHECK(counters.size() == 5, "checkpoint '" + path + "': state/counters must hold 5 values");
    ck.state.step = counters[0];
    ck.state.epoch = counters[1];
    ck.state.batch_in_epoch = counters[2];
    ck.optimizer_steps = counters[3];
    ck.state.seed = uint64_t(counters[4]);
    EFFNET_CHECK(ck.state.step >= 0 && ck.state.epoch >= 0 && ck.state.batch_in_epoch >= 0 &&
                     ck.optimizer_steps >= 0,
                 "checkpoint '" + path + "': negative counters");
    const auto scaler = file.read_f64("state/scaler");
    EFFNET_CHECK(scaler.size() == 3, "checkpoint '" + path + "': state/scaler must hold 3 values");
    ck.state.scaler_scale = scaler[0];
    ck.state.scaler_good_steps = int64_t(scaler[1]);
    ck.state.scaler_skipped = int64_t(scaler[2]);
    for (const auto& [k, v] : meta)
        if (k != "checkpoint_format" && k != "model_config" && k != "optimizer") ck.state.metadata[k] = v;
    return ck;
}

} // namespace effnet::train
