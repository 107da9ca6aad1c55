// A tiny rasteriser for training curves: two panels (loss, accuracy), axes, grid, polylines and
// labels (stb_easy_font quads), written as PNG with stb_image_write. The implementation is
// compiled static in this translation unit only, so it cannot clash with another one.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>
#include <stb/stb_easy_font.h>
#pragma GCC diagnostic pop

#include "effnet/error.hpp"
#include "effnet/train/plot.hpp"

namespace effnet::train {
namespace {

struct Canvas {
    int width, height;
    std::vector<uint8_t> rgb; // [height, width, 3]
    Canvas(int w, int h) : width(w), height(h), rgb(size_t(w) * h * 3, 255) {}

    void pixel(int x, int y, const uint8_t c[3]) {
        if (x < 0 || y < 0 || x >= width || y >= height) return;
        uint8_t* p = &rgb[(size_t(y) * width + x) * 3];
        p[0] = c[0], p[1] = c[1], p[2] = c[2];
    }
    void fill(int x0, int y0, int x1, int y1, const uint8_t c[3]) { // [x0, x1) x [y0, y1)
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) pixel(x, y, c);
    }
    void line(double x0, double y0, double x1, double y1, const uint8_t c[3], int thickness) {
        const int steps = int(std::max(std::fabs(x1 - x0), std::fabs(y1 - y0))) + 1;
        for (int s = 0; s <= steps; ++s) {
            const double t = double(s) / steps;
            const int x = int(std::lround(x0 + t * (x1 - x0))), y = int(std::lround(y0 + t * (y1 - y0)));
            fill(x - thickness / 2, y - thickness / 2, x - thickness / 2 + thickness,
                 y - thickness / 2 + thickness, c);
        }
    }
    void text(int x, int y, const std::string& s, const uint8_t c[3], int scale = 1) {
        std::vector<char> buf(s.begin(), s.end());
        buf.push_back('\0');
        std::vector<char> vertices(s.size() * 300 + 1000);
        const int quads =
            stb_easy_font_print(0, 0, buf.data(), nullptr, vertices.data(), int(vertices.size()));
        for (int q = 0; q < quads; ++q) {
            const float* v0 = reinterpret_cast<const float*>(vertices.data() + (q * 4 + 0) * 16);
            const float* v2 = reinterpret_cast<const float*>(vertices.data() + (q * 4 + 2) * 16);
            fill(x + int(v0[0] * scale), y + int(v0[1] * scale), x + int(v2[0] * scale),
                 y + int(v2[1] * scale), c);
        }
    }
};

std::string format_tick(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4g", v);
    return buf;
}

struct Range {
    double lo = INFINITY, hi = -INFINITY;
    void add(double v) {
        if (std::isfinite(v)) lo = std::min(lo, v), hi = std::max(hi, v);
    }
    void settle() { // no data: [0, 1]; a single value: widened around it
        if (!(lo <= hi)) lo = 0, hi = 1;
        if (hi == lo) lo -= 0.5, hi += 0.5;
    }
};

Range x_range(const std::vector<PlotSeries>& a, const std::vector<PlotSeries>& b) {
    Range r;
    for (const auto* group : {&a, &b})
        for (const auto& s : *group)
            for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i)
                if (std::isfinite(s.y[i])) r.add(s.x[i]);
    r.settle();
    return r;
}

