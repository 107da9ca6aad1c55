// effnet-train: fine-tune or train an EfficientNet on a folder of images with the CPU engine or
// (--device cuda) the GPU trainer.
//   effnet-train --data DIR [--val DIR] [--weights W.safetensors | --preset b0 | --width W --depth D]
//                [--epochs E] [--batch B] [--lr LR] [--optimizer sgd|rmsprop|adamw] ...
//                [--device cpu|cuda] [--precision fp32|amp-fp16|amp-bf16]
//                [--checkpoint-dir DIR [--resume]] [--export OUT.safetensors] [--log CSV] [--plot PNG]
// A run is a pure function of its options and seed: a resumed run repeats an uninterrupted one
// bit for bit (same machine and thread count; on the GPU, the same GPU model).
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/openmp_policy.hpp"
#include "effnet/error.hpp"
#include "effnet/gpu_training.hpp"
#include "effnet/inference.hpp"
#include "effnet/model.hpp"
#include "effnet/train/checkpoint.hpp"
#include "effnet/train/dataset.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/rng.hpp"
#include "effnet/train/schedule.hpp"
#include "effnet/train/trainer.hpp"
#include "distributed.hpp"
#include "engine.hpp"
#include "history.hpp"
#include "options.hpp"
#include "run_files.hpp"

namespace fs = std::filesystem;
using namespace effnet;
using namespace effnet::train;
using effnet::examples::History;
using effnet::examples::LogRow;
using effnet::examples::TrainArgs;

namespace {

using Clock = std::chrono::steady_clock;

// The job's communicator (a single process unless launched as several); main() uses it to
// bring every rank down when one fails.
std::unique_ptr<examples::Communicator> g_comm;
std::unique_ptr<examples::Communicator> g_nccl; // GPU runs launched by mpirun / srun: NCCL beside MPI
examples::Launch g_launch;
bool g_training = false; // setup done: errors from here on are this rank's own

// Test hook: EFFNET_TRAIN_FAULT=R:S makes rank R throw before step S (tests of the fault path).
void maybe_inject_fault(int rank, int64_t step) {
    const char* v = std::getenv("EFFNET_TRAIN_FAULT");
    if (!v) return;
    int r = -1;
    long long s = -1;
    if (std::sscanf(v, "%d:%lld", &r, &s) == 2 && r == rank && s == step)
        throw Error("injected fault (EFFNET_TRAIN_FAULT=" + std::string(v) + ") before step " +
                    std::to_string(step));
}

std::string hex_double(double v) { // exact text form of a double, for checkpoint metadata
    char buf[64];
    std::snprintf(buf, sizeof buf, "%a", v);
    return buf;
}

std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "?";
    const long s = long(seconds + 0.5);
    char buf[32];
    if (s >= 3600)
        std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else
        std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
    return buf;
}

// The progress line on stderr: redrawn in place on a terminal, a line every tenth of an epoch
// otherwise (logs of batch jobs stay readable).
class Progress {
public:
    explicit Progress(int64_t steps_per_epoch)
        : tty_(isatty(2)), every_(std::max<int64_t>(1, steps_per_epoch / 10)) {}
    void update(int64_t epoch, int64_t epochs, int64_t batch, int64_t batches, double loss, double accuracy,
                double images_per_s, double eta_s) {
        const int width = 24;
        const int filled = int(double(batch) / double(batches) * width);
        std::string bar(size_t(filled), '=');
        if (filled < width) bar += '>' + std::string(size_t(width - filled - 1), ' ');
        char line[256];
        std::snprintf(
            line, sizeof line, "epoch %lld/%lld [%s] %lld/%lld loss %.4f acc %5.1f%% %.1f img/s ETA %s",
            (long long)epoch + 1, (long long)epochs, bar.c_str(), (long long)batch, (long long)batches, loss,
            100.0 * accuracy, images_per_s, format_duration(eta_s).c_str());
        if (tty_) {
            std::fprintf(stderr, "\r%s\033[K", line);
            dirty_ = true;
        } else if (batch % every_ == 0 || batch == batches) {
            std::fprintf(stderr, "%s\n", line);
        }
    }
    void message(const std::string& text) { // a line of its own, below the bar
        finish();
        std::fprintf(stderr, "%s\n", text.c_str());
    }
    void finish() {
        if (dirty_) std::fprintf(stderr, "\n");
        dirty_ = false;
    }

private:
    bool tty_;
    int64_t every_;
    bool dirty_ = false;
};

