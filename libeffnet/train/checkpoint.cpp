// Training checkpoints: model, optimizer state, loss scaler, counters and the architecture in
// one safetensors file, written atomically by SafetensorsWriter (temp file, fsync, rename,
// fsync of the directory). Every float32 is stored as is, so a resume is bit-exact. Also what
// keeps a checkpoint directory sane across runs: the finiteness check before a write, the run
// lock, and the removal of temporaries that killed writes left behind.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

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
    if (const auto bad = find_unwritable_value(model, &optimizer.state()))
        throw Error("checkpoint '" + path + "' not written: " + bad->describe());
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
    // Checked before the conversions: a double outside int64 (1e300, NaN) is undefined behaviour
    // to convert (found by fuzz_checkpoint). Counters are whole numbers up to 2^53.
    auto is_count = [](double v) { return v >= 0 && v <= 9007199254740992.0 && v == std::floor(v); };
    EFFNET_CHECK(std::isfinite(scaler[0]) && scaler[0] > 0 && is_count(scaler[1]) && is_count(scaler[2]),
                 "checkpoint '" + path +
                     "': state/scaler must hold a finite loss scale > 0 and two whole counts "
                     "in [0, 2^53]");
    ck.state.scaler_scale = scaler[0];
    ck.state.scaler_good_steps = int64_t(scaler[1]);
    ck.state.scaler_skipped = int64_t(scaler[2]);
    for (const auto& [k, v] : meta)
        if (k != "checkpoint_format" && k != "model_config" && k != "optimizer") ck.state.metadata[k] = v;
    // effnet never writes one (save_checkpoint refuses); a resume from it would go on with garbage.
    if (const auto bad = find_unwritable_value(ck.model, &ck.optimizer_state))
        throw Error("checkpoint '" + path + "' cannot be resumed: " + bad->describe());
    return ck;
}

namespace {

std::string format_value(float v) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", double(v));
    return buf;
}

} // namespace

std::string UnwritableValue::describe() const {
    const bool negative_variance = std::isfinite(value);
    return "tensor '" + tensor + "' holds " + format_value(value) +
           (negative_variance ? " (a negative running variance)" : "") + " at element " +
           std::to_string(index);
}

std::optional<UnwritableValue> find_unwritable_value(const Model& model, const ParamMap* optimizer_state) {
    auto check = [](const std::string& name, const Tensor& t) -> std::optional<UnwritableValue> {
        const int64_t i = first_invalid_element(name, t);
        if (i < 0) return std::nullopt;
        return UnwritableValue{name, i, t.data[size_t(i)]};
    };
    for (const auto& [name, t] : model.params)
        if (auto bad = check("model/" + name, t)) return bad;
    if (optimizer_state)
        for (const auto& [name, t] : *optimizer_state)
            if (auto bad = check("optim/" + name, t)) return bad;
    return std::nullopt;
}

RunLock RunLock::acquire(const std::string& lock_path, const std::string& what) {
    // O_NOFOLLOW: a planted symbolic link must not make us create or truncate another file.
    const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    EFFNET_CHECK(fd >= 0, "cannot open the lock file '" + lock_path + "': " + std::strerror(errno));
    RunLock lock(fd, lock_path);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        char pid[32] = {};
        const ssize_t n = ::pread(fd, pid, sizeof pid - 1, 0);
        std::string holder = n > 0 ? std::string(pid, size_t(n)) : "";
        while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
        if (err == EWOULDBLOCK)
            throw Error(what + " is in use by another run (pid " +
                        (holder.empty() ? "unknown" : excerpt(holder)) + ", lock file '" + lock_path +
                        "'); wait for it to finish or use another directory");
        throw Error("cannot lock '" + lock_path + "': " + std::strerror(err));
    }
    const std::string pid = std::to_string(::getpid()) + "\n";
    // The pid is only for messages: a failure to record it does not matter.
    if (::ftruncate(fd, 0) == 0) (void)!::pwrite(fd, pid.data(), pid.size(), 0);
    return lock;
}

RunLock::RunLock(RunLock&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) {
    other.fd_ = -1;
}

RunLock& RunLock::operator=(RunLock&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = other.fd_;
        path_ = std::move(other.path_);
        other.fd_ = -1;
    }
    return *this;
}

RunLock::~RunLock() {
    if (fd_ >= 0) ::close(fd_); // closing the last descriptor releases the flock
}

std::string checkpoint_lock_path(const std::string& checkpoint_dir) {
    return (std::filesystem::path(checkpoint_dir) / ".effnet-train.lock").string();
}

bool is_temporary_of(const std::string& file_name, const std::string& final_name) {
    const std::string prefix = final_name + ".tmp.";
    if (file_name.size() != prefix.size() + 6 || file_name.compare(0, prefix.size(), prefix) != 0)
        return false;
    for (size_t i = prefix.size(); i < file_name.size(); ++i) {
        const char c = file_name[i];
        const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum) return false;
    }
    return true;
}

RemovedTemporaries remove_stale_temporaries(const std::string& final_path, const RunLock& /*held*/) {
    namespace fs = std::filesystem;
    const fs::path target(final_path);
    const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
    const std::string final_name = target.filename().string();
    RemovedTemporaries removed;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        if (!is_temporary_of(it->path().filename().string(), final_name)) continue;
        struct stat st = {};
        // lstat: a symbolic link or anything but a plain file is not ours; leave it.
        if (::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (::unlink(it->path().c_str()) != 0)
            throw Error("cannot remove the stale temporary file '" + it->path().string() +
                        "': " + std::strerror(errno));
        ++removed.files;
        removed.bytes += uint64_t(st.st_size);
    }
    EFFNET_CHECK(!ec, "cannot list '" + dir.string() + "': " + ec.message());
    return removed;
}

} // namespace effnet::train
