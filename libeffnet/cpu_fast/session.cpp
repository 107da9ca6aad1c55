// CpuSession: the fast CPU path walks the network plan once per forward; each layer kind is
// one kernel call spread over the session's threads. See effnet/cpu_session.hpp.
#include "effnet/cpu_session.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu_fast/aligned_buffer.hpp"
#include "cpu_fast/folded_layer.hpp"
#include "cpu_fast/isa.hpp"
#include "cpu_fast/thread_pool.hpp"
#include "effnet/error.hpp"

namespace effnet {

using cpu_fast::AlignedFloats;
using cpu_fast::FoldedLayer;

namespace {

// Arena slots by liveness: each layer's output takes a free slot and gives it back after its
// last reader (a squeeze-excite or dropout output is its input's slot, read by the next layer).
// An expand run together with the layers after it (fused[i] of them: its depthwise, and the
// project too) reads its input while they write: the input is given back only after the last
// of them has its output slot.
int plan_slots(std::vector<FoldedLayer>& layers, const std::vector<char>& fused) {
    const size_t n = layers.size();
    std::vector<int> readers(n, 0);
    for (const FoldedLayer& f : layers) {
        if (f.layer->input >= 0) ++readers[size_t(f.layer->input)];
        if (f.layer->residual >= 0) ++readers[size_t(f.layer->residual)];
    }
    std::vector<int> refs; // per slot: outstanding reads
    auto release = [&](int slot) {
        if (slot >= 0) --refs[size_t(slot)];
    };
    for (size_t i = 0; i < n; ++i) {
        FoldedLayer& f = layers[i];
        const Layer& l = *f.layer;
        f.in_slot = l.input >= 0 ? layers[size_t(l.input)].out_slot : -1;
        f.residual_slot = l.residual >= 0 ? layers[size_t(l.residual)].out_slot : -1;
        const bool alias = l.kind == LayerKind::SqueezeExcite || l.kind == LayerKind::Dropout;
        if (alias) {
            f.out_slot = f.in_slot;
            refs[size_t(f.out_slot)] += readers[i];
        } else {
            auto free_slot = std::find(refs.begin(), refs.end(), 0);
            if (free_slot == refs.end()) free_slot = refs.insert(refs.end(), 0);
            f.out_slot = int(free_slot - refs.begin());
            refs[size_t(f.out_slot)] = readers[i] > 0 ? readers[i] : 1; // the last layer's is read by run()
        }
        for (size_t back = 1; back <= std::min<size_t>(i, 2); ++back) // the fused expand's input
            if (fused[i - back] == int(back)) release(layers[i - back].in_slot);
        if (!fused[i]) release(f.in_slot);
        release(f.residual_slot);
    }
    return int(refs.size());
}

// Stem output rows per task: about two GEMM blocks of pixels.
int stem_rows_per_task(int wo) {
    return std::max(1, 2 * cpu_fast::kGemmMC / wo);
}

// The images one walk of the network covers: [first, first + count) of the batch, numbered
// 0 .. count - 1 inside it, their tensors in the arena's region `region`. thread >= 0: all of it
// on that thread (one of several groups of images running side by side, each on its own core
// with no barrier between layers); thread < 0: every layer spread over the pool.
struct Images {
    int first = 0, count = 0;
    int thread = -1;
    int region = 0;
};

} // namespace

struct CpuSession::Impl {
    const cpu_fast::KernelTable& kernels;
    CpuIsa isa;
    NetworkPlan plan;
    int num_classes = 0;
    std::vector<FoldedLayer> layers;
    cpu_fast::ThreadPool pool;
    // Arena: slots of slot_floats each, the stem's im2col rows, squeeze-excite row sums and
    // gates, the GEMM scratch and the fused bands of each thread. Slots, row sums and gates are
    // split in one region per thread for groups of images that run side by side (the layers
    // of one group reuse a slot for tensors of other sizes while another group's layers still
    // read theirs); a walk over the pool uses them whole.
    size_t slot_floats = 0;
    size_t slot_region = 0, sums_region = 0, gate_region = 0; // floats
    std::vector<AlignedFloats> slots;
    AlignedFloats im2col, row_sums, gate, scratch; // im2col: each thread's stem patches
    AlignedFloats se_scratch;                      // each thread's squeeze-excite mean and hidden values
    size_t se_scratch_floats = 0;
    size_t im2col_floats = 0;
    size_t arena_bytes = 0, weight_bytes = 0;
    // Expand layers run together with the depthwise after them, band by band (see
    // expand_depthwise); each thread's band of expanded rows.
    std::vector<char> fused;       // per layer: how many layers after an expand run with it (1: the
                                   // depthwise, 2: the depthwise and the project)
    std::vector<char> by_channels; // per expand too small to band: runs with its depthwise by
                                   // channel chunks (see expand_depthwise_channels)
    std::vector<int> band_rows;    // per fused expand: depthwise output rows per band
    size_t band_floats = 0;
    AlignedFloats bands;
    int64_t fuse_min_bytes = 0;

