// effnet-train's command line: every option declared once with its parser and, for the options
// that define a run, a normaliser so that a resume can compare them with the checkpoint's.
#include "options.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "common/args.hpp"
#include "effnet/error.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/schedule.hpp"

namespace effnet::examples {
namespace {

const char* kUsage =
    "usage: effnet-train --data DIR [options]\n"
    "Fine-tunes or trains an EfficientNet on a folder of images (DIR/<class>/<image>) on the CPU\n"
    "engine or, with --device cuda, on the GPU.\n"
    "Batches: on both devices an epoch's last partial batch is dropped (a training set smaller than\n"
    "--batch gives one batch of all its images). The GPU trains on a fixed batch size, so with\n"
    "--device cuda a batch that lost unreadable images is filled up by repeating its readable images.\n"
    "With --device cuda validation runs in fp32 on the GPU; --precision amp-fp16 uses a dynamic loss\n"
    "scale (steps with non-finite gradients are skipped and the scale halved; it doubles after 2000\n"
    "good steps). A checkpoint from either device resumes on either (--device and --precision may\n"
    "change on --resume; the run continues exactly only on the same device and precision).\n"
    "No checkpoint or export is ever written holding a non-finite value or a negative BN running variance:\n"
    "the run stops with an error naming the step and the tensor. No output may name an input (--weights,\n"
    "the checkpoint, an image of --data or --val).\n"
    "Data-parallel: launched as N processes (mpirun -np N, srun, or torchrun-style "
    "RANK/WORLD_SIZE/LOCAL_RANK\n"
    "with --device cuda and --dist-init-file), --batch is the global batch: each rank trains on its part\n"
    "(batch / N), gradients are averaged, every rank applies the same update; rank 0 alone prints and "
    "writes\n"
    "the log, plot, checkpoints and export. A checkpoint resumes on any number of ranks at the same "
    "step.\n\n";

std::vector<OptionSpec> option_specs() {
    return {
        {"data", true, "DIR: training images, DIR/<class>/*.{jpg,jpeg,png,bmp,tga}"},
        {"val", true, "DIR: validation images with the same class folders (top-1/top-5 each epoch)"},
        {"weights", true, "FILE: pretrained .safetensors to start from"},
        {"preset", true, "NAME: random init of a preset (b0..b7, lite0..lite4)"},
        {"width", true, "W: random init of a custom model scaling B0's widths by W (with --depth)"},
        {"depth", true, "D: ... and its depths by D"},
        {"classes", true, "N: classes (default: the number of class folders); replaces the classifier"},
        {"epochs", true, "E: epochs (default 10)"},
        {"batch", true, "B: batch size (default 32)"},
        {"lr", true, "LR: peak learning rate (default: sgd 0.1, rmsprop 0.016, adamw 0.001)"},
        {"optimizer", true, "sgd|rmsprop|adamw (default sgd)"},
        {"momentum", true, "M: momentum for sgd and rmsprop (default 0.9)"},
        {"weight-decay", true, "WD: (default: sgd 1e-4, rmsprop 1e-5, adamw 0.05); none on BN and biases"},
        {"schedule", true, "cosine|step (default cosine)"},
        {"warmup-epochs", true, "E: linear warmup (default 0)"},
        {"step-epochs", true, "E: step schedule: decay every E epochs (default 2.4)"},
        {"step-gamma", true, "G: step schedule: decay factor (default 0.97)"},
        {"label-smoothing", true, "EPS: (default 0.1)"},
        {"clip-grad-norm", true, "N: clip gradients to global norm N (default: off)"},
        {"no-dropout", false, "disable dropout and stochastic depth"},
        {"resolution", true, "R: training crop size (default: the model's native resolution)"},
        {"device", true, "cpu|cuda (default cpu; cuda needs a GPU and a CUDA build)"},
        {"precision", true, "fp32|amp-fp16|amp-bf16 (default fp32; AMP needs cuda)"},
        {"workers", true, "N: image decoding threads (default 2)"},
        {"threads", true, "N: compute threads (default: OpenMP's)"},
        {"seed", true, "S: seed of the whole run: init, shuffling, augmentation, dropout (default 0)"},
        {"checkpoint-dir", true,
         "DIR: write DIR/checkpoint.safetensors (atomically); DIR is locked for the run (a second run on it "
         "is refused) and temporaries of killed writes are removed at start"},
        {"checkpoint-every", true, "N: also checkpoint every N steps (default: end of each epoch)"},
        {"resume", false, "continue from DIR/checkpoint.safetensors exactly"},
        {"max-steps", true, "N: stop after N steps in all (checkpointed; --resume continues)"},
        {"export", true,
         "OUT.safetensors: inference weights and OUT.labels.txt at the end (for effnet-classify); locked "
         "for the run by a hidden .OUT.effnet-train.lock beside it"},
        {"log", true, "CSV: one row per step and per epoch"},
        {"plot", true, "PNG: loss and accuracy curves"},
        {"sync-bn", false,
         "data-parallel runs: batch-norm statistics over the global batch (all-reduced in the forward and "
         "the backward) instead of each rank's part"},
        {"micro-batches", true,
         "N: single process: split each batch into N parts with their own batch statistics and accumulate "
         "their gradients (what N ranks without --sync-bn compute; default 1)"},
        {"bucket-mb", true, "MB: data-parallel gradient all-reduce bucket size (default 4)"},
        {"dist-init-file", true,
         "PATH: torchrun-style launch (RANK/WORLD_SIZE) on GPUs: rank 0 writes NCCL's id there (shared "
         "filesystem), the others read it"},
        {"dist-timeout", true, "S: seconds ranks wait for --dist-init-file (default 300)"},
        {"force-nccl", false,
         "--device cuda in one process: average the gradients through a one-rank NCCL communicator anyway "
         "(measures the data-parallel path's overhead)"},
        {"help", false, "this text"},
    };
}

// The shortest of %.15g / %.17g that reads back as the same double ("0.003", not
// "0.0030000000000000001").
std::string fmt(double v) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.15g", v);
    if (std::strtod(buf, nullptr) != v) std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
}

int parse_ranged_int(const std::string& name, const std::string& v, long long lo, long long hi) {
    const long long n = parse_int_option(name, v);
    EFFNET_CHECK(n >= lo && n <= hi, "option '--" + name + "' must be in [" + std::to_string(lo) + ", " +
                                         std::to_string(hi) + "], got " + v);
    return int(n);
}

double parse_ranged_double(const std::string& name, const std::string& v, double lo, double hi,
                           bool open_hi = false) {
    const double d = parse_double_option(name, v);
    EFFNET_CHECK(d >= lo && (open_hi ? d < hi : d <= hi), "option '--" + name + "' must be in [" + fmt(lo) +
                                                              ", " + fmt(hi) + (open_hi ? ")" : "]") +
                                                              ", got " + v);
    return d;
}

// A run-defining option: how to set it from a string and how to write it back.
struct RunOption {
    std::string name;
    std::function<void(TrainArgs&, const std::string&)> set;
    std::function<std::string(const TrainArgs&)> get;
};

std::vector<RunOption> run_option_table() {
    return {
        {"weights", [](TrainArgs& a, const std::string& v) { a.weights = v; },
         [](const TrainArgs& a) { return a.weights; }},
        {"preset", [](TrainArgs& a, const std::string& v) { a.preset = v; },
         [](const TrainArgs& a) { return a.preset; }},
        {"width",
         [](TrainArgs& a, const std::string& v) { a.width = parse_ranged_double("width", v, 0.01, 8); },
         [](const TrainArgs& a) { return a.width > 0 ? fmt(a.width) : ""; }},
        {"depth",
         [](TrainArgs& a, const std::string& v) { a.depth = parse_ranged_double("depth", v, 0.01, 8); },
         [](const TrainArgs& a) { return a.depth > 0 ? fmt(a.depth) : ""; }},
        {"classes",
         [](TrainArgs& a, const std::string& v) { a.classes = parse_ranged_int("classes", v, 1, 1000000); },
         [](const TrainArgs& a) { return std::to_string(a.classes); }},
        {"epochs",
         [](TrainArgs& a, const std::string& v) { a.epochs = parse_ranged_int("epochs", v, 1, 100000); },
         [](const TrainArgs& a) { return std::to_string(a.epochs); }},
        {"batch",
         [](TrainArgs& a, const std::string& v) { a.batch = parse_ranged_int("batch", v, 1, 65536); },
         [](const TrainArgs& a) { return std::to_string(a.batch); }},
        {"lr",
         [](TrainArgs& a, const std::string& v) {
             a.lr = parse_double_option("lr", v);
             EFFNET_CHECK(a.lr > 0 && a.lr <= 100, "option '--lr' must be in (0, 100], got " + v);
         },
         [](const TrainArgs& a) { return fmt(a.lr); }},
        {"optimizer", [](TrainArgs& a, const std::string& v) { train::parse_optimizer(v), a.optimizer = v; },
         [](const TrainArgs& a) { return a.optimizer; }},
        {"momentum",
         [](TrainArgs& a, const std::string& v) {
             a.momentum = parse_ranged_double("momentum", v, 0, 1, true);
         },
         [](const TrainArgs& a) { return fmt(a.momentum); }},
        {"weight-decay",
         [](TrainArgs& a, const std::string& v) {
             a.weight_decay = parse_ranged_double("weight-decay", v, 0, 10);
         },
         [](const TrainArgs& a) { return fmt(a.weight_decay); }},
        {"schedule", [](TrainArgs& a, const std::string& v) { train::parse_schedule(v), a.schedule = v; },
         [](const TrainArgs& a) { return a.schedule; }},
        {"warmup-epochs",
         [](TrainArgs& a, const std::string& v) {
             a.warmup_epochs = parse_ranged_double("warmup-epochs", v, 0, 100000);
         },
         [](const TrainArgs& a) { return fmt(a.warmup_epochs); }},
        {"step-epochs",
         [](TrainArgs& a, const std::string& v) {
             a.step_epochs = parse_ranged_double("step-epochs", v, 1e-6, 100000);
         },
         [](const TrainArgs& a) { return fmt(a.step_epochs); }},
        {"step-gamma",
         [](TrainArgs& a, const std::string& v) {
             a.step_gamma = parse_ranged_double("step-gamma", v, 1e-6, 1);
         },
         [](const TrainArgs& a) { return fmt(a.step_gamma); }},
        {"label-smoothing",
         [](TrainArgs& a, const std::string& v) {
             a.label_smoothing = parse_ranged_double("label-smoothing", v, 0, 1, true);
         },
         [](const TrainArgs& a) { return fmt(a.label_smoothing); }},
        {"clip-grad-norm",
         [](TrainArgs& a, const std::string& v) {
             a.clip_grad_norm = parse_ranged_double("clip-grad-norm", v, 0, 1e9);
         },
         [](const TrainArgs& a) { return fmt(a.clip_grad_norm); }},
        {"no-dropout", [](TrainArgs& a, const std::string& v) { a.no_dropout = v == "1"; },
         [](const TrainArgs& a) { return std::string(a.no_dropout ? "1" : "0"); }},
        {"resolution",
         [](TrainArgs& a, const std::string& v) {
             a.resolution = parse_ranged_int("resolution", v, 8, 2048);
         },
         [](const TrainArgs& a) { return std::to_string(a.resolution); }},
        {"seed",
         [](TrainArgs& a, const std::string& v) {
             const long long s = parse_int_option("seed", v);
             EFFNET_CHECK(s >= 0, "option '--seed' must be >= 0, got " + v);
             a.seed = uint64_t(s);
         },
         [](const TrainArgs& a) { return std::to_string(a.seed); }},
    };
}

} // namespace