// torchvision's Linear init for the classifier: U(-1/sqrt(out), 1/sqrt(out)), bias 0.
void replace_classifier(Model& model, int classes, uint64_t seed) {
    model.config.num_classes = classes;
    const int64_t in = model.config.head_channels;
    Tensor w({classes, in}), b({classes});
    Rng rng(mix_seed(seed, 0x636c617373ull /* "class" */));
    const double bound = 1.0 / std::sqrt(double(classes));
    for (float& x : w.data) x = float(rng.uniform(-bound, bound));
    model.params["classifier.weight"] = std::move(w);
    model.params["classifier.bias"] = std::move(b);
}

// Trains at `resolution`: record it as the model's input size and preprocessing, so that the
// exported weights tell effnet-classify how to prepare images.
// The weights' resize/crop ratio is kept (torchvision's B3: 320/300; 256/224 by default).
void set_resolution(Model& model, int resolution) {
    Preprocess& p = model.config.preprocess;
    const double ratio = p.crop > 0 && p.resize >= p.crop ? double(p.resize) / double(p.crop) : 256.0 / 224.0;
    model.config.resolution = resolution;
    if (p.crop != resolution) {
        p.crop = resolution;
        p.resize = int(std::lround(resolution * ratio));
    }
}

Model build_model(const TrainArgs& a, int classes) {
    Model model;
    if (!a.weights.empty()) {
        model = load_weights(a.weights);
        if (model.config.num_classes != classes) replace_classifier(model, classes, a.seed);
    } else if (!a.preset.empty()) {
        model = random_model(preset(a.preset, classes), a.seed);
    } else if (a.width > 0) {
        CustomOptions o;
        o.width = a.width;
        o.depth = a.depth;
        o.num_classes = classes;
        model = random_model(custom_config(o), a.seed);
    } else {
        throw Error("no model: give --weights FILE, --preset NAME or --width W --depth D");
    }
    return model;
}