    Impl(const Model& model, int batch, int height, int width, const CpuSessionOptions& options)
        : kernels(cpu_fast::kernel_table(options.isa)),
          isa(options.isa == CpuIsa::Auto ? best_cpu_isa() : options.isa),
          plan(make_network_plan(model.config, batch, height, width)), num_classes(model.config.num_classes),
          pool(options.threads > 0 ? options.threads : cpu_fast::available_cpus()),
          fuse_min_bytes(options.fuse_min_bytes) {}

    void build(const Model& model);
    void forward(const float* input, int n, float* logits, std::vector<double>* layer_seconds);
    void run_layers(const float* input, float* logits, const Images& im, std::vector<double>* layer_seconds);
    void run_layer(const FoldedLayer& f, const float* input, const Images& im);

    // fn(task, thread) for every task in [0, tasks): over the pool, or on im's thread.
    template <typename Fn>
    void for_tasks(const Images& im, int64_t tasks, Fn&& fn) {
        if (im.thread < 0) return pool.parallel_for(tasks, fn);
        for (int64_t t = 0; t < tasks; ++t) fn(t, im.thread);
    }
    // The threads a call's tasks are spread over.
    int workers(const Images& im) const { return im.thread < 0 ? pool.size() : 1; }

    float* slot(int s, const Images& im) { return slots[size_t(s)].data() + size_t(im.region) * slot_region; }
    float* sums(const Images& im) { return row_sums.data() + size_t(im.region) * sums_region; }
    float* gates(const Images& im) { return gate.data() + size_t(im.region) * gate_region; }
    // GEMM over im's images, image_rows rows each: rows split in blocks (within images when
    // gated) and, when they are few, B's panels split too, so that every thread has work.
    void gemm(const cpu_fast::GemmArgs& g, int64_t image_rows, const Images& im);
    // The GEMM's rows [0, g.m) and all its panels on the calling thread (a task's share).
    void gemm_rows(const cpu_fast::GemmArgs& g, int thread);
    float* gemm_scratch(int thread) {
        return scratch.data() + size_t(thread) * cpu_fast::kGemmKC * kernels.nr;
    }
    cpu_fast::DepthwiseArgs depthwise_args(const FoldedLayer& f, const float* x, float* y, const Images& im);
    void depthwise(const FoldedLayer& f, const float* x, float* y, const Images& im);
    void expand_depthwise(const FoldedLayer& expand, const FoldedLayer& dw, const Images& im);
    void expand_depthwise_channels(const FoldedLayer& expand, const FoldedLayer& dw, const Images& im);
    void plan_fusion(int64_t min_bytes);
    void squeeze_excite(const FoldedLayer& f, const Images& im);
    void stem(const FoldedLayer& f, const float* input, const Images& im);
    void pool_mean(const FoldedLayer& f, const float* x, float* y, const Images& im);
};

void CpuSession::Impl::build(const Model& model) {
    check_parameter_shapes(model);
    EFFNET_CHECK(model.config.in_channels == 3,
                 "fast CPU path: the stem takes 3 input channels, the config has " +
                     std::to_string(model.config.in_channels));
    EFFNET_CHECK(plan.layers.front().conv.kernel <= 7,
                 "fast CPU path: the stem's kernel is at most 7x7, the config has " +
                     std::to_string(plan.layers.front().conv.kernel));
    const int vw = kernels.vector_width, nr = kernels.nr;
    layers.reserve(plan.layers.size());
    for (const Layer& l : plan.layers) {
        layers.push_back(cpu_fast::fold_layer(model, l, nr, vw));
        const FoldedLayer& f = layers.back();
        weight_bytes +=
            sizeof(float) * (f.weight.size() + f.bias.size() + f.se_reduce.size() + f.se_expand.size() +
                             f.se_reduce_bias.size() + f.se_expand_bias.size());
    }
    EFFNET_CHECK(plan.layers.front().kind == LayerKind::Stem &&
                     plan.layers.back().kind == LayerKind::Classifier,
                 "fast CPU path: the plan must start with the stem and end with the classifier");
    plan_fusion(fuse_min_bytes);
    std::vector<char> with = fused; // the layers each runs with, banded or by channels
    for (size_t i = 0; i < with.size(); ++i) with[i] = char(with[i] + by_channels[i]);
    const int n_slots = plan_slots(layers, with);
    size_t slot_image = 0, sums_image = 0, gate_image = 0; // floats per image
    for (const FoldedLayer& f : layers) {
        const Layer& l = *f.layer;
        slot_image = std::max(slot_image, size_t(l.out.pixels()) * size_t(f.cout_s));
        if (l.kind == LayerKind::Depthwise)
            sums_image = std::max(sums_image, size_t(l.out.height) * f.cout_s);
        if (l.kind == LayerKind::SqueezeExcite) {
            gate_image = std::max(gate_image, size_t(f.cin_s));
            se_scratch_floats = std::max(se_scratch_floats, size_t(f.cin_s + f.reduced_s));
        }
        if (l.kind == LayerKind::Stem)
            im2col_floats =
                size_t(stem_rows_per_task(l.out.width)) * l.out.width * 3 * l.conv.kernel * l.conv.kernel;
    }
    // Whole: the batch; a region: a group's images (batch / threads), on a cache line.
    const size_t batch = size_t(plan.batch), threads = size_t(pool.size()), per_group = batch / threads;
    auto region = [&](size_t per_image) { return (per_group * per_image + 15) / 16 * 16; };
    slot_region = region(slot_image);
    sums_region = region(sums_image);
    gate_region = region(gate_image);
    slot_floats = std::max(batch * slot_image, threads * slot_region);
    for (int s = 0; s < n_slots; ++s) slots.emplace_back(slot_floats);
    bands = AlignedFloats(size_t(pool.size()) * band_floats);
    im2col = AlignedFloats(size_t(pool.size()) * im2col_floats);
    row_sums = AlignedFloats(std::max(batch * sums_image, threads * sums_region));
    gate = AlignedFloats(std::max(batch * gate_image, threads * gate_region));
    se_scratch = AlignedFloats(size_t(pool.size()) * se_scratch_floats);
    scratch = AlignedFloats(size_t(pool.size()) * cpu_fast::kGemmKC * nr);
    arena_bytes = sizeof(float) * (slot_floats * slots.size() + im2col.size() + row_sums.size() +
                                   gate.size() + scratch.size() + se_scratch.size() + bands.size());
}

void CpuSession::Impl::gemm(const cpu_fast::GemmArgs& g, int64_t image_rows, const Images& im) {
    const int64_t mc = cpu_fast::kGemmMC;
    // Row blocks: [image][block] when gated (a block never crosses an image), else over all of
    // im's rows as one.
    const int64_t per_image = g.gate ? image_rows : image_rows * im.count;
    const int64_t images = g.gate ? im.count : 1;
    // Blocks of about equal size, a whole number of register tiles: 196 rows as 72 + 72 + 52,
    // not 96 + 96 + 4 (a task of 4 rows is all overhead, and the others decide the time).
    const int64_t mr = kernels.mr;
    const int64_t fewest = (per_image + mc - 1) / mc;       // blocks of at most mc rows
    const int64_t even = (per_image + fewest - 1) / fewest; // rows each, spread evenly
    const int64_t block_rows = std::min(mc, (even + mr - 1) / mr * mr);
    const int64_t blocks_per_image = (per_image + block_rows - 1) / block_rows;
    const int64_t blocks = images * blocks_per_image;
    const int panels = (g.n + kernels.nr - 1) / kernels.nr;
    const int64_t want = 4 * int64_t(workers(im));
    const int chunks = int(std::clamp<int64_t>((want + blocks - 1) / blocks, 1, panels));
    const int per_chunk = (panels + chunks - 1) / chunks;
    const int n_chunks = (panels + per_chunk - 1) / per_chunk;
    for_tasks(im, blocks * n_chunks, [&](int64_t task, int thread) {
        const int64_t block = task / n_chunks;
        const int chunk = int(task % n_chunks);
        const int64_t image = block / blocks_per_image, b = block % blocks_per_image;
        const int64_t m0 = image * per_image + b * block_rows;
        const int64_t m1 = std::min(m0 + block_rows, (image + 1) * per_image);
        const int p0 = chunk * per_chunk, p1 = std::min(panels, p0 + per_chunk);
        kernels.gemm(g, m0, m1, p0, p1, gemm_scratch(thread));
    });
}

void CpuSession::Impl::gemm_rows(const cpu_fast::GemmArgs& g, int thread) {
    const int panels = (g.n + kernels.nr - 1) / kernels.nr;
    for (int64_t m0 = 0; m0 < g.m; m0 += cpu_fast::kGemmMC)
        kernels.gemm(g, m0, std::min(g.m, m0 + cpu_fast::kGemmMC), 0, panels, gemm_scratch(thread));
}

cpu_fast::DepthwiseArgs CpuSession::Impl::depthwise_args(const FoldedLayer& f, const float* x, float* y,
                                                         const Images& im) {
    const Layer& l = *f.layer;
    cpu_fast::DepthwiseArgs d;
    d.x = x;
    d.x_image_stride = l.in.pixels() * f.cout_s;
    d.h = l.in.height;
    d.w = l.in.width;
    d.cs = f.cout_s;
    d.weight = f.weight.data();
    d.bias = f.bias.data();
    d.k = l.conv.kernel;
    d.stride = l.conv.stride;
    d.pad_top = l.conv.pad_top;
    d.pad_left = l.conv.pad_left;
    d.act = f.act;
    d.y = y;
    d.ho = l.out.height;
    d.wo = l.out.width;
    const size_t i = size_t(&f - layers.data());
    const bool squeeze = i + 1 < layers.size() && layers[i + 1].layer->kind == LayerKind::SqueezeExcite;
    d.row_sums = squeeze ? sums(im) : nullptr;
    return d;
}

void CpuSession::Impl::depthwise(const FoldedLayer& f, const float* x, float* y, const Images& im) {
    const cpu_fast::DepthwiseArgs d = depthwise_args(f, x, y, im);
    // Tasks of a few rows each, ~8 per thread over the images; small maps (the late stages at a
    // small batch) are split over channels too.
    const int n = im.count;
    const int64_t want = 8 * int64_t(workers(im));
    const int rows_per_task = int(std::max<int64_t>(1, int64_t(n) * d.ho / want));
    const int tasks_per_image = (d.ho + rows_per_task - 1) / rows_per_task;
    const int vw = kernels.vector_width, vectors = d.cs / vw;
    const int chunks =
        int(std::clamp<int64_t>(want / (int64_t(n) * tasks_per_image), 1, std::max(1, vectors / 4)));
    const int chunk_vectors = (vectors + chunks - 1) / chunks;
    const int n_chunks = (vectors + chunk_vectors - 1) / chunk_vectors;
    for_tasks(im, int64_t(n) * tasks_per_image * n_chunks, [&](int64_t task, int) {
        const int chunk = int(task % n_chunks);
        const int64_t rows_task = task / n_chunks;
        const int image = int(rows_task / tasks_per_image);
        const int oy0 = int(rows_task % tasks_per_image) * rows_per_task;
        const int c0 = chunk * chunk_vectors * vw, c1 = std::min(d.cs, c0 + chunk_vectors * vw);
        kernels.depthwise(d, image, oy0, std::min(d.ho, oy0 + rows_per_task), c0, c1);
    });
}

// An expand whose output is larger than a core's cache runs with the depthwise after it: each
// task walks a range of the depthwise's output rows in bands, computing the expanded input rows
// a band needs into the thread's band buffer (rows shared with the previous band are moved up,
// not recomputed) and running the depthwise on them while they are in cache. The expanded
// tensor is never written whole. Without a squeeze-excite (Lite), the project runs on the
// band's depthwise rows too, while they are in cache. A smaller expand runs with its depthwise
// by channel chunks instead (expand_depthwise_channels).
void CpuSession::Impl::plan_fusion(int64_t min_bytes) {
    constexpr size_t kBandBytes = 384 * 1024; // the band buffer: well inside a 1-2 MB L2
    fused.assign(layers.size(), 0);
    by_channels.assign(layers.size(), 0);
    band_rows.assign(layers.size(), 0);
    for (size_t i = 0; i + 1 < layers.size(); ++i) {
        const FoldedLayer& e = layers[i];
        const FoldedLayer& d = layers[i + 1];
        if (e.layer->kind != LayerKind::Expand || d.layer->kind != LayerKind::Depthwise ||
            d.layer->input != int(i) || e.cout_s != d.cout_s)
            continue;
        if (min_bytes < 0) continue;
        const size_t row_bytes = sizeof(float) * size_t(d.layer->in.width) * d.cout_s;
        if (int64_t(row_bytes) * d.layer->in.height <= min_bytes) {
            by_channels[i] = 1;
            continue;
        }
        const int k = d.layer->conv.kernel, s = d.layer->conv.stride;
        const int fit = int(kBandBytes / row_bytes); // input rows the buffer should hold
        const int rows = std::max(1, (fit - (k - s)) / s);
        const bool project = i + 2 < layers.size() && layers[i + 2].layer->kind == LayerKind::Project &&
                             layers[i + 2].layer->input == int(i + 1);
        fused[i] = project ? 2 : 1;
        band_rows[i] = rows;
        band_floats = std::max(band_floats, size_t(rows * s + k) * d.layer->in.width * d.cout_s);
    }
}

void CpuSession::Impl::expand_depthwise(const FoldedLayer& e, const FoldedLayer& dwf, const Images& im) {
    const Layer& ld = *dwf.layer;
    const FoldedLayer* project = fused[size_t(&e - layers.data())] == 2 ? &dwf + 1 : nullptr;
    const int h = ld.in.height, w = ld.in.width, k = ld.conv.kernel, s = ld.conv.stride;
    const int cs = dwf.cout_s;
    const int64_t row_floats = int64_t(w) * cs;
    const int band = band_rows[size_t(&e - layers.data())];
    // Each image's output rows in as many ranges as it takes to give every thread work (each
    // range recomputes the k - s rows it shares with the one before).
    const int n = im.count;
    const int ranges = int(std::clamp<int64_t>((workers(im) + n - 1) / n, 1, ld.out.height));
    const int range_rows = (ld.out.height + ranges - 1) / ranges;
    cpu_fast::DepthwiseArgs d = depthwise_args(dwf, nullptr, slot(dwf.out_slot, im), im);
    d.x_image_stride = 0;
    const float* input = slot(e.in_slot, im);
    for_tasks(im, int64_t(n) * ranges, [&](int64_t task, int thread) {
        const int image = int(task / ranges);
        const int begin = int(task % ranges) * range_rows, end = std::min(ld.out.height, begin + range_rows);
        float* buffer = bands.data() + size_t(thread) * band_floats;
        cpu_fast::DepthwiseArgs db = d;
        db.x = buffer;
        int held_lo = 0, held_hi = 0; // expanded input rows in the buffer: [held_lo, held_hi)
        for (int oy0 = begin; oy0 < end; oy0 += band) {
            const int oy1 = std::min(end, oy0 + band);
            const int lo = std::clamp(oy0 * s - ld.conv.pad_top, 0, h);
            const int hi = std::clamp((oy1 - 1) * s - ld.conv.pad_top + k, 0, h);
            if (lo >= held_hi || lo < held_lo) {
                held_lo = held_hi = lo;
            } else if (lo > held_lo) {
                std::memmove(buffer, buffer + (lo - held_lo) * row_floats,
                             sizeof(float) * size_t((held_hi - lo) * row_floats));
                held_lo = lo;
            }
            if (hi > held_hi) { // expand rows [held_hi, hi) of the image into the buffer
                cpu_fast::GemmArgs g;
                g.a = input + (int64_t(image) * h + held_hi) * w * e.cin_s;
                g.lda = e.cin_s;
                g.k = e.cin;
                g.n = e.cout_s;
                g.m = int64_t(hi - held_hi) * w;
                g.b_packed = e.weight.data();
                g.bias = e.bias.data();
                g.act = e.act;
                g.c = buffer + (held_hi - held_lo) * row_floats;
                g.ldc = cs;
                gemm_rows(g, thread);
                held_hi = hi;
            }
            db.x_row0 = held_lo;
            kernels.depthwise(db, image, oy0, oy1, 0, cs);
            if (project) { // the band's depthwise rows, still in cache, through the project
                const FoldedLayer& p = *project;
                const int64_t row0 = (int64_t(image) * ld.out.height + oy0) * ld.out.width;
                cpu_fast::GemmArgs g;
                g.a = slot(dwf.out_slot, im) + row0 * p.cin_s;
                g.lda = p.cin_s;
                g.k = p.cin;
                g.n = p.cout_s;
                g.m = int64_t(oy1 - oy0) * ld.out.width;
                g.b_packed = p.weight.data();
                g.bias = p.bias.data();
                g.act = p.act;
                g.c = slot(p.out_slot, im) + row0 * p.cout_s;
                g.ldc = p.cout_s;
                if (p.residual_slot >= 0) {
                    g.residual = slot(p.residual_slot, im) + row0 * p.cout_s;
                    g.ld_residual = p.cout_s;
                }
                gemm_rows(g, thread);
            }
        }
    });
}

// An expand too small to band runs with its depthwise per image and chunk of channels: a task
// expands its channels for every pixel of the image and runs the depthwise on them while they
// are in its core's cache. Between the two there is no barrier, and the expanded tensor (the
// block's largest) is read by the core that wrote it; with the tasks split by pixels instead,
// half of it would cross to the other core.
void CpuSession::Impl::expand_depthwise_channels(const FoldedLayer& e, const FoldedLayer& dwf,
                                                 const Images& im) {
    const int nr = kernels.nr, n = im.count;
    const int panels = (e.cout_s + nr - 1) / nr;
    const int64_t want = 4 * int64_t(workers(im));
    const int chunks = int(std::clamp<int64_t>((want + n - 1) / n, 1, panels));
    const int per_chunk = (panels + chunks - 1) / chunks;
    const int n_chunks = (panels + per_chunk - 1) / per_chunk;
    const int64_t pixels = e.layer->out.pixels();
    cpu_fast::GemmArgs g;
    g.a = slot(e.in_slot, im);
    g.lda = e.cin_s;
    g.k = e.cin;
    g.n = e.cout_s;
    g.m = int64_t(n) * pixels;
    g.b_packed = e.weight.data();
    g.bias = e.bias.data();
    g.act = e.act;
    g.c = slot(e.out_slot, im);
    g.ldc = e.cout_s;
    const cpu_fast::DepthwiseArgs d = depthwise_args(dwf, g.c, slot(dwf.out_slot, im), im);
    for_tasks(im, int64_t(n) * n_chunks, [&](int64_t task, int thread) {
        const int image = int(task / n_chunks);
        const int p0 = int(task % n_chunks) * per_chunk, p1 = std::min(panels, p0 + per_chunk);
        for (int64_t m0 = image * pixels; m0 < (image + 1) * pixels; m0 += cpu_fast::kGemmMC)
            kernels.gemm(g, m0, std::min((image + 1) * pixels, m0 + cpu_fast::kGemmMC), p0, p1,
                         gemm_scratch(thread));
        kernels.depthwise(d, image, 0, d.ho, p0 * nr, std::min(d.cs, p1 * nr));
    });
}

// gate[image] = sigmoid(expand(act(reduce(mean of the depthwise output)))), from the row sums
// the depthwise kernel left.
void CpuSession::Impl::squeeze_excite(const FoldedLayer& f, const Images& im) {
    const Layer& l = *f.layer;
    cpu_fast::SqueezeExciteArgs a;
    a.row_sums = sums(im);
    a.rows = l.in.height;
    a.cs = f.cin_s;
    a.c = f.cin;
    a.r = f.reduced;
    a.rs = f.reduced_s;
    a.inv_pixels = 1.0f / float(l.in.pixels());
    a.reduce = f.se_reduce.data();
    a.reduce_bias = f.se_reduce_bias.data();
    a.expand = f.se_expand.data();
    a.expand_bias = f.se_expand_bias.data();
    a.act = f.act;
    a.gate = gates(im);
    for_tasks(im, im.count, [&](int64_t task, int thread) {
        kernels.squeeze_excite(a, int(task), se_scratch.data() + size_t(thread) * se_scratch_floats);
    });
}

// The stem, a few output rows per task: their 3x3 patches gathered from the NCHW input into the
// thread's rows ([pixel][(c * k + ky) * k + kx], PyTorch's weight order), then the GEMM on them
// while they are in cache.
void CpuSession::Impl::stem(const FoldedLayer& f, const float* input, const Images& im) {
    const Layer& l = *f.layer;
    const int h = l.in.height, w = l.in.width, ho = l.out.height, wo = l.out.width;
    const int k = l.conv.kernel, s = l.conv.stride, kk = 3 * k * k;
    const int rows_per_task = stem_rows_per_task(wo);
    const int tasks_per_image = (ho + rows_per_task - 1) / rows_per_task;
    // Output columns whose taps are all inside the row: [lo, hi).
    const int lo = std::min(wo, (l.conv.pad_left + s - 1) / s);
    const int hi = std::max(lo, std::min(wo, (w - k + l.conv.pad_left) / s + 1));
    for_tasks(im, int64_t(im.count) * tasks_per_image, [&](int64_t task, int thread) {
        const int image = int(task / tasks_per_image);
        const int oy0 = int(task % tasks_per_image) * rows_per_task, oy1 = std::min(ho, oy0 + rows_per_task);
        const float* x = input + size_t(image) * 3 * h * w;
        float* patches = im2col.data() + size_t(thread) * im2col_floats;
        float* row = patches;
        for (int oy = oy0; oy < oy1; ++oy) {
            // The k input rows of each channel this output row reads; null: outside the image.
            const float* rows[3][7];
            for (int c = 0; c < 3; ++c)
                for (int ky = 0; ky < k; ++ky) {
                    const int iy = oy * s - l.conv.pad_top + ky;
                    rows[c][ky] = iy >= 0 && iy < h ? x + (size_t(c) * h + iy) * w : nullptr;
                }
            for (int ox = 0; ox < wo; ++ox, row += kk) {
                const int ix0 = ox * s - l.conv.pad_left;
                if (k == 3 && ox >= lo && ox < hi) { // the common case, unrolled
                    for (int c = 0; c < 3; ++c)
                        for (int ky = 0; ky < 3; ++ky) {
                            float* dst = row + (c * 3 + ky) * 3;
                            const float* src = rows[c][ky];
                            dst[0] = src ? src[ix0] : 0.0f;
                            dst[1] = src ? src[ix0 + 1] : 0.0f;
                            dst[2] = src ? src[ix0 + 2] : 0.0f;
                        }
                    continue;
                }
                for (int c = 0; c < 3; ++c)
                    for (int ky = 0; ky < k; ++ky)
                        for (int kx = 0; kx < k; ++kx) {
                            const int ix = ix0 + kx;
                            row[(c * k + ky) * k + kx] =
                                rows[c][ky] && ix >= 0 && ix < w ? rows[c][ky][ix] : 0.0f;
                        }
            }
        }
        cpu_fast::GemmArgs g;
        g.a = patches;
        g.lda = g.k = kk;
        g.m = int64_t(oy1 - oy0) * wo;
        g.n = f.cout_s;
        g.b_packed = f.weight.data();
        g.bias = f.bias.data();
        g.act = f.act;
        g.c = slot(f.out_slot, im) + (int64_t(image) * ho + oy0) * wo * f.cout_s;
        g.ldc = f.cout_s;
        gemm_rows(g, thread);
    });
}

void CpuSession::Impl::pool_mean(const FoldedLayer& f, const float* x, float* y, const Images& im) {
    const Layer& l = *f.layer;
    const int cs = f.cin_s;
    const int64_t pixels = l.in.pixels();
    for_tasks(im, im.count, [&](int64_t task, int) {
        const int64_t image = task;
        float* out = y + size_t(image) * cs;
        std::fill(out, out + cs, 0.0f);
        const float* in = x + size_t(image) * pixels * cs;
        for (int64_t p = 0; p < pixels; ++p)
            for (int c = 0; c < cs; ++c) out[c] += in[p * cs + c];
        const float inv = 1.0f / float(pixels);
        for (int c = 0; c < cs; ++c) out[c] *= inv;
    });
}

void CpuSession::Impl::run_layer(const FoldedLayer& f, const float* input, const Images& im) {
    const Layer& l = *f.layer;
    cpu_fast::GemmArgs g;
    g.m = int64_t(im.count) * l.out.pixels();
    g.n = f.cout_s;
    g.b_packed = f.weight.data();
    g.bias = f.bias.data();
    g.act = f.act;
    g.c = f.out_slot >= 0 ? slot(f.out_slot, im) : nullptr;
    g.ldc = f.cout_s;
    switch (l.kind) {
    case LayerKind::Stem:
        return stem(f, input, im);
    case LayerKind::Project:
        if (f.residual_slot >= 0) {
            g.residual = slot(f.residual_slot, im);
            g.ld_residual = f.cout_s;
        }
        if (layers[size_t(l.input)].layer->kind == LayerKind::SqueezeExcite) {
            g.gate = gates(im);
            g.rows_per_image = l.in.pixels();
            g.ld_gate = f.cin_s;
        }
        [[fallthrough]];
    case LayerKind::Expand:
    case LayerKind::Head:
    case LayerKind::Classifier: // one row per image
        g.a = slot(f.in_slot, im);
        g.lda = f.cin_s;
        g.k = f.cin;
        return gemm(g, l.out.pixels(), im);
    case LayerKind::Depthwise:
        return depthwise(f, slot(f.in_slot, im), slot(f.out_slot, im), im);
    case LayerKind::SqueezeExcite:
        return squeeze_excite(f, im);
    case LayerKind::Pool:
        return pool_mean(f, slot(f.in_slot, im), slot(f.out_slot, im), im);
    case LayerKind::Dropout:
        return;
    }
}

// The network over im's images: input [images, 3, h, w] and logits [images, classes] of the
// whole batch.
void CpuSession::Impl::run_layers(const float* input, float* logits, const Images& im,
                                  std::vector<double>* layer_seconds) {
    using Clock = std::chrono::steady_clock;
    const float* x = input + size_t(im.first) * 3 * plan.height * plan.width;
    for (size_t i = 0; i < layers.size(); ++i) {
        const auto start = layer_seconds ? Clock::now() : Clock::time_point{};
        if (fused[i])
            expand_depthwise(layers[i], layers[i + 1], im);
        else if (by_channels[i])
            expand_depthwise_channels(layers[i], layers[i + 1], im);
        else
            run_layer(layers[i], x, im);
        if (layer_seconds) (*layer_seconds)[i] += std::chrono::duration<double>(Clock::now() - start).count();
        i += size_t(fused[i] + by_channels[i]); // the layers that ran with it
    }
    const FoldedLayer& last = layers.back();
    const float* out = slot(last.out_slot, im);
    for (int image = 0; image < im.count; ++image)
        std::copy(out + size_t(image) * last.cout_s, out + size_t(image) * last.cout_s + num_classes,
                  logits + size_t(im.first + image) * num_classes);
}

// At least one image per thread: the images in as many groups as threads, each group walking
// the whole network on its own core (no barrier between layers, every tensor in the cache of
// the core that wrote it); the images left over (n not a multiple of the threads) after them
// with every layer spread over the pool. Per-layer timing (profile) always spreads.
void CpuSession::Impl::forward(const float* input, int n, float* logits, std::vector<double>* layer_seconds) {
    const cpu_fast::FlushDenormals flush; // the caller's mode comes back on return
    const int groups = pool.size();
    const int per_group = layer_seconds ? 0 : n / groups;
    if (groups > 1 && per_group > 0)
        pool.parallel_for(groups, [&](int64_t group, int thread) {
            run_layers(input, logits, Images{int(group) * per_group, per_group, thread, int(group)}, nullptr);
        });
    const int done = groups > 1 ? groups * per_group : 0;
    if (n > done) run_layers(input, logits, Images{done, n - done, -1, 0}, layer_seconds);
}

CpuSession::CpuSession(const Model& model, int batch, int height, int width,
                       const CpuSessionOptions& options) {
    EFFNET_CHECK(options.threads >= 0 && options.threads <= 1024,
                 "CpuSession: threads must be 0 (all CPUs) or 1..1024, got " +
                     std::to_string(options.threads));
    impl_ = std::make_unique<Impl>(model, batch, height, width, options);
    impl_->build(model);
}

CpuSession::~CpuSession() = default;
CpuSession::CpuSession(CpuSession&&) noexcept = default;
CpuSession& CpuSession::operator=(CpuSession&&) noexcept = default;

void CpuSession::run(const float* input, float* logits, int n) {
    Impl& m = *impl_;
    if (n == 0) n = m.plan.batch;
    EFFNET_CHECK(n >= 1 && n <= m.plan.batch, "CpuSession::run: " + std::to_string(n) +
                                                  " images for a session of batch " +
                                                  std::to_string(m.plan.batch));
    EFFNET_CHECK(input && logits, "CpuSession::run: null input or logits pointer");
    m.forward(input, n, logits, nullptr);
}

std::vector<CpuLayerProfile> CpuSession::profile(int reps) {
    Impl& m = *impl_;
    EFFNET_CHECK(reps >= 1, "CpuSession::profile: reps must be >= 1");
    std::vector<float> logits(size_t(m.plan.batch) * m.num_classes);
    std::vector<double> seconds(m.layers.size(), 0.0);
    // A fixed input in [-2, 2): the times do not depend on the values (no denormals arise).
    std::vector<float> input(size_t(m.plan.batch) * 3 * m.plan.height * m.plan.width);
    uint32_t state = 12345;
    for (float& v : input) {
        state = state * 1664525u + 1013904223u;
        v = float(state >> 8) / float(1u << 24) * 4.0f - 2.0f;
    }
    m.forward(input.data(), m.plan.batch, logits.data(), nullptr); // warm up
    for (int r = 0; r < reps; ++r) m.forward(input.data(), m.plan.batch, logits.data(), &seconds);
    std::vector<CpuLayerProfile> out;
    for (size_t i = 0; i < m.layers.size(); ++i) {
        const FoldedLayer& f = m.layers[i];
        out.push_back(
            {f.layer->name, f.layer->kind, 1e3 * seconds[i] / reps, f.flops_per_image * m.plan.batch});
    }
    // A fused expand's entry holds the time and flops of the layers that ran with it; theirs are
    // empty and name it.
    for (size_t i = 0; i < m.layers.size(); ++i) {
        const int with = m.fused[i] + m.by_channels[i];
        if (with) out[i].name += with == 2 ? "+dw+project" : "+dw";
        for (int j = 1; j <= with; ++j) {
            out[i].flops += out[i + size_t(j)].flops;
            out[i + size_t(j)].flops = 0;
            out[i + size_t(j)].name += " (in " + out[i].name + ")";
        }
    }
    return out;
}

int CpuSession::batch() const {
    return impl_->plan.batch;
}
int CpuSession::height() const {
    return impl_->plan.height;
}
int CpuSession::width() const {
    return impl_->plan.width;
}
int CpuSession::num_classes() const {
    return impl_->num_classes;
}
int CpuSession::threads() const {
    return impl_->pool.size();
}
CpuIsa CpuSession::isa() const {
    return impl_->isa;
}
size_t CpuSession::arena_bytes() const {
    return impl_->arena_bytes;
}
size_t CpuSession::weight_bytes() const {
    return impl_->weight_bytes;
}

std::string CpuSession::description() const {
    return std::string("cpu fast path (") + cpu_isa_name(isa()) + ", " + std::to_string(threads()) +
           (threads() == 1 ? " thread)" : " threads)");
}

} // namespace effnet
