// Image-folder scanning, per-epoch sample order, and the threaded, prefetching batch loader.
// Every sample's augmentation draws from Rng(mix_seed(seed, epoch, index)), so a batch is the
// same whichever thread decodes it and whether or not the run was resumed.
// The scan walks the folders itself (not recursive_directory_iterator with
// follow_directory_symlink, which followed a link `a/up -> ..` round and round: 8 images became
// 328 samples, class b's under label a) and knows every folder on its path by device and inode.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "effnet/error.hpp"
#include "effnet/image.hpp"
#include "effnet/limits.hpp"
#include "effnet/train/dataset.hpp"
#include "effnet/train/rng.hpp"

namespace effnet::train {
namespace fs = std::filesystem;

namespace {

// A file's identity: two paths name one file when (device, inode) agree.
struct FileId {
    uint64_t device = 0, inode = 0;
    bool operator<(const FileId& o) const { return device != o.device ? device < o.device : inode < o.inode; }
    bool operator==(const FileId& o) const { return device == o.device && inode == o.inode; }
};

// stat (following links); false when the path is dangling or unreadable.
bool stat_follow(const fs::path& p, struct stat& st) {
    return ::stat(p.c_str(), &st) == 0;
}

FileId id_of(const struct stat& st) {
    return {uint64_t(st.st_dev), uint64_t(st.st_ino)};
}

struct FoundFile {
    std::string path;
    FileId id;
    bool via_link = false; // the file or a folder on its path is a symbolic link
};

// The dataset root and every folder above it (id -> canonical path): a link to one of them
// would take the scan round the whole dataset again, or beyond it.
using Holders = std::map<FileId, std::string>;

Holders root_and_ancestors(const std::string& root) {
    Holders holders;
    std::error_code ec;
    fs::path p = fs::canonical(root, ec);
    EFFNET_CHECK(!ec, "dataset: cannot resolve '" + root + "': " + ec.message());
    for (;;) {
        struct stat st = {};
        if (stat_follow(p, st)) holders.emplace(id_of(st), p.string());
        if (p == p.parent_path()) return holders;
        p = p.parent_path();
    }
}

// The walk of one class folder: every image file below it, following symbolic links except
// those that would loop (back to a folder on the current path, the root or above), lead into
// another class folder, or revisit a folder already walked.
class ClassWalk {
public:
    ClassWalk(const fs::path& class_dir, FileId root, const Holders& holders,
              const std::map<FileId, std::string>& other_classes, std::vector<std::string>& warnings)
        : root_(root), holders_(holders), other_classes_(other_classes), warnings_(warnings) {
        struct stat st = {};
        if (stat_follow(class_dir, st)) walk(class_dir, id_of(st), 0, false);
    }
    std::vector<FoundFile> files;

private:
    void walk(const fs::path& dir, FileId id, int depth, bool via_link) {
        if (depth > limits::kMaxDatasetDepth) {
            warnings_.push_back("dataset: skipping '" + dir.string() + "': more than " +
                                std::to_string(limits::kMaxDatasetDepth) +
                                " folders below its class folder (limits::kMaxDatasetDepth)");
            return;
        }
        visited_.insert(id);
        path_.push_back({dir, id});
        // Real entries before links, so that a folder reached both ways is walked by its real path.
        const auto entries = sorted_entries(dir);
        for (const bool links : {false, true})
            for (const fs::path& entry : entries) visit(entry, depth, via_link, links);
        path_.pop_back();
    }

    void visit(const fs::path& entry, int depth, bool via_link, bool links) {
        struct stat lst = {};
        struct stat st = {};
        if (::lstat(entry.c_str(), &lst) != 0 || S_ISLNK(lst.st_mode) != links) return;
        if (!stat_follow(entry, st)) return; // a dangling link
        via_link = via_link || links;
        if (S_ISREG(st.st_mode)) {
            if (has_image_extension(entry.string())) files.push_back({entry.string(), id_of(st), via_link});
            return;
        }
        if (!S_ISDIR(st.st_mode)) return;
        const std::string why = reason_not_to_enter(entry, id_of(st));
        if (why.empty()) {
            walk(entry, id_of(st), depth + 1, via_link);
        } else if (links) {
            warnings_.push_back("dataset: skipping symbolic link '" + entry.string() + "': " + why);
        }
    }