// y_fixed: use [y_fixed.lo, y_fixed.hi] instead of the data's range.
void draw_panel(Canvas& canvas, int top, int bottom, const std::string& title,
                const std::vector<PlotSeries>& series, Range xr, const Range* y_fixed) {
    const uint8_t black[3] = {0, 0, 0}, grid[3] = {225, 225, 225};
    const int left = 70, right = canvas.width - 20;
    const int y0 = top + 24, y1 = bottom - 30; // plot area rows
    canvas.text(left, top + 6, title, black, 2);
    Range yr;
    if (y_fixed) {
        yr = *y_fixed;
    } else {
        for (const auto& s : series)
            for (size_t i = 0; i < std::min(s.x.size(), s.y.size()); ++i)
                if (std::isfinite(s.x[i])) yr.add(s.y[i]);
        yr.settle();
        const double pad = 0.05 * (yr.hi - yr.lo);
        yr.lo -= pad, yr.hi += pad;
    }
    const double xmin = xr.lo, xmax = xr.hi, ymin = yr.lo, ymax = yr.hi;
    auto px = [&](double x) { return left + (x - xmin) / (xmax - xmin) * (right - left); };
    auto py = [&](double y) { return y1 - (y - ymin) / (ymax - ymin) * (y1 - y0); };
    for (int k = 0; k <= 4; ++k) { // grid and tick labels
        const double yv = ymin + (ymax - ymin) * k / 4.0, xv = xmin + (xmax - xmin) * k / 4.0;
        const int gy = int(std::lround(py(yv))), gx = int(std::lround(px(xv)));
        canvas.fill(left, gy, right, gy + 1, grid);
        canvas.fill(gx, y0, gx + 1, y1, grid);
        canvas.text(4, gy - 4, format_tick(yv), black);
        canvas.text(gx - 10, y1 + 8, format_tick(xv), black);
        if (k == 4) canvas.text(right - 24, y1 + 18, "step", black);
    }
    canvas.fill(left, y0, left + 1, y1 + 1, black); // axes
    canvas.fill(left, y1, right, y1 + 1, black);
    for (const auto& s : series) {
        const size_t n = std::min(s.x.size(), s.y.size());
        bool have_prev = false;
        double prev_x = 0, prev_y = 0;
        for (size_t i = 0; i < n; ++i) {
            if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
                have_prev = false;
                continue;
            }
            const double x = px(s.x[i]), y = py(s.y[i]);
            if (have_prev)
                canvas.line(prev_x, prev_y, x, y, s.rgb, 2);
            else
                canvas.fill(int(x) - 1, int(y) - 1, int(x) + 2, int(y) + 2, s.rgb);
            prev_x = x, prev_y = y, have_prev = true;
        }
    }
    // Legend: top right on a white box, one entry a line.
    int entries = 0, longest = 0;
    for (const auto& s : series)
        if (!s.label.empty()) ++entries, longest = std::max(longest, int(s.label.size()));
    if (entries == 0) return;
    const uint8_t white[3] = {255, 255, 255};
    const int legend_x = right - 6 * longest - 30;
    canvas.fill(legend_x - 4, top + 4, right, top + 10 + 12 * entries, white);
    int legend_y = top + 8;
    for (const auto& s : series) {
        if (s.label.empty()) continue;
        canvas.fill(legend_x, legend_y + 2, legend_x + 14, legend_y + 6, s.rgb);
        canvas.text(legend_x + 18, legend_y, s.label, black);
        legend_y += 12;
    }
}

} // namespace

void write_plot_png(const std::string& path, const std::vector<PlotSeries>& loss_series,
                    const std::vector<PlotSeries>& accuracy_series, int width, int height) {
    EFFNET_CHECK(width >= 200 && height >= 200 && width <= 8192 && height <= 8192,
                 "plot: size must be within [200, 8192], got " + std::to_string(width) + "x" +
                     std::to_string(height));
    Canvas canvas(width, height);
    const Range xr = x_range(loss_series, accuracy_series);
    Range unit;
    unit.lo = 0, unit.hi = 1;
    draw_panel(canvas, 0, height / 2, "loss", loss_series, xr, nullptr);
    draw_panel(canvas, height / 2, height, "accuracy", accuracy_series, xr, &unit);
    if (!stbi_write_png(path.c_str(), width, height, 3, canvas.rgb.data(), width * 3))
        throw Error("plot: cannot write PNG '" + path + "'");
}

} // namespace effnet::train
