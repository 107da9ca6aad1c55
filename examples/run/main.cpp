// effnet-run: one forward (and optionally one train-mode backward) of a weights file on a
// tensor read from safetensors, writing logits / loss / gradients to safetensors. It is the
// bridge for parity checks against PyTorch: gradients are written under the weights file's own
// tensor names, so a script can compare them with `p.grad` directly.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "common/openmp_policy.hpp"
#include "common/args.hpp"
#include "common/output_path.hpp"
#include "cpu/ops.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/cpu_session.hpp"
#include "effnet/diagnose.hpp"
#include "effnet/error.hpp"
#include "effnet/gpu_training.hpp"
#include "effnet/inference.hpp"
#include "effnet/limits.hpp"
#include "effnet/model.hpp"
#include "effnet/safetensors.hpp"
#include "effnet/train/optimizer.hpp"

using namespace effnet;

namespace {

const char* kUsage =
    "usage: effnet-run --weights W.safetensors --input IN.safetensors --output OUT.safetensors\n"
    "                  [--device cpu|cuda] [--precision fp32|fp16|bf16] [--cpu-engine reference|fast]\n"
    "                  [--train --target T.safetensors] [--preset NAME] [--padding P] [--bn-eps E]\n"
    "       effnet-run --weights W.safetensors --save-weights OUT.safetensors [overrides]\n"
    "\n"
    "Runs the network on tensor 'input' (NCHW, F32 or F64) of IN and writes 'logits' [N, classes]\n"
    "to OUT. With --train: one train-mode forward (batch statistics, no dropout) and backward of\n"
    "mean cross-entropy against int64 tensor 'target' [N] of T; writes 'loss' [1], 'grad.input'\n"
    "(CPU only), 'grad.<name>' for every parameter and 'running.<name>' for every running mean\n"
    "and variance after the forward moved them, named as in the weights file. On the GPU,\n"
    "--train runs the GPU trainer's step (fp32; fp16 / bf16: AMP with fp32 master weights, loss\n"
    "scale 1024 for fp16). With --lr: then one optimizer step, SGD with momentum 0.9 and weight\n"
    "decay 1e-4 (not on batch-norm parameters nor biases), and 'param.<name>' for every trained\n"
    "parameter after it; without, the parameters are not updated.\n"
    "\n"
    "options:\n";

std::vector<examples::OptionSpec> option_specs() {
    return {
        {"weights", true, "weights file (torchvision, timm, lukemelas or effnet names)"},
        {"input", true, "safetensors file holding tensor 'input' [N, 3, H, W]"},
        {"output", true, "safetensors file to write"},
        {"device", true, "cpu (default) or cuda"},
        {"precision", true, "fp32 (default); fp16 / bf16 with --device cuda"},
        {"cpu-engine", true, "reference (default: the plain engine) or fast (CpuSession; eval logits only)"},
        {"train", false, "train-mode forward + backward of cross-entropy"},
        {"target", true, "safetensors file holding int64 tensor 'target' [N] (with --train)"},
        {"lr", true, "with --train: then one SGD step at this learning rate (see above)"},
        {"preset", true, "check the weights against a preset (b0..b7, lite0..lite4)"},
        {"padding", true, "symmetric or tf_same: overrides the weights' metadata"},
        {"bn-eps", true, "batch-norm epsilon: overrides the weights' metadata"},
        {"activation", true, "silu or relu6: overrides the weights' metadata"},
        {"features", true,
         "comma-separated feature indices 0..4 (strides 2..32): also write 'feature.<i>' (F32, NCHW)"},
        {"features-only", false, "with --features: stop after the last feature, no 'logits'"},
        {"save-weights", true,
         "write the loaded weights (with the overrides) under canonical names to this file; "
         "--input / --output are then optional"},
        {"help", false, "print this help"},
    };
}

bool file_exists(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string require_file(const examples::Args& args, const std::string& option) {
    const std::string path = args.require(option);
    EFFNET_CHECK(file_exists(path), "--" + option + " '" + path + "': no such file");
    return path;
}

// Tensor 'input' of the file: F32 or F64, [N, C, H, W] with C the model's input channels and
// H, W a size the network can take; every value finite in float32 (the engines' type).
Tensor read_input(const std::string& path, const ModelConfig& config) {
    const int channels = config.in_channels;
    const SafetensorsFile f = SafetensorsFile::open(path);
    EFFNET_CHECK(f.contains("input"), "--input '" + path + "' holds no tensor named 'input'");
    const TensorInfo& info = f.info("input");
    EFFNET_CHECK(info.dtype == DType::F32 || info.dtype == DType::F64,
                 "--input '" + path + "': tensor 'input' is " + dtype_name(info.dtype) +
                     ", expected F32 or F64");
    EFFNET_CHECK(info.shape.size() == 4 && info.shape[0] >= 1 && info.shape[2] >= 1 && info.shape[3] >= 1,
                 "--input '" + path + "': tensor 'input' has shape " + shape_str(info.shape) +
                     ", expected [N, C, H, W] with N, H, W >= 1");
    EFFNET_CHECK(info.shape[1] == channels, "--input '" + path + "': tensor 'input' has shape " +
                                                shape_str(info.shape) + ", the model takes " +
                                                std::to_string(channels) + " channels");
    EFFNET_CHECK(info.shape[2] <= limits::kMaxPreprocessSide && info.shape[3] <= limits::kMaxPreprocessSide,
                 "--input '" + path + "': tensor 'input' has shape " + shape_str(info.shape) +
                     ", images larger than " + std::to_string(limits::kMaxPreprocessSide) +
                     " a side are refused");
    try {
        make_network_plan(config, 1, int(info.shape[2]), int(info.shape[3]));
    } catch (const Error& e) {
        throw Error("--input '" + path + "': tensor 'input' has shape " + shape_str(info.shape) + ": " +
                    e.what());
    }
    // F64 values are checked before narrowing, so that 1e300 is named for what it is.
    const std::vector<double> values = f.read_f64("input");
    for (size_t i = 0; i < values.size(); ++i) {
        const double v = values[i];
        EFFNET_CHECK(std::isfinite(v), "--input '" + path +
                                           "': tensor 'input' holds a non-finite value at index " +
                                           std::to_string(i));
        EFFNET_CHECK(std::fabs(v) <= double(std::numeric_limits<float>::max()),
                     "--input '" + path + "': tensor 'input' holds " + std::to_string(v) + " at index " +
                         std::to_string(i) + ", outside float32's range (the engines compute in float32)");
    }
    return f.read_f32("input");
}

std::vector<int64_t> read_target(const std::string& path, int64_t batch, int classes) {
    const SafetensorsFile f = SafetensorsFile::open(path);
    EFFNET_CHECK(f.contains("target"), "--target '" + path + "' holds no tensor named 'target'");
    const TensorInfo& info = f.info("target");
    EFFNET_CHECK(info.dtype == DType::I64,
                 "--target '" + path + "': tensor 'target' is " + dtype_name(info.dtype) + ", expected I64");
    EFFNET_CHECK(info.shape == Shape{batch}, "--target '" + path + "': tensor 'target' has shape " +
                                                 shape_str(info.shape) + ", expected [" +
                                                 std::to_string(batch) + "]");
    std::vector<int64_t> target = f.read_i64("target");
    for (int64_t t : target)
        EFFNET_CHECK(t >= 0 && t < classes, "--target '" + path + "': class " + std::to_string(t) +
                                                " is outside [0, " + std::to_string(classes) + ")");
    return target;
}

// The optimizer of --lr: SGD, momentum 0.9, weight decay 1e-4 by train::Optimizer's default rule.
train::OptimizerConfig update_config() {
    train::OptimizerConfig c;
    c.kind = train::OptimizerKind::SGD;
    c.momentum = 0.9;
    c.weight_decay = 1e-4;
    return c;
}

// One GPU training step's loss, logits and parameter gradients (canonical names), then with
// lr > 0 the update_config() step. The model gets the running statistics the step's forward
// moved (and the updated parameters).
struct GpuTrainResult {
    float loss = 0;
    Tensor logits;
    std::map<std::string, Tensor> grads;
};

GpuTrainResult train_step_cuda(Model& model, const Tensor& input, const std::vector<int64_t>& target,
                               const std::string& precision_text, double lr) {
    const Precision p = parse_precision(precision_text);
    EFFNET_CHECK(cuda_available(),
                 "--device cuda: CUDA is not available (" + cuda_device_description() + ")");
    const TrainPrecision tp = p == Precision::FP32   ? TrainPrecision::FP32
                              : p == Precision::FP16 ? TrainPrecision::AmpFP16
                                                     : TrainPrecision::AmpBF16;
    GpuTrainOptions o;
    o.dropout = false;
    o.deterministic = true;
    o.loss_scale = tp == TrainPrecision::AmpFP16 ? 1024.0f : 1.0f;
    o.optimizer = update_config();
    GpuTrainer trainer(model, int(input.dim(0)), int(input.dim(2)), int(input.dim(3)), tp, o);
    GpuTrainResult r;
    r.loss = trainer.compute_gradients(input.ptr(), target.data());
    EFFNET_CHECK(trainer.last_step_finite(), std::string("--train --device cuda: non-finite gradients (") +
                                                 train_precision_name(tp) + ")");
    r.logits = trainer.logits();
    r.grads = trainer.gradients().params;
    if (lr > 0) trainer.apply_update(lr);
    trainer.download(model); // the running statistics the train-mode forward moved
    return r;
}

// The logits (empty with features_only) and, with `features`, the feature maps (NCHW F32).
Tensor run_cuda(const Model& model, const Tensor& input, const std::string& precision_text,
                const std::vector<int>& features = {}, bool features_only = false,
                std::vector<Tensor>* feature_maps = nullptr) {
    const Precision precision = parse_precision(precision_text);
    EFFNET_CHECK(cuda_available(),
                 "--device cuda: CUDA is not available (" + cuda_device_description() + ")");
#ifdef EFFNET_WITH_CUDA
    const int n = int(input.dim(0)), h = int(input.dim(2)), w = int(input.dim(3));
    SessionOptions so;
    so.features = features;
    so.features_only = features_only;
    InferenceSession session(model, n, h, w, precision, so);
    Tensor logits;
    if (!features_only) logits = Tensor({input.dim(0), int64_t(model.config.num_classes)});
    if (features.empty()) {
        session.run(input.ptr(), logits.ptr());
        return logits;
    }
    std::vector<float*> outs;
    for (const FeatureInfo& f : session.features()) {
        feature_maps->push_back(Tensor({f.shape.batch, f.shape.channels, f.shape.height, f.shape.width}));
        outs.push_back(feature_maps->back().ptr());
    }
    session.run_features(input.ptr(), outs.data(), features_only ? nullptr : logits.ptr());
    return logits;
#else
    (void)model;
    (void)input;
    (void)precision;
    (void)features;
    (void)features_only;
    (void)feature_maps;
    throw Error("--device cuda: this build of effnet has no CUDA support");
#endif
}

int run(int argc, char** argv) {
    const examples::Args args(argc, argv, option_specs());
    if (args.has("help")) {
        std::printf("%s%s", kUsage, args.usage().c_str());
        return 0;
    }
    const std::string weights_path = require_file(args, "weights");
    // --save-weights alone only converts: no forward, --input / --output not needed.
    const bool forward_run = !args.has("save-weights") || args.has("input") || args.has("output");
    const std::string input_path = forward_run ? require_file(args, "input") : "";
    const std::string output_path = forward_run ? args.require("output") : "";
    if (forward_run)
        examples::check_output_is_not_input(
            "output", output_path,
            {{"weights", weights_path}, {"input", input_path}, {"target", args.get("target")}});
    if (args.has("save-weights"))
        examples::check_output_is_not_input("save-weights", args.get("save-weights"),
                                            {{"weights", weights_path},
                                             {"input", input_path},
                                             {"target", args.get("target")},
                                             {"output", output_path}});
    const std::string device = args.get("device", "cpu");
    EFFNET_CHECK(device == "cpu" || device == "cuda", "--device must be cpu or cuda, got '" + device + "'");
    const std::string precision = args.get("precision", "fp32");
    try {
        parse_precision(precision);
    } catch (const Error& e) {
        throw Error(std::string("--precision: ") + e.what());
    }
    const bool train = args.has("train");
    const std::string cpu_engine = args.get("cpu-engine", "reference");
    EFFNET_CHECK(cpu_engine == "reference" || cpu_engine == "fast",
                 "--cpu-engine must be reference or fast, got '" + cpu_engine + "'");
    const bool fast = cpu_engine == "fast";
    EFFNET_CHECK(
        !fast || (device == "cpu" && !train && !args.has("features")),
        "--cpu-engine fast runs the eval forward on the CPU only (no --train, --features, --device cuda)");
    EFFNET_CHECK(device == "cuda" || parse_precision(precision) == Precision::FP32,
                 "--precision " + precision + " needs --device cuda (the CPU engine computes in fp32)");
    EFFNET_CHECK(train || !args.has("target"), "--target is only used with --train");
    const std::string target_path = train ? require_file(args, "target") : "";
    EFFNET_CHECK(train || !args.has("lr"), "--lr is only used with --train");
    const double lr = args.get_double("lr", 0);
    std::vector<int> features; // --features 0,1,2,3,4
    if (args.has("features")) {
        const std::string list = args.get("features");
        size_t pos = 0;
        while (pos <= list.size()) {
            const size_t comma = std::min(list.find(',', pos), list.size());
            const std::string item = list.substr(pos, comma - pos);
            EFFNET_CHECK(!item.empty() && item.find_first_not_of("0123456789") == std::string::npos &&
                             item.size() <= 2,
                         "--features must be comma-separated indices 0..4, got '" + list + "'");
            features.push_back(std::stoi(item));
            pos = comma + 1;
        }
        try {
            check_feature_indices(features);
        } catch (const Error& e) {
            throw Error(std::string("--") + e.what());
        }
    }
    const bool features_only = args.has("features-only");
    EFFNET_CHECK(!features_only || !features.empty(), "--features-only needs --features");
    EFFNET_CHECK(features.empty() || !train, "--features is not used with --train");
    EFFNET_CHECK(!args.has("lr") || (std::isfinite(lr) && lr > 0),
                 "--lr must be a finite number > 0, got " + args.get("lr"));

    LoadOptions options;
    options.preset = args.get("preset");
    try {
        if (args.has("padding")) options.padding = parse_padding(args.get("padding"));
        if (args.has("activation")) options.activation = parse_activation(args.get("activation"));
    } catch (const Error& e) {
        throw Error(std::string(args.has("padding") && !options.padding ? "--padding: " : "--activation: ") +
                    e.what());
    }
    if (args.has("bn-eps")) {
        const double eps = args.get_double("bn-eps", 0);
        EFFNET_CHECK(eps > 0 && eps < 1, "--bn-eps must be in (0, 1), got " + args.get("bn-eps"));
        options.bn_eps = float(eps);
    }
    Model model = load_weights(weights_path, options);
    if (args.has("save-weights")) {
        save_weights(model, args.get("save-weights"));
        std::printf("wrote %s: weights (%s, canonical names)\n", args.get("save-weights").c_str(),
                    model.family.c_str());
        if (!forward_run) return 0;
    }
    const Tensor input = read_input(input_path, model.config);
    const std::vector<int64_t> target =
        train ? read_target(target_path, input.dim(0), model.config.num_classes) : std::vector<int64_t>{};

    const auto t0 = std::chrono::steady_clock::now();
    SafetensorsWriter out;
    Tensor logits;
    std::vector<Tensor> feature_maps; // --features, in their order
    if (device == "cuda" && train) {
        const GpuTrainResult r = train_step_cuda(model, input, target, precision, lr);
        logits = r.logits;
        out.add("loss", Tensor({1}, r.loss));
        for (const auto& [name, grad] : r.grads) out.add("grad." + model.source_names.at(name), grad);
    } else if (device == "cuda") {
        logits = run_cuda(model, input, precision, features, features_only, &feature_maps);
    } else if (fast) {
        CpuSession session(model, int(input.dim(0)), int(input.dim(2)), int(input.dim(3)));
        logits = Tensor({input.dim(0), int64_t(model.config.num_classes)});
        session.run(input.ptr(), logits.ptr());
    } else {
        cpu::Network net(model);
        cpu::ForwardOptions forward;
        forward.train = train;
        forward.dropout = false;
        forward.features = features;
        forward.features_only = features_only;
        const cpu::ForwardResult r = net.forward(input, forward);
        logits = r.logits;
        feature_maps = r.features;
        if (train) {
            Tensor dlogits;
            const double loss = cpu::softmax_cross_entropy(r.logits, target, 0.0f, &dlogits);
            const cpu::Gradients g = net.backward(dlogits);
            out.add("loss", Tensor({1}, float(loss)));
            out.add("grad.input", g.input);
            for (const auto& [name, grad] : g.params) out.add("grad." + model.source_names.at(name), grad);
            if (lr > 0) {
                train::Optimizer optimizer(update_config());
                optimizer.step(model.params, g.params, lr);
            }
        }
    }
    // Non-finite logits are an error, not an output. In eval, the diagnosis names the first layer
    // that went non-finite; a train-mode forward (batch statistics) has no such oracle here.
    const int64_t classes = model.config.num_classes;
    auto image_name = [&](int64_t row) {
        return "image " + std::to_string(row) + " of --input '" + input_path + "'";
    };
    for (size_t k = 0; k < feature_maps.size(); ++k)
        out.add("feature." + std::to_string(features[k]), feature_maps[k]);
    if (features_only) {
        // No logits to check or write.
    } else if (!train) {
        check_logits_finite(model, input.ptr(), input.shape, logits.ptr(), classes,
                            device == "cuda" ? "cuda " + precision
                            : fast           ? "the fast CPU path"
                                             : "the CPU engine",
                            image_name);
    } else {
        const int64_t bad_row = first_non_finite_row(logits.ptr(), input.dim(0), classes);
        EFFNET_CHECK(bad_row < 0,
                     "the training step's logits for " + image_name(bad_row) + " are non-finite");
    }
    if (!features_only) out.add("logits", logits);
    // The running statistics (the non-trainable parameters) after the train-mode forward moved
    // them, and with --lr the trainable parameters after the update.
    if (train)
        for (const ParamSpec& spec : parameter_specs(model.config))
            if (!spec.trainable || lr > 0)
                out.add((spec.trainable ? "param." : "running.") + model.source_names.at(spec.name),
                        model.param(spec.name));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    out.set_metadata("device", device);
    out.set_metadata("precision", device == "cuda" ? precision : "fp32");
    out.set_metadata("mode", train ? "train" : "eval");
    out.write(output_path);
    std::string what = features_only ? ""
                                     : "logits [" + std::to_string(input.dim(0)) + ", " +
                                           std::to_string(model.config.num_classes) + "]";
    if (!features.empty()) what += (what.empty() ? "" : ", ") + std::to_string(features.size()) + " features";
    std::printf("wrote %s: %s%s (%s %s, %s names, %.3f s)\n", output_path.c_str(), what.c_str(),
                train ? ", loss and gradients" : "", device.c_str(),
                device == "cuda" ? precision.c_str() : "fp32", model.family.c_str(), seconds);
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    effnet::examples::use_passive_openmp(argv);
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