    // Empty when the folder may be walked; else why not.
    std::string reason_not_to_enter(const fs::path& dir, FileId id) const {
        for (const auto& [ancestor, ancestor_id] : path_)
            if (ancestor_id == id)
                return "it leads back to '" + ancestor.string() + "', a folder it is in (a loop)";
        if (id == root_) return "it leads back to the dataset root";
        if (auto it = holders_.find(id); it != holders_.end())
            return "it leads to '" + it->second + "', a folder that holds the dataset (a loop)";
        if (const std::string* other = other_class_holding(dir))
            return "it leads into the class folder '" + *other + "'";
        if (visited_.count(id)) return "the folder it leads to is already scanned";
        return "";
    }

    // The other class whose folder is `dir` or one of its real ancestors, or null.
    const std::string* other_class_holding(const fs::path& dir) const {
        std::error_code ec;
        fs::path p = fs::canonical(dir, ec);
        if (ec) return nullptr;
        for (;;) {
            struct stat st = {};
            if (stat_follow(p, st)) {
                const FileId id = id_of(st);
                if (holders_.count(id)) return nullptr; // the root or above: no class folder there
                auto it = other_classes_.find(id);
                if (it != other_classes_.end()) return &it->second;
            }
            if (p == p.parent_path()) return nullptr;
            p = p.parent_path();
        }
    }

    static std::vector<fs::path> sorted_entries(const fs::path& dir) {
        std::vector<fs::path> entries;
        std::error_code ec;
        for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
            entries.push_back(it->path());
        EFFNET_CHECK(!ec, "dataset: cannot list '" + dir.string() + "': " + ec.message());
        std::sort(entries.begin(), entries.end());
        return entries;
    }

    FileId root_;
    const Holders& holders_;
    const std::map<FileId, std::string>& other_classes_;
    std::vector<std::string>& warnings_;
    std::vector<std::pair<fs::path, FileId>> path_; // the folders from the class folder down to here
    std::set<FileId> visited_;
};

// The class folders' names (sorted), following links to folders.
std::vector<std::string> class_folders(const std::string& root) {
    std::error_code ec;
    EFFNET_CHECK(fs::is_directory(root, ec), "dataset: '" + root + "' is not a directory");
    std::vector<std::string> classes;
    for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
        std::error_code dec;
        if (it->is_directory(dec)) classes.push_back(it->path().filename().string());
    }
    EFFNET_CHECK(!ec, "dataset: cannot list '" + root + "': " + ec.message());
    std::sort(classes.begin(), classes.end());
    return classes;
}

// Image files lying directly in the root, beside the class folders: they belong to no class.
int64_t images_beside_classes(const std::string& root) {
    int64_t n = 0;
    std::error_code ec;
    for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
        std::error_code fec;
        if (it->is_regular_file(fec) && has_image_extension(it->path().string())) ++n;
    }
    return n;
}

