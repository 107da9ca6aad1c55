#pragma once
// effnet-train's record of a run: the CSV log (one row per step and per epoch, flushed as it
// goes) and the PNG plot drawn from it. On resume the rows after the checkpoint are dropped,
// so the log of a resumed run reads like the log of an uninterrupted one.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace effnet::examples {

struct LogRow {
    std::string kind; // "step" | "epoch"
    int64_t epoch = 0;
    int64_t step = 0; // optimizer steps done after this row's work
    double lr = 0, loss = 0, accuracy = 0, images_per_s = 0;
    double val_loss = NAN, val_top1 = NAN, val_top5 = NAN; // epoch rows with --val
    int64_t skipped_images = 0;
};

class History {
public:
    // path may be empty (no CSV). With resume, existing rows up to (step, epoch) are kept.
    History(const std::string& path, bool resume, int64_t resume_step, int64_t resume_epoch);
    ~History();
    History(const History&) = delete;
    History& operator=(const History&) = delete;

    void add(const LogRow& row);
    void plot(const std::string& png_path) const;
    const std::vector<LogRow>& rows() const { return rows_; }

private:
    void write_row(const LogRow& row);
    std::string path_;
    std::FILE* file_ = nullptr;
    std::vector<LogRow> rows_;
};

} // namespace effnet::examples
