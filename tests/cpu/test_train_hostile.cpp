// Training against hostile and damaged files (issue 15): image folders whose links loop, leave
// their class or put one file under two labels; checkpoints that would hold non-finite values;
// the checkpoint directory's lock and the removal of temporaries left by killed writes.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "effnet/error.hpp"
#include "effnet/safetensors.hpp"
#include "effnet/train/checkpoint.hpp"
#include "effnet/train/dataset.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/rng.hpp"
#include "effnet/train/trainer.hpp"

using namespace effnet;
using namespace effnet::train;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

// A fresh directory under the system temp dir, removed at scope exit.
struct ScratchDir {
    fs::path path;
    explicit ScratchDir(const std::string& name) {
        path = fs::temp_directory_path() / ("effnet_hostile_" + name + "_" + std::to_string(::getpid()));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~ScratchDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

void write_file(const fs::path& path, const std::string& bytes) {
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << bytes;
}

// The scan reads names only, not pixels: any bytes do for an "image".
void make_images(const fs::path& dir, int n) {
    for (int i = 0; i < n; ++i)
        write_file(dir / ("img_" + std::to_string(i) + ".png"), "png " + std::to_string(i));
}

bool any_warning_contains(const ImageFolder& set, const std::string& text) {
    for (const auto& w : set.warnings)
        if (w.find(text) != std::string::npos) return true;
    return false;
}

int64_t count_label(const ImageFolder& set, int64_t label) {
    int64_t n = 0;
    for (const Sample& s : set.samples) n += s.label == label;
    return n;
}

ModelConfig tiny_config() {
    CustomOptions o;
    o.width = 0.1;
    o.depth = 0.1;
    o.num_classes = 2;
    o.resolution = 16;
    ModelConfig c = custom_config(o);
    c.dropout = 0.0f;
    c.stochastic_depth = 0.0f;
    return c;
}

std::string any_running_var(const Model& model) {
    for (const auto& [name, t] : model.params)
        if (name.size() > 11 && name.compare(name.size() - 11, 11, "running_var") == 0) return name;
    FAIL("the model has no running variance");
    return "";
}

// The names in dir, sorted.
std::vector<std::string> files_in(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

} // namespace

// ---- image folders that lie ----

TEST_CASE("image folder: a symbolic link loop is skipped with a warning, each image counted once",
          "[train][hostile]") {
    ScratchDir dir("loop");
    const fs::path root = dir.path / "data";
    make_images(root / "a", 4);
    make_images(root / "b", 4);
    fs::create_directory_symlink("..", root / "a" / "up"); // the loop: back to the root
    fs::create_directories(root / "a" / "sub");
    fs::create_directory_symlink("..", root / "a" / "sub" / "back");     // back to its own class folder
    fs::create_directory_symlink("../b", root / "a" / "to_b");           // into another class
    fs::create_directory_symlink("../../b/", root / "a" / "sub" / "b2"); // the same, spelled otherwise

    const ImageFolder set = ImageFolder::scan(root.string());
    // Before: 8 images became 328 samples, and class b's images trained under label a.
    REQUIRE(set.samples.size() == 8);
    CHECK(count_label(set, 0) == 4);
    CHECK(count_label(set, 1) == 4);
    for (const Sample& s : set.samples) CHECK((s.label == 0) == (s.path.find("/a/") != std::string::npos));
    CHECK(any_warning_contains(set, (root / "a" / "up").string() + "': it leads back to the dataset root"));
    CHECK(any_warning_contains(set, (root / "a" / "sub" / "back").string() + "': it leads back to"));
    CHECK(
        any_warning_contains(set, (root / "a" / "to_b").string() + "': it leads into the class folder 'b'"));
    CHECK(any_warning_contains(set, (root / "a" / "sub" / "b2").string() +
                                        "': it leads into the class folder 'b'"));
    CHECK(set.warnings.size() == 4); // once per skipped link

    SECTION("a link above the root, into the folders that hold the dataset") {
        fs::create_directory_symlink("../..", root / "b" / "out");
        make_images(dir.path / "elsewhere", 3); // beside the dataset: never class b's
        const ImageFolder again = ImageFolder::scan(root.string());
        CHECK(again.samples.size() == 8);
        CHECK(any_warning_contains(again, (root / "b" / "out").string() + "': it leads to '" +
                                              fs::canonical(dir.path).string() +
                                              "', a folder that holds the dataset"));
    }
    SECTION("a class folder that is a link to the folder holding the dataset") {
        fs::create_directory_symlink("..", root / "c");
        CHECK_THROWS_WITH(ImageFolder::scan(root.string()),
                          Contains("class folder '" + (root / "c").string() + "' leads to '") &&
                              Contains("a folder that holds the dataset"));
    }
}

TEST_CASE("image folder: a file reached by several paths counts once; under two classes it is an error",
          "[train][hostile]") {
    ScratchDir dir("dupes");
    const fs::path root = dir.path / "data";
    make_images(root / "a", 2);
    make_images(root / "b", 2);
    fs::create_hard_link(root / "a" / "img_0.png", root / "a" / "z_hard.png");
    fs::create_symlink("img_1.png", root / "a" / "z_soft.png");
    fs::create_directories(root / "a" / "real");
    make_images(root / "a" / "real", 1);
    fs::create_directory_symlink("real", root / "a" / "again"); // the same folder twice

    ImageFolder set = ImageFolder::scan(root.string());
    CHECK(count_label(set, 0) == 3); // img_0, img_1, real/img_0: each file once, by its real path
    CHECK(count_label(set, 1) == 2);
    for (const Sample& s : set.samples) {
        CHECK(s.path.find("z_") == std::string::npos);
        CHECK(s.path.find("again") == std::string::npos);
    }
    CHECK(any_warning_contains(set, "each file counts once"));
    CHECK(any_warning_contains(set, "again': the folder it leads to is already scanned"));

    SECTION("a link from one class to another class's image") {
        fs::create_symlink("../b/img_0.png", root / "a" / "stolen.png");
        CHECK_THROWS_WITH(ImageFolder::scan(root.string()), Contains("are the same file") &&
                                                                Contains("an image cannot have two labels") &&
                                                                Contains("stolen.png"));
    }
    SECTION("a hard link across classes") {
        fs::create_hard_link(root / "b" / "img_1.png", root / "a" / "twin.png");
        CHECK_THROWS_WITH(ImageFolder::scan(root.string()), Contains("twin.png") && Contains("class 'b'"));
    }
    SECTION("a class folder that is a link to another class folder") {
        fs::create_directory_symlink("a", root / "c");
        CHECK_THROWS_WITH(ImageFolder::scan(root.string()), Contains("an image cannot have two labels"));
    }
}

TEST_CASE("image folder: one class, and images beside the class folders, are warned about",
          "[train][hostile]") {
    ScratchDir dir("shape");
    const fs::path root = dir.path / "data";
    make_images(root / "only", 3);
    make_images(root, 2); // ROOT/img_0.png, ROOT/img_1.png: no class
    const ImageFolder set = ImageFolder::scan(root.string());
    CHECK(set.samples.size() == 3);
    CHECK(any_warning_contains(set, "has a single class folder ('only')"));
    CHECK(any_warning_contains(set, "2 image file(s) directly in '" + root.string() + "' are ignored"));

    make_images(root / "second", 1);
    const ImageFolder two = ImageFolder::scan(root.string());
    CHECK_FALSE(any_warning_contains(two, "single class"));
    const ImageFolder val = ImageFolder::scan(root.string(), two.classes);
    CHECK(any_warning_contains(val, "2 image file(s) directly in"));
}

TEST_CASE("image folder: a deep or wide tree of links ends", "[train][hostile]") {
    ScratchDir dir("deep");
    const fs::path root = dir.path / "data";
    make_images(root / "a", 1);
    make_images(root / "b", 1);
    // Two links to each level's parent: followed naively this is 2^depth walks.
    fs::path level = root / "a";
    for (int i = 0; i < 12; ++i) {
        fs::create_directory_symlink(".", level / "x");
        fs::create_directory_symlink(".", level / "y");
        level /= "d";
        make_images(level, 1);
    }
    const ImageFolder set = ImageFolder::scan(root.string());
    CHECK(count_label(set, 0) == 13);
    CHECK(count_label(set, 1) == 1);
}

TEST_CASE("image folder: find_file knows a sample however its path is spelled", "[train][hostile]") {
    ScratchDir dir("find");
    const fs::path root = dir.path / "data";
    make_images(root / "a", 1);
    make_images(root / "b", 1);
    fs::create_symlink(root / "b" / "img_0.png", dir.path / "alias.png");
    const ImageFolder set = ImageFolder::scan(root.string());
    const Sample* s = set.find_file((dir.path / "alias.png").string());
    REQUIRE(s != nullptr);
    CHECK(s->label == 1);
    CHECK(set.find_file((dir.path / "nope.png").string()) == nullptr);
}

// ---- non-finite values are never written ----

TEST_CASE("a checkpoint holding a non-finite value or a negative running variance is not written",
          "[train][hostile]") {
    ScratchDir dir("nonfinite");
    const std::string path = (dir.path / "checkpoint.safetensors").string();
    Model model = random_model(tiny_config(), 1);
    Optimizer optimizer(OptimizerConfig{});
    REQUIRE_FALSE(find_unwritable_value(model, &optimizer.state()));
    const std::string var = any_running_var(model);

    SECTION("an infinite running variance") {
        model.params.at(var).data[1] = std::numeric_limits<float>::infinity();
        CHECK_THROWS_WITH(save_checkpoint(path, model, optimizer, TrainingState{}),
                          Contains("not written") && Contains("'model/" + var + "' holds inf at element 1"));
    }
    SECTION("a NaN weight") {
        model.params.at("classifier.weight").data[7] = std::nanf("");
        CHECK_THROWS_WITH(save_checkpoint(path, model, optimizer, TrainingState{}),
                          Contains("'model/classifier.weight' holds nan at element 7"));
    }
    SECTION("a negative running variance") {
        model.params.at(var).data[0] = -0.5f;
        const auto bad = find_unwritable_value(model);
        REQUIRE(bad);
        CHECK(bad->describe() ==
              "tensor 'model/" + var + "' holds -0.5 (a negative running variance) at element 0");
        CHECK_THROWS_WITH(save_checkpoint(path, model, optimizer, TrainingState{}),
                          Contains("negative running variance"));
    }
    SECTION("an infinite optimizer state") {
        ParamMap state;
        state["momentum/classifier.bias"] = Tensor({2});
        state["momentum/classifier.bias"].data[1] = -std::numeric_limits<float>::infinity();
        optimizer.set_state(state, 3);
        CHECK_THROWS_WITH(save_checkpoint(path, model, optimizer, TrainingState{}),
                          Contains("'optim/momentum/classifier.bias' holds -inf at element 1"));
    }
    CHECK(files_in(dir.path).empty()); // no checkpoint, no temporary
}

TEST_CASE("a checkpoint from elsewhere holding a non-finite value is not resumed", "[train][hostile]") {
    ScratchDir dir("nonfinite_load");
    const std::string good = (dir.path / "good.safetensors").string();
    const std::string bad = (dir.path / "bad.safetensors").string();
    const Model model = random_model(tiny_config(), 1);
    save_checkpoint(good, model, Optimizer(OptimizerConfig{}), TrainingState{});
    REQUIRE_NOTHROW(load_checkpoint(good));
    // The same checkpoint with one running variance at inf, as another writer could make it.
    const std::string var = any_running_var(model);
    const SafetensorsFile file = SafetensorsFile::open(good);
    SafetensorsWriter writer;
    for (const std::string& name : file.names()) {
        const TensorInfo& info = file.info(name);
        if (info.dtype == DType::F32) {
            Tensor t = file.read_f32(name);
            if (name == "model/" + var) t.data[2] = std::numeric_limits<float>::infinity();
            writer.add(name, t);
        } else {
            writer.add_raw(name, info.dtype, info.shape, file.raw(name), size_t(info.end - info.begin));
        }
    }
    for (const auto& [key, value] : file.metadata())
        if (key != "effnet.checksum") writer.set_metadata(key, value);
    writer.write(bad);
    CHECK_THROWS_WITH(load_checkpoint(bad), Contains("cannot be resumed") &&
                                                Contains("'model/" + var + "' holds inf at element 2"));
}

TEST_CASE("a checkpoint whose loss-scaler state is out of range is refused, not cast", "[train][hostile]") {
    // Found by fuzz_checkpoint: state/scaler = [1, 1e300, 0] was converted to int64 unchecked
    // (undefined behaviour; UBSan: float-cast-overflow).
    ScratchDir dir("scaler_range");
    const std::string good = (dir.path / "good.safetensors").string();
    save_checkpoint(good, random_model(tiny_config(), 1), Optimizer(OptimizerConfig{}), TrainingState{});
    const SafetensorsFile file = SafetensorsFile::open(good);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (const std::vector<double>& scaler : std::vector<std::vector<double>>{
             {1, 1e300, 0}, {1, 0, -1}, {1, 2.5, 0}, {nan, 0, 0}, {0, 0, 0}, {-4, 0, 0}}) {
        const std::string bad = (dir.path / "bad.safetensors").string();
        SafetensorsWriter writer;
        for (const std::string& name : file.names()) {
            const TensorInfo& info = file.info(name);
            if (name == "state/scaler")
                writer.add_f64(name, {3}, scaler);
            else
                writer.add_raw(name, info.dtype, info.shape, file.raw(name), size_t(info.end - info.begin));
        }
        for (const auto& [key, value] : file.metadata()) writer.set_metadata(key, value);
        writer.write(bad);
        INFO(scaler[0] << " " << scaler[1] << " " << scaler[2]);
        CHECK_THROWS_WITH(load_checkpoint(bad), Contains("state/scaler must hold a finite loss scale"));
    }
}

TEST_CASE(
    "training at a learning rate that diverges: the running variance overflows while the loss is finite",
    "[train][hostile]") {
    // The case: SGD at lr 100 drove the loss to 2.5e12, finite, so nothing stopped the
    // run, while a BN running variance overflowed to inf; the export was written.
    Model model = random_model(tiny_config(), 3);
    TrainOptions o;
    o.optimizer.kind = OptimizerKind::SGD;
    o.schedule.base_lr = 100;
    o.schedule.total_steps = 1000;
    Trainer trainer(model, o);
    Rng rng(11);
    Tensor images({4, 3, 16, 16});
    const std::vector<int64_t> labels = {0, 1, 0, 1};
    std::optional<UnwritableValue> bad;
    double loss = 0;
    int step = 0;
    for (; step < 40 && !bad; ++step) {
        for (float& x : images.data) x = float(rng.uniform(-2, 2));
        loss = trainer.train_step(images, labels).loss;
        bad = find_unwritable_value(model, &trainer.optimizer().state());
    }
    INFO("step " << step << ", loss " << loss);
    REQUIRE(bad);
    CHECK(std::isfinite(loss));
    CHECK(bad->tensor.rfind("model/", 0) == 0);
    ScratchDir dir("diverge");
    const std::string path = (dir.path / "checkpoint.safetensors").string();
    CHECK_THROWS_WITH(save_checkpoint(path, model, trainer.optimizer(), TrainingState{}),
                      Contains(bad->tensor));
    CHECK_FALSE(fs::exists(path));
}

// ---- the checkpoint directory's lock and stale temporaries ----

TEST_CASE("the run lock refuses a second holder, naming its pid, until the first lets go",
          "[train][hostile]") {
    ScratchDir dir("lock");
    const std::string lock_path = checkpoint_lock_path(dir.path.string());
    CHECK(lock_path == (dir.path / ".effnet-train.lock").string());
    {
        RunLock first = RunLock::acquire(lock_path, "the checkpoint directory 'X'");
        // flock locks belong to an open file description: a second open conflicts even in one process.
        CHECK_THROWS_WITH(RunLock::acquire(lock_path, "the checkpoint directory 'X'"),
                          Contains("the checkpoint directory 'X' is in use by another run (pid " +
                                   std::to_string(::getpid()) + ","));
        RunLock moved = std::move(first); // still held after a move
        CHECK_THROWS(RunLock::acquire(lock_path, "X"));
    }
    CHECK_NOTHROW(RunLock::acquire(lock_path, "X")); // released by the destructor
}

TEST_CASE("the run lock does not follow a planted symbolic link", "[train][hostile]") {
    ScratchDir dir("locklink");
    write_file(dir.path / "precious.txt", "keep me");
    fs::create_symlink(dir.path / "precious.txt", dir.path / ".effnet-train.lock");
    CHECK_THROWS_WITH(RunLock::acquire(checkpoint_lock_path(dir.path.string()), "X"),
                      Contains("cannot open the lock file"));
    std::ifstream in(dir.path / "precious.txt");
    std::string text;
    std::getline(in, text);
    CHECK(text == "keep me");
}

TEST_CASE("stale temporaries: only the writer's exact pattern, only plain files, are removed",
          "[train][hostile]") {
    CHECK(is_temporary_of("checkpoint.safetensors.tmp.aB3xYz", "checkpoint.safetensors"));
    CHECK_FALSE(is_temporary_of("checkpoint.safetensors.tmp.aB3xY", "checkpoint.safetensors"));
    CHECK_FALSE(is_temporary_of("checkpoint.safetensors.tmp.aB3xYz1", "checkpoint.safetensors"));
    CHECK_FALSE(is_temporary_of("checkpoint.safetensors.tmp.aB-xYz", "checkpoint.safetensors"));
    CHECK_FALSE(is_temporary_of("checkpoint.safetensors.tmp.", "checkpoint.safetensors"));
    CHECK_FALSE(is_temporary_of("other.safetensors.tmp.aB3xYz", "checkpoint.safetensors"));
    CHECK_FALSE(is_temporary_of("xcheckpoint.safetensors.tmp.aB3xYz", "checkpoint.safetensors"));

    ScratchDir dir("temps");
    const fs::path d = dir.path;
    write_file(d / "checkpoint.safetensors", "the checkpoint");
    write_file(d / "checkpoint.safetensors.tmp.abc123", std::string(1000, 'x')); // removed
    write_file(d / "checkpoint.safetensors.tmp.ZZ9zz9", std::string(24, 'x'));   // removed
    write_file(d / "checkpoint.safetensors.tmp.abc12", "short suffix");
    write_file(d / "checkpoint.safetensors.tmp.abc1234", "long suffix");
    write_file(d / "checkpoint.safetensors.tmp.ab_123", "not alphanumeric");
    write_file(d / "export.safetensors.tmp.abc123", "another file's temporary");
    write_file(d / "notes.txt", "the user's");
    fs::create_directories(d / "checkpoint.safetensors.tmp.dir123"); // a folder: not ours
    write_file(d / "target.bin", "a link's target");
    fs::create_symlink(d / "target.bin", d / "checkpoint.safetensors.tmp.lnk123"); // a link: not ours

    const RunLock lock = RunLock::acquire(checkpoint_lock_path(d.string()), "X");
    const RemovedTemporaries removed =
        remove_stale_temporaries((d / "checkpoint.safetensors").string(), lock);
    CHECK(removed.files == 2);
    CHECK(removed.bytes == 1024);
    CHECK(files_in(d) ==
          std::vector<std::string>{".effnet-train.lock", "checkpoint.safetensors",
                                   "checkpoint.safetensors.tmp.ab_123", "checkpoint.safetensors.tmp.abc12",
                                   "checkpoint.safetensors.tmp.abc1234", "checkpoint.safetensors.tmp.dir123",
                                   "checkpoint.safetensors.tmp.lnk123", "export.safetensors.tmp.abc123",
                                   "notes.txt", "target.bin"});
    CHECK(remove_stale_temporaries((d / "checkpoint.safetensors").string(), lock).files == 0);
}