// Scans the class folders that exist under the root into folder.samples (label = index in
// folder.classes). Each file counts once per class; a file under two classes is an error.
void scan_classes(ImageFolder& folder) {
    struct stat root_st = {};
    EFFNET_CHECK(stat_follow(folder.root, root_st), "dataset: cannot read '" + folder.root + "'");
    const Holders holders = root_and_ancestors(folder.root);
    std::map<FileId, std::string> class_ids;
    std::vector<std::optional<FileId>> ids(folder.classes.size());
    for (size_t c = 0; c < folder.classes.size(); ++c) {
        const fs::path dir = fs::path(folder.root) / folder.classes[c];
        struct stat st = {};
        if (!stat_follow(dir, st) || !S_ISDIR(st.st_mode)) continue;
        auto holder = holders.find(id_of(st));
        EFFNET_CHECK(holder == holders.end(), "dataset: class folder '" + dir.string() + "' leads to '" +
                                                  holder->second +
                                                  "', a folder that holds the dataset (a loop)");
        ids[c] = id_of(st);
        class_ids.emplace(id_of(st), folder.classes[c]);
    }
    std::map<FileId, std::pair<std::string, size_t>> owner; // file -> (first path, class)
    for (size_t c = 0; c < folder.classes.size(); ++c) {
        if (!ids[c]) continue;
        const fs::path dir = fs::path(folder.root) / folder.classes[c];
        std::map<FileId, std::string> others = class_ids;
        others.erase(*ids[c]);
        ClassWalk walk(dir, id_of(root_st), holders, others, folder.warnings);
        // A file reached by several paths keeps its first real path (not through a link).
        std::sort(walk.files.begin(), walk.files.end(), [](const FoundFile& a, const FoundFile& b) {
            return a.via_link != b.via_link ? b.via_link : a.path < b.path;
        });
        int64_t repeats = 0;
        std::vector<Sample> kept;
        for (const FoundFile& f : walk.files) {
            auto [it, fresh] = owner.emplace(f.id, std::make_pair(f.path, c));
            if (!fresh && it->second.second != c)
                throw Error("dataset: '" + f.path + "' (class '" + folder.classes[c] + "') and '" +
                            it->second.first + "' (class '" + folder.classes[it->second.second] +
                            "') are the same file; an image cannot have two labels");
            if (!fresh) {
                ++repeats;
                continue;
            }
            kept.push_back({f.path, int64_t(c), f.id.device, f.id.inode});
        }
        std::sort(kept.begin(), kept.end(), [](const Sample& a, const Sample& b) { return a.path < b.path; });
        folder.samples.insert(folder.samples.end(), kept.begin(), kept.end());
        if (repeats > 0)
            folder.warnings.push_back("dataset: class folder '" + dir.string() +
                                      "': " + std::to_string(repeats) +
                                      " path(s) reach a file already counted (links); each file counts once");
    }
    if (const int64_t loose = images_beside_classes(folder.root))
        folder.warnings.push_back("dataset: " + std::to_string(loose) + " image file(s) directly in '" +
                                  folder.root + "' are ignored: images belong in " + folder.root +
                                  "/<class>/");
}

int64_t samples_of_class(const ImageFolder& folder, size_t c) {
    return std::count_if(folder.samples.begin(), folder.samples.end(),
                         [&](const Sample& s) { return s.label == int64_t(c); });
}

} // namespace

ImageFolder ImageFolder::scan(const std::string& root) {
    ImageFolder folder;
    folder.root = root;
    folder.classes = class_folders(root);
    EFFNET_CHECK(!folder.classes.empty(),
                 "dataset: '" + root + "' has no class folders (expected ROOT/<class>/<image>)");
    scan_classes(folder);
    for (size_t c = 0; c < folder.classes.size(); ++c)
        EFFNET_CHECK(samples_of_class(folder, c) > 0, "dataset: class folder '" +
                                                          (fs::path(root) / folder.classes[c]).string() +
                                                          "' holds no images (.jpg .jpeg .png .bmp .tga)");
    if (folder.classes.size() == 1)
        folder.warnings.push_back("dataset: '" + root + "' has a single class folder ('" + folder.classes[0] +
                                  "'): a one-class classifier learns nothing (expected ROOT/<class>/<image> "
                                  "with a folder per class)");
    return folder;
}

ImageFolder ImageFolder::scan(const std::string& root, const std::vector<std::string>& classes) {
    ImageFolder folder;
    folder.root = root;
    folder.classes = classes;
    const auto present = class_folders(root);
    for (const auto& name : present)
        EFFNET_CHECK(std::find(classes.begin(), classes.end(), name) != classes.end(),
                     "dataset: class folder '" + name + "' in '" + root +
                         "' is not one of the training classes");
    scan_classes(folder);
    EFFNET_CHECK(!folder.samples.empty(), "dataset: '" + root + "' holds no images in class folders");
    return folder;
}

