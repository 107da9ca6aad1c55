// Image-folder scanning, per-epoch sample order, and the threaded, prefetching batch loader.
// Every sample's augmentation draws from Rng(mix_seed(seed, epoch, index)), so a batch is the
// same whichever thread decodes it and whether or not the run was resumed.
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "effnet/error.hpp"
#include "effnet/image.hpp"
#include "effnet/train/dataset.hpp"
#include "effnet/train/rng.hpp"

namespace effnet::train {
namespace fs = std::filesystem;

namespace {

std::vector<std::string> sorted_image_files(const fs::path& dir) {
    std::vector<std::string> files;
    std::error_code ec;
    fs::recursive_directory_iterator it(dir, fs::directory_options::follow_directory_symlink, ec);
    EFFNET_CHECK(!ec, "dataset: cannot list '" + dir.string() + "': " + ec.message());
    for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
        EFFNET_CHECK(!ec, "dataset: cannot list '" + dir.string() + "': " + ec.message());
        std::error_code fec;
        if (it->is_regular_file(fec) && has_image_extension(it->path().string()))
            files.push_back(it->path().string());
    }
    std::sort(files.begin(), files.end());
    return files;
}

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

} // namespace

ImageFolder ImageFolder::scan(const std::string& root) {
    ImageFolder folder;
    folder.root = root;
    folder.classes = class_folders(root);
    EFFNET_CHECK(!folder.classes.empty(),
                 "dataset: '" + root + "' has no class folders (expected ROOT/<class>/<image>)");
    for (size_t c = 0; c < folder.classes.size(); ++c) {
        const fs::path dir = fs::path(root) / folder.classes[c];
        const auto files = sorted_image_files(dir);
        EFFNET_CHECK(!files.empty(), "dataset: class folder '" + dir.string() +
                                         "' holds no images (.jpg .jpeg .png .bmp .tga)");
        for (const auto& f : files) folder.samples.push_back({f, int64_t(c)});
    }
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
    for (size_t c = 0; c < classes.size(); ++c) {
        const fs::path dir = fs::path(root) / classes[c];
        std::error_code ec;
        if (!fs::is_directory(dir, ec)) continue;
        for (const auto& f : sorted_image_files(dir)) folder.samples.push_back({f, int64_t(c)});
    }
    EFFNET_CHECK(!folder.samples.empty(), "dataset: '" + root + "' holds no images in class folders");
    return folder;
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

namespace {

// One batch being decoded: workers fill slots; `remaining` counts slots not done yet.
struct Job {
    std::vector<int64_t> indices; // dataset indices, in batch order
    Tensor images;                // [n, 3, R, R]
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

    const ImageFolder& dataset_;
    LoaderOptions options_;
    int64_t epoch_ = 0;
    int64_t next_batch_ = 0;
    std::vector<int64_t> order_;
    std::mutex mutex_;
    std::condition_variable work_cv_, done_cv_;
    std::deque<std::pair<std::shared_ptr<Job>, int64_t>> tasks_; // (job, slot)
    std::map<int64_t, std::shared_ptr<Job>> jobs_;               // batch index -> job
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

DataLoader::Impl::Impl(const ImageFolder& dataset, const LoaderOptions& options)
    : dataset_(dataset), options_(options) {
    EFFNET_CHECK(!dataset.samples.empty(), "data loader: dataset '" + dataset.root + "' is empty");
    EFFNET_CHECK(options.batch_size >= 1, "data loader: batch size must be >= 1");
    EFFNET_CHECK(options.resolution >= 8 && options.resolution <= 4096,
                 "data loader: resolution must be in [8, 4096]");
    EFFNET_CHECK(options.workers >= 1 && options.workers <= 256, "data loader: workers must be in [1, 256]");
    EFFNET_CHECK(options.val_resize >= 0, "data loader: val resize must be >= 0");
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
    const int64_t n = int64_t(dataset_.samples.size()), b = options_.batch_size;
    if (options_.train && options_.drop_last && n >= b) return n / b;
    return (n + b - 1) / b;
}

void DataLoader::Impl::start_epoch(int64_t epoch, int64_t first_batch) {
    EFFNET_CHECK(epoch >= 0, "data loader: negative epoch");
    EFFNET_CHECK(first_batch >= 0 && first_batch <= batches_per_epoch(),
                 "data loader: batch " + std::to_string(first_batch) + " out of range (epoch has " +
                     std::to_string(batches_per_epoch()) + ")");
    std::lock_guard<std::mutex> lock(mutex_);
    tasks_.clear(); // slots of stale jobs still in a worker's hands finish into their own job
    jobs_.clear();
    epoch_ = epoch;
    next_batch_ = first_batch;
    order_ = epoch_order(int64_t(dataset_.samples.size()), options_.seed, epoch, options_.train);
    if (next_batch_ < batches_per_epoch()) submit(next_batch_);
}

// Called with mutex_ held.
void DataLoader::Impl::submit(int64_t batch_index) {
    if (jobs_.count(batch_index)) return;
    auto job = std::make_shared<Job>();
    const int64_t n = int64_t(order_.size());
    const int64_t begin = batch_index * options_.batch_size;
    const int64_t end = std::min(n, begin + options_.batch_size);
    for (int64_t i = begin; i < end; ++i) job->indices.push_back(order_[i]);
    const int64_t count = int64_t(job->indices.size());
    const int64_t r = options_.resolution;
    job->images = Tensor({count, 3, r, r});
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
    float* dst = job.images.ptr() + slot * 3 * r * r;
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
        }
        load_sample(*job, slot); // outside the lock: decoding is the slow part
        {
            std::lock_guard<std::mutex> lock(mutex_);
            --job->remaining;
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
    if (index + 1 < batches_per_epoch()) submit(index + 1); // prefetch while this one trains
    std::shared_ptr<Job> job = jobs_.at(index);
    done_cv_.wait(lock, [&] { return job->remaining == 0; });
    jobs_.erase(index);
    lock.unlock();

    Batch batch;
    const int64_t count = int64_t(job->indices.size());
    int64_t kept = 0;
    for (int64_t s = 0; s < count; ++s) kept += job->ok[s];
    const int64_t r = options_.resolution;
    const int64_t image_size = 3 * r * r;
    if (kept == count) {
        batch.images = std::move(job->images);
    } else {
        batch.images = Tensor({kept, 3, r, r});
    }
    int64_t k = 0;
    for (int64_t s = 0; s < count; ++s) {
        if (!job->ok[s]) {
            ++batch.skipped;
            batch.errors.push_back(job->errors[s]);
            continue;
        }
        if (kept != count)
            std::copy(job->images.ptr() + s * image_size, job->images.ptr() + (s + 1) * image_size,
                      batch.images.ptr() + k * image_size);
        batch.labels.push_back(dataset_.samples[job->indices[s]].label);
        batch.indices.push_back(job->indices[s]);
        ++k;
    }
    return batch;
}

} // namespace effnet::train