bool parse_train_args(int argc, char** argv, TrainArgs& a, std::map<std::string, std::string>& given) {
    const Args args(argc, argv, option_specs());
    if (args.has("help")) {
        std::printf("%s%s", kUsage, args.usage().c_str());
        return false;
    }
    a.data = args.require("data");
    a.val = args.get("val");
    a.checkpoint_dir = args.get("checkpoint-dir");
    a.export_path = args.get("export");
    a.log_path = args.get("log");
    a.plot_path = args.get("plot");
    a.resume = args.has("resume");
    if (args.has("workers")) a.workers = parse_ranged_int("workers", args.get("workers"), 1, 256);
    if (args.has("threads")) a.threads = parse_ranged_int("threads", args.get("threads"), 1, 1024);
    if (args.has("checkpoint-every"))
        a.checkpoint_every = parse_ranged_int("checkpoint-every", args.get("checkpoint-every"), 1, 1 << 30);
    if (args.has("max-steps")) a.max_steps = parse_ranged_int("max-steps", args.get("max-steps"), 1, 1 << 30);
    a.sync_bn = args.has("sync-bn");
    if (args.has("micro-batches"))
        a.micro_batches = parse_ranged_int("micro-batches", args.get("micro-batches"), 1, 65536);
    if (args.has("bucket-mb")) a.bucket_mb = parse_ranged_double("bucket-mb", args.get("bucket-mb"), 0, 4096);
    a.dist_init_file = args.get("dist-init-file");
    a.force_nccl = args.has("force-nccl");
    if (args.has("dist-timeout"))
        a.dist_timeout = parse_ranged_double("dist-timeout", args.get("dist-timeout"), 1, 86400);
    a.device = args.get("device", "cpu");
    EFFNET_CHECK(a.device == "cpu" || a.device == "cuda",
                 "option '--device' must be cpu or cuda, got '" + a.device + "'");
    a.precision = args.get("precision", "fp32");
    EFFNET_CHECK(a.precision == "fp32" || a.precision == "amp-fp16" || a.precision == "amp-bf16",
                 "option '--precision' must be fp32, amp-fp16 or amp-bf16, got '" + a.precision + "'");

    for (const RunOption& o : run_option_table()) {
        if (o.name == "no-dropout") {
            if (args.has("no-dropout")) o.set(a, "1"), given[o.name] = "1";
            continue;
        }
        if (!args.has(o.name)) continue;
        o.set(a, args.get(o.name));
        given[o.name] = o.get(a); // normalised, to compare with a checkpoint's
    }

    // Defaults that depend on the optimizer.
    if (a.lr == 0) a.lr = a.optimizer == "sgd" ? 0.1 : a.optimizer == "rmsprop" ? 0.016 : 1e-3;
    if (a.weight_decay < 0)
        a.weight_decay = a.optimizer == "sgd" ? 1e-4 : a.optimizer == "rmsprop" ? 1e-5 : 0.05;

    // One model source.
    const int sources = int(!a.weights.empty()) + int(!a.preset.empty()) + int(a.width > 0 || a.depth > 0);
    EFFNET_CHECK(sources <= 1, "give one of --weights, --preset or --width/--depth, not several");
    EFFNET_CHECK((a.width > 0) == (a.depth > 0), "--width and --depth go together");
    EFFNET_CHECK(!a.resume || !a.checkpoint_dir.empty(), "--resume needs --checkpoint-dir");
    EFFNET_CHECK(a.checkpoint_every == 0 || !a.checkpoint_dir.empty(),
                 "--checkpoint-every needs --checkpoint-dir");
    return true;
}

std::map<std::string, std::string> run_options(const TrainArgs& args) {
    std::map<std::string, std::string> m;
    for (const RunOption& o : run_option_table()) m[o.name] = o.get(args);
    return m;
}

void merge_resumed_options(TrainArgs& args, const std::map<std::string, std::string>& given,
                           const std::map<std::string, std::string>& stored) {
    for (const RunOption& o : run_option_table()) {
        auto s = stored.find(o.name);
        EFFNET_CHECK(s != stored.end(), "the checkpoint does not record option '--" + o.name + "'");
        auto g = given.find(o.name);
        if (g != given.end()) {
            EFFNET_CHECK(g->second == s->second, "--resume: '--" + o.name + " " + g->second +
                                                     "' differs from the checkpoint's '" + s->second +
                                                     "' (leave it out to continue the same run)");
        }
        if (o.name == "width" || o.name == "depth") {
            if (s->second.empty())
                (o.name == "width" ? args.width : args.depth) = 0;
            else
                o.set(args, s->second);
        } else {
            o.set(args, s->second);
        }
    }
}

} // namespace effnet::examples