const Sample* ImageFolder::find_file(const std::string& path) const {
    struct stat st = {};
    if (!stat_follow(path, st)) return nullptr;
    const FileId id = id_of(st);
    for (const Sample& s : samples)
        if (s.device == id.device && s.inode == id.inode) return &s;
    return nullptr;
}

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
    std::vector<int64_t> order(size_t(std::max<int64_t>(n, 0)));
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    if (shuffle) { // Fisher-Yates
        Rng rng(mix_seed(seed, uint64_t(epoch), 0x6f72646572ull /* "order" */));
        for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
    }
    return order;
}

int64_t batches_in_epoch(int64_t n, int64_t batch_size, bool drop_last) {
    EFFNET_CHECK(n >= 0 && batch_size >= 1, "batches_in_epoch: n must be >= 0 and the batch >= 1");
    if (drop_last && n >= batch_size) return n / batch_size;
    return (n + batch_size - 1) / batch_size;
}

ShardRange shard_range(int64_t count, int world, int rank) {
    EFFNET_CHECK(world >= 1 && rank >= 0 && rank < world && count >= 0,
                 "shard_range: rank " + std::to_string(rank) + " of " + std::to_string(world) + ", count " +
                     std::to_string(count));
    return {count * rank / world, count * (rank + 1) / world};
}

std::vector<std::vector<int64_t>> epoch_shard(int64_t n, uint64_t seed, int64_t epoch, bool shuffle,
                                              int64_t global_batch, bool drop_last, int world, int rank) {
    const std::vector<int64_t> order = epoch_order(n, seed, epoch, shuffle);
    const int64_t batches = batches_in_epoch(n, global_batch, drop_last);
    std::vector<std::vector<int64_t>> out(static_cast<size_t>(batches));
    for (int64_t b = 0; b < batches; ++b) {
        const int64_t begin = b * global_batch, end = std::min(n, begin + global_batch);
        const ShardRange r = shard_range(end - begin, world, rank);
        out[size_t(b)].assign(order.begin() + (begin + r.begin), order.begin() + (begin + r.end));
    }
    return out;
}

namespace {

// One batch being decoded: workers fill slots; `remaining` counts slots not done yet.
struct Job {
    std::vector<int64_t> indices; // dataset indices, in batch order
    Tensor images;                // [n, 3, R, R], when not decoded into a caller's buffer
    float* dst = nullptr;         // where slot s goes: dst + s * 3 * R * R (images' or the caller's)
    bool external = false;        // dst is a caller's buffer (set_destinations)
    std::vector<char> ok;
    std::vector<std::string> errors;
    int64_t epoch = 0;
    int64_t remaining = 0;
};

} // namespace

struct DataLoader::Impl {
    Impl(const ImageFolder& dataset, const LoaderOptions& options);
    ~Impl();
    int64_t batches_per_epoch() const;
    void start_epoch(int64_t epoch, int64_t first_batch);
    Batch next();
    void worker_loop();
    void submit(int64_t batch_index);
    void load_sample(Job& job, int64_t slot);
    void drop_pending(std::unique_lock<std::mutex>& lock);
    void set_destinations(float* first, float* second, int64_t capacity_images);

