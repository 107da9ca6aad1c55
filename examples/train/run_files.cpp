// effnet-train's output files: locks, stale temporaries, outputs that would overwrite inputs.
#include "run_files.hpp"

#include <cstdio>
#include <filesystem>
#include <utility>

#include "common/output_path.hpp"
#include "effnet/error.hpp"

namespace effnet::examples {
namespace fs = std::filesystem;

namespace {

// The export has no directory of its own: its lock is a hidden file beside it, one per export
// name, so runs exporting different files into one folder do not refuse each other.
std::string export_lock_path(const std::string& export_path) {
    const fs::path p(export_path);
    return (p.parent_path() / ("." + p.filename().string() + ".effnet-train.lock")).string();
}

std::string directory_of(const std::string& path) {
    const fs::path parent = fs::path(path).parent_path();
    return parent.empty() ? "." : parent.string();
}

void report_removed(const std::string& final_path, const train::RemovedTemporaries& removed) {
    if (removed.files == 0) return;
    std::fprintf(stderr,
                 "removed %lld stale temporary file(s) of '%s' (%llu bytes) left by interrupted writes\n",
                 (long long)removed.files, final_path.c_str(), (unsigned long long)removed.bytes);
}

} // namespace

std::string checkpoint_path(const TrainArgs& args) {
    return args.checkpoint_dir.empty() ? ""
                                       : (fs::path(args.checkpoint_dir) / "checkpoint.safetensors").string();
}

std::string labels_path(const std::string& export_path) {
    fs::path labels = export_path;
    labels.replace_extension(".labels.txt");
    return labels.string();
}

RunLocks lock_outputs(const TrainArgs& args) {
    RunLocks locks;
    if (!args.checkpoint_dir.empty()) {
        std::error_code ec;
        fs::create_directories(args.checkpoint_dir, ec);
        EFFNET_CHECK(fs::is_directory(args.checkpoint_dir), "cannot create the checkpoint directory '" +
                                                                args.checkpoint_dir + "'" +
                                                                (ec ? ": " + ec.message() : ""));
        locks.held.push_back(
            train::RunLock::acquire(train::checkpoint_lock_path(args.checkpoint_dir),
                                    "the checkpoint directory '" + args.checkpoint_dir + "'"));
        const std::string ck = checkpoint_path(args);
        report_removed(ck, train::remove_stale_temporaries(ck, locks.held.back()));
    }
    if (!args.export_path.empty()) {
        const std::string dir = directory_of(args.export_path);
        EFFNET_CHECK(fs::is_directory(dir),
                     "--export '" + args.export_path + "': the folder '" + dir + "' does not exist");
        locks.held.push_back(train::RunLock::acquire(export_lock_path(args.export_path),
                                                     "the export '" + args.export_path + "'"));
        report_removed(args.export_path,
                       train::remove_stale_temporaries(args.export_path, locks.held.back()));
    }
    return locks;
}

void check_outputs_are_not_inputs(const TrainArgs& args, const train::ImageFolder& train_set,
                                  const train::ImageFolder* val_set) {
    const std::string ck = checkpoint_path(args);
    // The checkpoint is the run's own state: read on --resume, then rewritten; it is an input
    // of every other output.
    const std::vector<std::pair<std::string, std::string>> inputs = {{"weights", args.weights}};
    std::vector<std::pair<std::string, std::string>> inputs_and_checkpoint = inputs;
    inputs_and_checkpoint.push_back({"checkpoint-dir", ck});

    std::vector<std::pair<std::string, std::string>> outputs = {
        {"checkpoint-dir", ck}, {"log", args.log_path}, {"plot", args.plot_path}};
    if (!args.export_path.empty()) {
        outputs.push_back({"export", args.export_path});
        outputs.push_back({"export (its labels file)", labels_path(args.export_path)});
    }
    for (const auto& [option, path] : outputs) {
        if (path.empty()) continue;
        check_output_is_not_input(option, path, option == "checkpoint-dir" ? inputs : inputs_and_checkpoint);
        for (const train::ImageFolder* set : {&train_set, val_set}) {
            if (!set) continue;
            if (const train::Sample* s = set->find_file(path))
                throw Error("--" + option + " '" + path + "' is the image '" + s->path + "' of '" +
                            set->root + "'; refusing to overwrite an input");
        }
    }
}

} // namespace effnet::examples
