#pragma once
// Plot: a PNG of loss (top) and accuracy (bottom, y in [0, 1]) curves against a shared x axis
// (steps); series may be empty; non-finite points break the line.
#include <cstdint>
#include <string>
#include <vector>

namespace effnet::train {

struct PlotSeries {
    std::vector<double> x, y;
    uint8_t rgb[3] = {0, 0, 0};
    std::string label; // legend entry; empty: none
};
void write_plot_png(const std::string& path, const std::vector<PlotSeries>& loss_series,
                    const std::vector<PlotSeries>& accuracy_series, int width = 800, int height = 600);

} // namespace effnet::train