    const ImageFolder& dataset_;
    LoaderOptions options_;
    int64_t epoch_ = 0;
    int64_t next_batch_ = 0;
    std::vector<int64_t> order_;
    std::mutex mutex_;
    std::condition_variable work_cv_, done_cv_;
    std::deque<std::pair<std::shared_ptr<Job>, int64_t>> tasks_; // (job, slot)
    std::map<int64_t, std::shared_ptr<Job>> jobs_;               // batch index -> job
    int64_t in_flight_ = 0;                                      // slots a worker is decoding now
    float* destinations_[2] = {nullptr, nullptr};
    int64_t destination_capacity_ = 0;
    int64_t jobs_submitted_ = 0; // alternates the destinations
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

DataLoader::DataLoader(const ImageFolder& dataset, const LoaderOptions& options)
    : impl_(std::make_unique<Impl>(dataset, options)) {}

DataLoader::~DataLoader() = default;

int64_t DataLoader::batches_per_epoch() const {
    return impl_->batches_per_epoch();
}

void DataLoader::start_epoch(int64_t epoch, int64_t first_batch) {
    impl_->start_epoch(epoch, first_batch);
}

bool DataLoader::has_next() const {
    return impl_->next_batch_ < impl_->batches_per_epoch();
}

Batch DataLoader::next() {
    return impl_->next();
}

const LoaderOptions& DataLoader::options() const {
    return impl_->options_;
}

void DataLoader::set_destinations(float* first, float* second, int64_t capacity_images) {
    impl_->set_destinations(first, second, capacity_images);
}

DataLoader::Impl::Impl(const ImageFolder& dataset, const LoaderOptions& options)
    : dataset_(dataset), options_(options) {
    EFFNET_CHECK(!dataset.samples.empty(), "data loader: dataset '" + dataset.root + "' is empty");
    EFFNET_CHECK(options.batch_size >= 1, "data loader: batch size must be >= 1");
    EFFNET_CHECK(options.resolution >= 8 && options.resolution <= 4096,
                 "data loader: resolution must be in [8, 4096]");
    EFFNET_CHECK(options.workers >= 1 && options.workers <= 256, "data loader: workers must be in [1, 256]");
    EFFNET_CHECK(options.val_resize >= 0, "data loader: val resize must be >= 0");
    EFFNET_CHECK(options.shard_count >= 1 && options.shard_index >= 0 &&
                     options.shard_index < options.shard_count,
                 "data loader: shard " + std::to_string(options.shard_index) + " of " +
                     std::to_string(options.shard_count));
    parse_interpolation(options.val_interpolation); // throws on unknown names
    if (options_.val_resize == 0) options_.val_resize = int(std::lround(options.resolution / 0.875));
    for (int i = 0; i < options.workers; ++i) threads_.emplace_back([this] { worker_loop(); });
    start_epoch(0, 0);
}

DataLoader::Impl::~Impl() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
        tasks_.clear();
    }
    work_cv_.notify_all();
    for (auto& t : threads_) t.join();
}

int64_t DataLoader::Impl::batches_per_epoch() const {
    return batches_in_epoch(int64_t(dataset_.samples.size()), options_.batch_size,
                            options_.train && options_.drop_last);
}

void DataLoader::Impl::start_epoch(int64_t epoch, int64_t first_batch) {
    EFFNET_CHECK(epoch >= 0, "data loader: negative epoch");
    EFFNET_CHECK(first_batch >= 0 && first_batch <= batches_per_epoch(),
                 "data loader: batch " + std::to_string(first_batch) + " out of range (epoch has " +
                     std::to_string(batches_per_epoch()) + ")");
    std::unique_lock<std::mutex> lock(mutex_);
    drop_pending(lock);
    epoch_ = epoch;
    next_batch_ = first_batch;
    order_ = epoch_order(int64_t(dataset_.samples.size()), options_.seed, epoch, options_.train);
    if (next_batch_ < batches_per_epoch()) submit(next_batch_);
}

// Called with mutex_ held: forgets the jobs submitted, and waits for the slots still in a
// worker's hands (which may be writing into a caller's buffer that the next job reuses).
void DataLoader::Impl::drop_pending(std::unique_lock<std::mutex>& lock) {
    tasks_.clear();
    done_cv_.wait(lock, [this] { return in_flight_ == 0; });
    jobs_.clear();
}

void DataLoader::Impl::set_destinations(float* first, float* second, int64_t capacity_images) {
    std::unique_lock<std::mutex> lock(mutex_);
    drop_pending(lock);
    const bool on = first && second && capacity_images > 0;
    destinations_[0] = on ? first : nullptr;
    destinations_[1] = on ? second : nullptr;
    destination_capacity_ = on ? capacity_images : 0;
    jobs_submitted_ = 0;
    if (next_batch_ < batches_per_epoch()) submit(next_batch_);
}