void print_warnings(const ImageFolder& set) {
    for (const std::string& w : set.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
}

// What is on disk when a write is refused: said in the error, so the user knows what to resume.
class LastCheckpoint {
public:
    LastCheckpoint(const std::string& path, bool resumed, int64_t resumed_step) : path_(path) {
        if (path.empty())
            note_ = "no checkpoint is kept (no --checkpoint-dir)";
        else if (resumed)
            saved(resumed_step);
        else if (fs::exists(path))
            note_ = "'" + path + "' from an earlier run is unchanged";
        else
            note_ = "this run wrote no checkpoint";
    }
    void saved(int64_t step) {
        note_ = "the last complete checkpoint is '" + path_ + "' (step " + std::to_string(step) + ")";
    }
    const std::string& note() const { return note_; }

private:
    std::string path_, note_;
};

// Throws naming the step and the tensor when `what` (a checkpoint or the export) would hold a
// non-finite value or a negative running variance: such a file would only spread the damage.
void refuse_unwritable(const Model& model, const ParamMap* optimizer_state, const std::string& what,
                       int64_t step, const LastCheckpoint& last) {
    if (const auto bad = find_unwritable_value(model, optimizer_state))
        throw Error("step " + std::to_string(step) + ": not writing " + what + ": " + bad->describe() +
                    " (did the training diverge? try a lower --lr or --clip-grad-norm); " + last.note());
}

struct EpochStats { // accumulated over one epoch's steps; checkpointed for an exact resume
    double loss_sum = 0;
    int64_t correct = 0, count = 0, steps = 0;
};

int run(int argc, char** argv) {
    TrainArgs a;
    std::map<std::string, std::string> given;
    if (!examples::parse_train_args(argc, argv, a, given)) return 0;
    if (!g_comm) { // torchrun-style: NCCL alone, GPUs only
        if (a.device != "cuda")
            throw Error(g_launch.launcher + " started " + std::to_string(g_launch.world) +
                        " processes: torchrun-style launches (RANK / WORLD_SIZE) train on GPUs only "
                        "(--device cuda --dist-init-file PATH); the CPU engine's data-parallel training "
                        "runs over MPI: launch it with mpirun or srun");
        g_comm = examples::make_nccl_communicator(g_launch, nullptr, a.dist_init_file, a.dist_timeout);
    } else if (a.device == "cuda" && (g_comm->world() > 1 || a.force_nccl)) {
        g_nccl = examples::make_nccl_communicator(g_launch, g_comm.get(), "", a.dist_timeout);
    }
    EFFNET_CHECK(!a.force_nccl || a.device == "cuda", "--force-nccl needs --device cuda");
    examples::Communicator& comm = *g_comm;
    const int world = comm.world(), rank = comm.rank();
    const bool lead = rank == 0; // prints, and writes every file
    EFFNET_CHECK(world == 1 || a.micro_batches == 1,
                 "--micro-batches is the single-process reference of a data-parallel run; with " +
                     std::to_string(world) + " ranks leave it out");
    EFFNET_CHECK(a.micro_batches == 1 || a.device == "cpu",
                 "--micro-batches is implemented on the CPU engine only");
    EFFNET_CHECK(!a.sync_bn || a.device == "cpu",
                 "--sync-bn is implemented on the CPU engine only (GPU: not yet; leave it out)");
    EFFNET_CHECK(world > 1 || !a.sync_bn || a.micro_batches == 1,
                 "--sync-bn with --micro-batches: synchronized batch norm over micro-batches is a batch of " +
                     std::string("--batch images; leave out both"));
    if (a.device == "cuda") {
        if (!cuda_available())
            throw Error("--device cuda: no usable GPU (" + cuda_device_description() + "); use --device cpu");
    } else if (a.precision != "fp32") {
        throw Error("--precision " + a.precision + " needs --device cuda; the CPU engine trains in fp32");
    }
    if (a.threads > 0) omp_set_num_threads(a.threads);
    // Held until the run ends: a second run on the same checkpoint directory or export is refused.
    // Rank 0 alone writes (and locks, and cleans up); the other ranks never touch the outputs.
    const examples::RunLocks locks = lead ? examples::lock_outputs(a) : examples::RunLocks{};

    const ImageFolder train_set = ImageFolder::scan(a.data);
    print_warnings(train_set);
    const std::string ck_path = examples::checkpoint_path(a);
    const nlohmann::json class_names = train_set.classes;

    // The model, optimizer state and counters: from the checkpoint, or fresh.
    Model model;
    Checkpoint ck;
    bool resumed = false;
    if (a.resume) {
        EFFNET_CHECK(fs::exists(ck_path), "--resume: no checkpoint at '" + ck_path + "'");
        ck = load_checkpoint(ck_path);
        auto meta = [&](const std::string& key) {
            auto it = ck.state.metadata.find(key);
            EFFNET_CHECK(it != ck.state.metadata.end(),
                         "checkpoint '" + ck_path + "' lacks metadata '" + key + "'");
            return it->second;
        };
        std::map<std::string, std::string> stored;
        try {
            stored = nlohmann::json::parse(meta("run_options")).get<std::map<std::string, std::string>>();
        } catch (const nlohmann::json::exception& e) {
            throw Error("checkpoint '" + ck_path + "': run_options metadata is invalid: " + e.what());
        }
        examples::merge_resumed_options(a, given, stored);
        EFFNET_CHECK(meta("classes") == class_names.dump(), "--resume: the class folders of '" + a.data +
                                                                "' differ from the checkpoint's " +
                                                                meta("classes"));
        model = std::move(ck.model);
        resumed = true;
    } else {
        if (a.classes == 0) a.classes = int(train_set.classes.size());
        model = build_model(a, a.classes);
        if (a.resolution == 0) a.resolution = model.config.resolution;
        set_resolution(model, a.resolution);
    }
    EFFNET_CHECK(model.config.num_classes >= int(train_set.classes.size()),
                 "the model has " + std::to_string(model.config.num_classes) + " classes but '" + a.data +
                     "' has " + std::to_string(train_set.classes.size()) + " class folders (see --classes)");
    std::unique_ptr<ImageFolder> val_set;
    if (!a.val.empty()) {
        val_set = std::make_unique<ImageFolder>(ImageFolder::scan(a.val, train_set.classes));
        print_warnings(*val_set);
    }
    examples::check_outputs_are_not_inputs(a, train_set, val_set.get());
    EFFNET_CHECK(a.batch >= world, "--batch " + std::to_string(a.batch) +
                                       " is the global batch; it must be at least the " +
                                       std::to_string(world) + " ranks");

    LoaderOptions lo;
    lo.batch_size = a.batch;
    lo.shard_count = world; // this rank decodes its part of each global batch only
    lo.shard_index = rank;
    lo.resolution = a.resolution;
    lo.workers = a.workers;
    lo.seed = a.seed;
    for (int c = 0; c < 3; ++c) {
        lo.normalize.mean[c] = model.config.preprocess.mean[c];
        lo.normalize.std[c] = model.config.preprocess.std[c];
    }
    DataLoader loader(train_set, lo);
    const int64_t steps_per_epoch = loader.batches_per_epoch();
    std::unique_ptr<DataLoader> val_loader;
    if (val_set) {
        LoaderOptions vo = lo;
        vo.train = false;
        vo.val_resize = model.config.preprocess.resize;
        vo.val_interpolation = model.config.preprocess.interpolation;
        val_loader = std::make_unique<DataLoader>(*val_set, vo);
    }

    TrainOptions to;
    to.optimizer.kind = parse_optimizer(a.optimizer);
    to.optimizer.momentum = a.momentum;
    to.optimizer.weight_decay = a.weight_decay;
    to.schedule.kind = parse_schedule(a.schedule);
    to.schedule.base_lr = a.lr;
    to.schedule.total_steps = int64_t(a.epochs) * steps_per_epoch;
    to.schedule.warmup_steps = std::llround(a.warmup_epochs * double(steps_per_epoch));
    to.schedule.step_size = std::max<int64_t>(1, std::llround(a.step_epochs * double(steps_per_epoch)));
    to.schedule.gamma = a.step_gamma;
    to.label_smoothing = float(a.label_smoothing);
    to.clip_grad_norm = a.clip_grad_norm;
    to.seed = a.seed;
    to.dropout = !a.no_dropout;
    std::unique_ptr<examples::TrainEngine> engine;
    if (a.device == "cuda") {
        // The GPU trainer's batch is fixed; a training set smaller than --batch makes one smaller batch.
        // Data-parallel: each rank's part of the global batch (the largest part when the set is smaller).
        EFFNET_CHECK(a.batch % world == 0, "--device cuda with " + std::to_string(world) +
                                               " ranks: --batch (the global batch) must be a multiple of " +
                                               std::to_string(world));
        const int64_t largest_batch = std::min<int64_t>(a.batch, int64_t(train_set.samples.size()));
        const int gpu_batch = int(shard_range(largest_batch, world, world - 1).size());
        examples::GpuParallel gp;
        if (world > 1 || a.force_nccl) {
            examples::Communicator* nccl = g_nccl ? g_nccl.get() : g_comm.get();
            gp.comm = g_comm.get();
            gp.reducer = examples::gradient_allreduce_of(nccl);
            gp.bucket_bytes = size_t(a.bucket_mb * 1048576.0);
            gp.device = examples::gpu_of(nccl); // the local rank's GPU (local rank % GPUs)
        }
        engine =
            examples::make_gpu_engine(model, to, parse_train_precision(a.precision), gpu_batch,
                                      int(shard_range(a.batch, world, world - 1).size()), a.resolution, gp);
        std::fprintf(stderr, "training on the GPU (%s), %s, batch %d\n", cuda_device_description().c_str(),
                     a.precision.c_str(), gpu_batch);
    } else {
        examples::CpuParallel par;
        par.comm = g_comm.get();
        par.bucket_bytes = size_t(a.bucket_mb * 1048576.0);
        par.micro_batches = a.micro_batches;
        par.sync_bn = a.sync_bn && world > 1; // one process: its batch is the global batch already
        engine = examples::make_cpu_engine(model, to, par);
    }
    // The GPU engine's page-locked staging buffers: the loader decodes training batches there
    // (no copy from a tensor); the CPU engine has none and takes the loader's tensors as they are.
    if (engine->batch_destination(0))
        loader.set_destinations(engine->batch_destination(0), engine->batch_destination(1),
                                engine->destination_images());

    TrainingState state;
    state.seed = a.seed;
    EpochStats epoch_stats;
    int64_t skipped_images = 0;
    if (resumed) {
        EFFNET_CHECK(ck.optimizer_name == a.optimizer, "checkpoint optimizer '" + ck.optimizer_name +
                                                           "' differs from --optimizer " + a.optimizer);
        engine->resume(std::move(ck.optimizer_state), ck.optimizer_steps, ck.state);
        state = ck.state;
        EFFNET_CHECK(state.batch_in_epoch <= steps_per_epoch,
                     "checkpoint batch " + std::to_string(state.batch_in_epoch) + " is past the epoch's " +
                         std::to_string(steps_per_epoch) + " batches (did the data change?)");
        const auto& m = state.metadata;
        try {
            epoch_stats.loss_sum = std::strtod(m.at("epoch_loss_sum").c_str(), nullptr);
            epoch_stats.correct = std::stoll(m.at("epoch_correct"));
            epoch_stats.count = std::stoll(m.at("epoch_count"));
            epoch_stats.steps = std::stoll(m.at("epoch_steps"));
            skipped_images = std::stoll(m.at("skipped_images"));
        } catch (const std::exception&) {
            throw Error("checkpoint '" + ck_path + "' lacks the epoch statistics metadata");
        }
    }

    LastCheckpoint last_checkpoint(ck_path, resumed, state.step);
    History history(lead ? a.log_path : std::string(), resumed, state.step, state.epoch);
    Progress progress(steps_per_epoch);
    std::set<std::string> reported_bad;

    auto save = [&](int64_t epoch, int64_t batch_in_epoch) {
        if (ck_path.empty() || !lead) return;
        state.step = engine->step();
        state.epoch = epoch;
        state.batch_in_epoch = batch_in_epoch;
        state.metadata["run_options"] = nlohmann::json(examples::run_options(a)).dump();
        state.metadata["classes"] = class_names.dump();
        state.metadata["epoch_loss_sum"] = hex_double(epoch_stats.loss_sum);
        state.metadata["epoch_correct"] = std::to_string(epoch_stats.correct);
        state.metadata["epoch_count"] = std::to_string(epoch_stats.count);
        state.metadata["epoch_steps"] = std::to_string(epoch_stats.steps);
        state.metadata["skipped_images"] = std::to_string(skipped_images);
        state.metadata["device"] = a.device;
        state.metadata["precision"] = a.precision;
        state.metadata["world_size"] = std::to_string(world); // informational: any world size resumes it
        engine->save_scaler(state);
        engine->sync_model();
        const Optimizer& optimizer = engine->optimizer();
        refuse_unwritable(model, &optimizer.state(), "the checkpoint '" + ck_path + "'", state.step,
                          last_checkpoint);
        save_checkpoint(ck_path, model, optimizer, state);
        last_checkpoint.saved(state.step);
    };
    auto finish = [&]() {
        if (!lead) return;
        progress.finish();
        if (!a.plot_path.empty()) history.plot(a.plot_path);
        if (!a.export_path.empty()) {
            engine->sync_model();
            refuse_unwritable(model, nullptr, "the export '" + a.export_path + "'", engine->step(),
                              last_checkpoint);
            save_weights(model, a.export_path);
            const std::string labels = examples::labels_path(a.export_path);
            std::ofstream out(labels);
            for (const auto& c : train_set.classes) out << c << "\n";
            EFFNET_CHECK(out.good(), "cannot write the labels file '" + labels + "'");
            std::fprintf(stderr, "exported %s (classify with: effnet-classify --weights %s --labels %s)\n",
                         a.export_path.c_str(), a.export_path.c_str(), labels.c_str());
        }
        if (skipped_images > 0)
            std::fprintf(stderr, "skipped %lld unreadable image(s) in all\n", (long long)skipped_images);
    };

    if (lead && world > 1) {
        auto it = state.metadata.find("world_size");
        std::fprintf(stderr, "data-parallel: %d ranks (%s, %s), global batch %d (%d..%d per rank)%s%s\n",
                     world, g_launch.launcher.c_str(), comm.backend().c_str(), a.batch,
                     int(shard_range(a.batch, world, 0).size()),
                     int(shard_range(a.batch, world, world - 1).size()),
                     a.sync_bn ? ", synchronized batch norm" : "",
                     resumed && it != state.metadata.end() && it->second != std::to_string(world)
                         ? (", resuming a checkpoint of " + it->second + " ranks").c_str()
                         : "");
    }
    if (lead)
        std::fprintf(stderr,
                     "%s: %zu images, %zu classes; model %s (%lld parameters, %d classes) at %dx%d; "
                     "%lld steps per epoch%s\n",
                     a.data.c_str(), train_set.samples.size(), train_set.classes.size(),
                     model.config.name.c_str(), (long long)parameter_count(model.config),
                     model.config.num_classes, a.resolution, a.resolution, (long long)steps_per_epoch,
                     resumed ? (", resuming at step " + std::to_string(state.step)).c_str() : "");

    const int64_t total_steps = int64_t(a.epochs) * steps_per_epoch;
    double step_seconds_ema = 0;
    g_training = true;
    // A rank's own warnings (rank 0's appear in the progress output; the others name their rank).
    auto warn = [&](const std::string& text) {
        if (lead)
            progress.message(text);
        else
            std::fprintf(stderr, "rank %d: %s\n", rank, text.c_str());
    };
    // Per-batch unreadable images summed over the ranks (every rank keeps the global count).
    auto global_count = [&](int64_t local) {
        double v = double(local);
        comm.allreduce_sum(&v, 1);
        return int64_t(v);
    };
    for (int64_t epoch = state.epoch; epoch < a.epochs; ++epoch) {
        const int64_t first_batch = epoch == state.epoch ? state.batch_in_epoch : 0;
        if (epoch != state.epoch) epoch_stats = EpochStats{};
        loader.start_epoch(epoch, first_batch);
        auto last = Clock::now();
        const auto epoch_start = last;
        int64_t epoch_images = 0, batch_index = first_batch;
        double last_lr = 0;
        while (loader.has_next()) {
            if (a.max_steps > 0 && engine->step() >= a.max_steps) {
                save(epoch, batch_index);
                if (lead)
                    progress.message("stopped after " + std::to_string(engine->step()) +
                                     " steps (--max-steps); continue with --resume");
                finish();
                return 0;
            }
            Batch batch = loader.next();
            ++batch_index;
            skipped_images += world > 1 ? global_count(batch.skipped) : batch.skipped;
            for (const std::string& e : batch.errors)
                if (reported_bad.insert(e).second) warn("warning: skipping unreadable image: " + e);
            // Every image of the batch unreadable: no step (data-parallel: decided over all ranks
            // inside train_step, which returns count 0; a rank with nothing takes part with weight 0).
            if (world == 1 && batch.labels.empty()) continue;
            maybe_inject_fault(rank, engine->step());
            const StepResult r = engine->train_step(batch);
            if (r.count == 0) continue;
            last_lr = r.lr;
            epoch_stats.loss_sum += r.loss;
            epoch_stats.correct += r.correct;
            epoch_stats.count += r.count;
            ++epoch_stats.steps;
            epoch_images += r.count;

            const auto now = Clock::now();
            const double seconds = std::chrono::duration<double>(now - last).count();
            last = now;
            step_seconds_ema = step_seconds_ema == 0 ? seconds : 0.9 * step_seconds_ema + 0.1 * seconds;
            const double images_per_s = seconds > 0 ? double(r.count) / seconds : 0;
            LogRow row;
            row.kind = "step";
            row.epoch = epoch;
            row.step = engine->step();
            row.lr = r.lr;
            row.loss = r.loss;
            row.accuracy = double(r.correct) / double(r.count);
            row.images_per_s = images_per_s;
            row.skipped_images = skipped_images;
            history.add(row);
            if (lead)
                progress.update(epoch, a.epochs, batch_index, steps_per_epoch,
                                epoch_stats.loss_sum / epoch_stats.steps,
                                double(epoch_stats.correct) / double(epoch_stats.count), images_per_s,
                                step_seconds_ema * double(total_steps - engine->step()));
            if (a.checkpoint_every > 0 && engine->step() % a.checkpoint_every == 0) save(epoch, batch_index);
        }
        if (lead) progress.finish();

        LogRow row;
        row.kind = "epoch";
        row.epoch = epoch;
        row.step = engine->step();
        row.lr = last_lr;
        row.loss = epoch_stats.steps ? epoch_stats.loss_sum / double(epoch_stats.steps) : NAN;
        row.accuracy = epoch_stats.count ? double(epoch_stats.correct) / double(epoch_stats.count) : NAN;
        const double epoch_seconds = std::chrono::duration<double>(Clock::now() - epoch_start).count();
        row.images_per_s = epoch_seconds > 0 ? double(epoch_images) / epoch_seconds : 0;
        row.skipped_images = skipped_images;
        std::string summary = "epoch " + std::to_string(epoch + 1) + "/" + std::to_string(a.epochs) +
                              ": loss " + std::to_string(row.loss) + ", train accuracy " +
                              std::to_string(100.0 * row.accuracy) + "%" + engine->epoch_note();
        if (val_loader) {
            EvalResult total;
            int64_t val_skipped = 0;
            val_loader->start_epoch(0);
            engine->begin_evaluation();
            while (val_loader->has_next()) {
                Batch vb = val_loader->next();
                val_skipped += vb.skipped;
                for (const std::string& e : vb.errors)
                    if (reported_bad.insert(e).second) warn("warning: skipping unreadable image: " + e);
                if (vb.labels.empty()) continue;
                const EvalResult e = engine->evaluate(vb);
                total.loss += e.loss * double(e.count);
                total.top1 += e.top1;
                total.top5 += e.top5;
                total.count += e.count;
            }
            engine->end_evaluation();
            // Each rank validated its shard: the sums over the ranks.
            double sums[5] = {total.loss, double(total.top1), double(total.top5), double(total.count),
                              double(val_skipped)};
            comm.allreduce_sum(sums, 5);
            total.loss = sums[0];
            total.top1 = int64_t(sums[1]);
            total.top5 = int64_t(sums[2]);
            total.count = int64_t(sums[3]);
            skipped_images += int64_t(sums[4]);
            if (total.count > 0) {
                row.val_loss = total.loss / double(total.count);
                row.val_top1 = double(total.top1) / double(total.count);
                row.val_top5 = double(total.top5) / double(total.count);
                summary += ", val loss " + std::to_string(row.val_loss) + ", top-1 " +
                           std::to_string(100.0 * row.val_top1) + "%, top-5 " +
                           std::to_string(100.0 * row.val_top5) + "%";
            }
            row.skipped_images = skipped_images;
        }
        history.add(row);
        if (lead) progress.message(summary);
        epoch_stats = EpochStats{};
        save(epoch + 1, 0);
        if (lead && !a.plot_path.empty()) history.plot(a.plot_path);
    }
    finish();
    return 0;
}

// Chooses the communicator from the launch. Several processes: MPI when an MPI launcher started
// them (mpirun, srun); a torchrun-style launch has no MPI and trains on GPUs over NCCL (set up
// once the options are known, in run()).
std::unique_ptr<examples::Communicator> make_communicator(const examples::Launch& launch) {
    if (launch.world == 1) return examples::make_single_process();
    if (launch.mpi_launcher()) return examples::make_mpi_communicator(launch);
    return nullptr; // torchrun: run() builds the NCCL communicator
}

} // namespace

int main(int argc, char** argv) {
    effnet::examples::use_passive_openmp(argv);
    try {
        g_launch = examples::detect_launch();
        g_comm = make_communicator(g_launch);
        const int rc = run(argc, argv);
        g_nccl.reset();
        g_comm.reset(); // MPI_Finalize: every rank reaches it
        return rc;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        if (!g_comm || g_comm->world() == 1) {
            if (g_launch.world > 1)
                std::fprintf(stderr, "error: rank %d: %s\n", g_launch.rank, e.what());
            else
                std::fprintf(stderr, "error: %s\n", e.what());
            return 1;
        }
        // Several ranks: one line naming the rank, then every rank is brought down (no rank waits
        // forever in a collective). Setup errors are usually every rank's (a bad path, a bad
        // option): ranks other than 0 give rank 0 two seconds to report and end the job first.
        if (!g_training && g_comm->rank() != 0) std::this_thread::sleep_for(std::chrono::seconds(2));
        std::fprintf(stderr, "error: rank %d: %s\n", g_comm->rank(), e.what());
        std::fflush(stderr);
        g_comm->abort(1);
    }
}
