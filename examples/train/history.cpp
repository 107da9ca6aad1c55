// The CSV log and the plot. Losses are written with 17 significant digits, which round-trip a
// double exactly, so two logs can be compared bit for bit.
#include "history.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "effnet/error.hpp"
#include "effnet/train/plot.hpp"

namespace effnet::examples {
namespace {

const char* kHeader =
    "kind,epoch,step,lr,loss,accuracy,images_per_s,val_loss,val_top1,val_top5,skipped_images";

std::string num(double v) {
    if (std::isnan(v)) return "";
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
}

double parse_num(const std::string& s) {
    return s.empty() ? NAN : std::stod(s);
}

std::vector<std::string> split(const std::string& line) {
    std::vector<std::string> out;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) out.push_back(cell);
    if (!line.empty() && line.back() == ',') out.push_back("");
    return out;
}

} // namespace

namespace {

std::string read_whole_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// One CSV row; throws when a cell is not a number.
LogRow parse_row(const std::vector<std::string>& cells) {
    LogRow r;
    r.kind = cells[0];
    r.epoch = std::stoll(cells[1]);
    r.step = std::stoll(cells[2]);
    r.lr = parse_num(cells[3]);
    r.loss = parse_num(cells[4]);
    r.accuracy = parse_num(cells[5]);
    r.images_per_s = parse_num(cells[6]);
    r.val_loss = parse_num(cells[7]);
    r.val_top1 = parse_num(cells[8]);
    r.val_top5 = parse_num(cells[9]);
    r.skipped_images = std::stoll(cells[10]);
    return r;
}

} // namespace

// On resume the rows the checkpoint has not seen are dropped. They follow the kept ones, so the
// file is cut at the end of the last kept row (one truncate: a kill at any moment leaves either
// the old log or the cut one). The log used to be rewritten through fopen("w"), and a kill
// between the truncation and the rewrite lost every row before the checkpoint (the soak run in
// tests/soak/README.md found it). Kept rows that are not a prefix (a log of another run) are
// written to LOG.rewrite and renamed over the log instead.
History::History(const std::string& path, bool resume, int64_t resume_step, int64_t resume_epoch)
    : path_(path) {
    if (path.empty()) return;
    const std::string text = resume ? read_whole_file(path) : "";
    if (text.empty()) {
        file_ = std::fopen(path.c_str(), "w");
        EFFNET_CHECK(file_, "cannot write the log '" + path + "'");
        std::fprintf(file_, "%s\n", kHeader);
        std::fflush(file_);
        return;
    }
    const size_t header_end = text.find('\n');
    EFFNET_CHECK(text.compare(0, header_end, kHeader) == 0,
                 "log '" + path + "' does not have effnet-train's header");
    // (A header without its newline: the rows go after one.)
    size_t kept_end = header_end == std::string::npos ? std::string::npos : header_end + 1;
    bool prefix = true; // the kept rows are the file's first rows
    int line_no = 1;
    for (size_t begin = std::min(kept_end, text.size()); begin < text.size();) {
        const size_t newline = text.find('\n', begin);
        if (newline == std::string::npos) break; // a row cut short by a kill: drop it
        const std::string line = text.substr(begin, newline - begin);
        const size_t end = newline + 1;
        begin = end;
        ++line_no;
        if (line.empty()) continue;
        const auto cells = split(line);
        if (cells.size() != 11) break; // a damaged row: drop it and the rest
        LogRow r;
        try {
            r = parse_row(cells);
        } catch (const std::exception&) {
            throw Error("log '" + path + "' line " + std::to_string(line_no) + " is not a valid row");
        }
        // Keep what the checkpoint has seen: steps up to it, epochs it completed.
        const bool keep = r.kind == "step" ? r.step <= resume_step : r.epoch < resume_epoch;
        if (!keep) {
            prefix = false;
            continue;
        }
        if (!prefix) kept_end = std::string::npos;
        if (kept_end != std::string::npos) kept_end = end;
        rows_.push_back(r);
    }
    if (kept_end != std::string::npos) {
        EFFNET_CHECK(::truncate(path.c_str(), off_t(kept_end)) == 0,
                     "cannot cut the log '" + path + "': " + std::strerror(errno));
    } else {
        const std::string rewrite = path + ".rewrite";
        file_ = std::fopen(rewrite.c_str(), "w");
        EFFNET_CHECK(file_, "cannot write '" + rewrite + "'");
        std::fprintf(file_, "%s\n", kHeader);
        for (const LogRow& r : rows_) write_row(r);
        const bool written = std::fflush(file_) == 0 && ::fsync(fileno(file_)) == 0;
        std::fclose(file_);
        file_ = nullptr;
        EFFNET_CHECK(written && std::rename(rewrite.c_str(), path.c_str()) == 0,
                     "cannot rewrite the log '" + path + "': " + std::strerror(errno));
    }
    file_ = std::fopen(path.c_str(), "a");
    EFFNET_CHECK(file_, "cannot write the log '" + path + "'");
}

History::~History() {
    if (file_) std::fclose(file_);
}

void History::write_row(const LogRow& r) {
    std::fprintf(file_, "%s,%lld,%lld,%s,%s,%s,%s,%s,%s,%s,%lld\n", r.kind.c_str(), (long long)r.epoch,
                 (long long)r.step, num(r.lr).c_str(), num(r.loss).c_str(), num(r.accuracy).c_str(),
                 num(r.images_per_s).c_str(), num(r.val_loss).c_str(), num(r.val_top1).c_str(),
                 num(r.val_top5).c_str(), (long long)r.skipped_images);
}

void History::add(const LogRow& row) {
    rows_.push_back(row);
    if (!file_) return;
    write_row(row);
    std::fflush(file_); // a killed run leaves every finished row on disk
}

void History::plot(const std::string& png_path) const {
    train::PlotSeries step_loss, epoch_loss, val_loss, epoch_acc, val_top1, val_top5;
    auto style = [](train::PlotSeries& s, uint8_t r, uint8_t g, uint8_t b, const char* label) {
        s.rgb[0] = r, s.rgb[1] = g, s.rgb[2] = b;
        s.label = label;
    };
    style(step_loss, 170, 200, 240, "train loss (step)");
    style(epoch_loss, 20, 60, 200, "train loss (epoch mean)");
    style(val_loss, 220, 30, 30, "val loss");
    style(epoch_acc, 20, 60, 200, "train top-1 (epoch)");
    style(val_top1, 220, 30, 30, "val top-1");
    style(val_top5, 240, 150, 20, "val top-5");
    for (const LogRow& r : rows_) {
        const double x = double(r.step);
        if (r.kind == "step") {
            step_loss.x.push_back(x), step_loss.y.push_back(r.loss);
        } else {
            epoch_loss.x.push_back(x), epoch_loss.y.push_back(r.loss);
            epoch_acc.x.push_back(x), epoch_acc.y.push_back(r.accuracy);
            if (!std::isnan(r.val_loss)) {
                val_loss.x.push_back(x), val_loss.y.push_back(r.val_loss);
                val_top1.x.push_back(x), val_top1.y.push_back(r.val_top1);
                val_top5.x.push_back(x), val_top5.y.push_back(r.val_top5);
            }
        }
    }
    train::write_plot_png(png_path, {step_loss, epoch_loss, val_loss}, {epoch_acc, val_top1, val_top5});
}

} // namespace effnet::examples