// Called with mutex_ held.
void DataLoader::Impl::submit(int64_t batch_index) {
    if (jobs_.count(batch_index)) return;
    auto job = std::make_shared<Job>();
    const int64_t n = int64_t(order_.size());
    const int64_t begin = batch_index * options_.batch_size;
    const int64_t end = std::min(n, begin + options_.batch_size);
    const ShardRange shard = shard_range(end - begin, options_.shard_count, options_.shard_index);
    for (int64_t i = begin + shard.begin; i < begin + shard.end; ++i) job->indices.push_back(order_[i]);
    const int64_t count = int64_t(job->indices.size());
    const int64_t r = options_.resolution;
    if (destinations_[0] && count <= destination_capacity_) {
        job->dst = destinations_[jobs_submitted_ % 2];
        job->external = true;
    } else {
        job->images = Tensor({count, 3, r, r});
        job->dst = job->images.ptr();
    }
    ++jobs_submitted_;
    job->ok.assign(count, 0);
    job->errors.assign(count, "");
    job->epoch = epoch_;
    job->remaining = count;
    jobs_[batch_index] = job;
    for (int64_t s = 0; s < count; ++s) tasks_.emplace_back(job, s);
    work_cv_.notify_all();
}

void DataLoader::Impl::load_sample(Job& job, int64_t slot) {
    const int64_t index = job.indices[slot];
    const int64_t r = options_.resolution;
    float* dst = job.dst + slot * 3 * r * r;
    try {
        const Image image = load_image(dataset_.samples[index].path);
        if (options_.train) {
            Rng rng(mix_seed(options_.seed, uint64_t(job.epoch), uint64_t(index)));
            train_transform(image, int(r), rng, options_.normalize, dst);
        } else {
            eval_transform(image, options_.val_resize, int(r), options_.normalize, dst,
                           options_.val_interpolation);
        }
        job.ok[slot] = 1;
    } catch (const std::exception& e) {
        job.errors[slot] = e.what();
    }
}

void DataLoader::Impl::worker_loop() {
    for (;;) {
        std::shared_ptr<Job> job;
        int64_t slot = 0;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            work_cv_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
            if (stopping_) return;
            job = tasks_.front().first;
            slot = tasks_.front().second;
            tasks_.pop_front();
            ++in_flight_;
        }
        load_sample(*job, slot); // outside the lock: decoding is the slow part
        {
            std::lock_guard<std::mutex> lock(mutex_);
            --job->remaining;
            --in_flight_;
        }
        done_cv_.notify_all();
    }
}

Batch DataLoader::Impl::next() {
    std::unique_lock<std::mutex> lock(mutex_);
    EFFNET_CHECK(next_batch_ < batches_per_epoch(),
                 "data loader: epoch " + std::to_string(epoch_) + " has no batches left");
    const int64_t index = next_batch_++;
    submit(index);
    if (options_.prefetch && index + 1 < batches_per_epoch()) submit(index + 1); // while this one trains
    std::shared_ptr<Job> job = jobs_.at(index);
    done_cv_.wait(lock, [&] { return job->remaining == 0; });
    jobs_.erase(index);
    lock.unlock();

    // The kept images moved down over the unreadable ones' slots, in place (k <= s).
    Batch batch;
    const int64_t count = int64_t(job->indices.size());
    const int64_t r = options_.resolution;
    const size_t image_size = size_t(3 * r * r);
    int64_t k = 0;
    for (int64_t s = 0; s < count; ++s) {
        if (!job->ok[s]) {
            ++batch.skipped;
            batch.errors.push_back(job->errors[s]);
            continue;
        }
        if (k != s)
            std::memmove(job->dst + size_t(k) * image_size, job->dst + size_t(s) * image_size,
                         image_size * sizeof(float));
        batch.labels.push_back(dataset_.samples[job->indices[s]].label);
        batch.indices.push_back(job->indices[s]);
        ++k;
    }
    if (job->external) {
        batch.staged = job->dst;
    } else {
        batch.images = std::move(job->images);
        batch.images.data.resize(size_t(k) * image_size);
        batch.images.shape[0] = k;
    }
    return batch;
}

} // namespace effnet::train
