#include "cpu_fast/folded_layer.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "effnet/error.hpp"

namespace effnet::cpu_fast {

int round_up(int x, int multiple) {
    return (x + multiple - 1) / multiple * multiple;
}

namespace {

Act act_of(const Layer& l) {
    if (!l.activation) return Act::None;
    return *l.activation == Activation::SiLU ? Act::SiLU : Act::ReLU6;
}

// Per output channel: gamma / sqrt(var + eps) and beta - mean * that, in double.
void fold_batch_norm(const Model& model, const Layer& l, std::vector<double>& scale,
                     std::vector<double>& shift) {
    const Tensor& gamma = model.param(l.param("bn.weight"));
    const Tensor& beta = model.param(l.param("bn.bias"));
    const Tensor& mean = model.param(l.param("bn.running_mean"));
    const Tensor& var = model.param(l.param("bn.running_var"));
    const size_t n = size_t(gamma.numel());
    scale.resize(n);
    shift.resize(n);
    for (size_t c = 0; c < n; ++c) {
        scale[c] = double(gamma.data[c]) / std::sqrt(double(var.data[c]) + double(model.config.bn_eps));
        shift[c] = double(beta.data[c]) - double(mean.data[c]) * scale[c];
    }
}

// B panels from w(o, k): [ceil(n_s / nr)][k][nr], zero for o >= n.
template <typename W>
void pack_panels(FoldedLayer& f, int k, int n, int n_s, int nr, W w, const std::vector<double>& shift) {
    const int panels = (n_s + nr - 1) / nr;
    f.weight = AlignedFloats(size_t(panels) * k * nr);
    f.bias = AlignedFloats(size_t(panels) * nr);
    for (int p = 0; p < panels; ++p)
        for (int kk = 0; kk < k; ++kk)
            for (int j = 0; j < nr; ++j) {
                const int o = p * nr + j;
                if (o < n) f.weight[(size_t(p) * k + kk) * nr + j] = float(w(o, kk));
            }
    for (int o = 0; o < n; ++o) f.bias[size_t(o)] = float(shift[size_t(o)]);
}

} // namespace

FoldedLayer fold_layer(const Model& model, const Layer& l, int nr, int vw) {
    FoldedLayer f;
    f.layer = &l;
    f.cin = l.in.channels;
    f.cout = l.out.channels;
    f.cin_s = round_up(f.cin, vw);
    f.cout_s = round_up(f.cout, vw);
    f.act = act_of(l);
    std::vector<double> scale, shift;
    const double out_pixels = double(l.out.pixels());
    switch (l.kind) {
    case LayerKind::Stem:
    case LayerKind::Expand:
    case LayerKind::Project:
    case LayerKind::Head: {
        const Tensor& w = model.param(l.param("conv.weight")); // [O, I, kh, kw]
        const int k = int(w.numel() / f.cout);
        fold_batch_norm(model, l, scale, shift);
        pack_panels(
            f, k, f.cout, f.cout_s, nr,
            [&](int o, int kk) { return double(w.data[size_t(o) * k + kk]) * scale[size_t(o)]; }, shift);
        f.flops_per_image = 2.0 * out_pixels * k * f.cout;
        break;
    }
    case LayerKind::Depthwise: {
        const int k = l.conv.kernel;
        EFFNET_CHECK((k == 3 || k == 5 || k == 7) && (l.conv.stride == 1 || l.conv.stride == 2),
                     "fast CPU path: " + l.name + " is a " + std::to_string(k) + "x" + std::to_string(k) +
                         " stride " + std::to_string(l.conv.stride) +
                         " depthwise convolution; it runs kernel sizes 3, 5 and 7 at strides 1 and 2 "
                         "(use the reference engine)");
        const Tensor& w = model.param(l.param("conv.weight")); // [C, 1, k, k]
        fold_batch_norm(model, l, scale, shift);
        f.weight = AlignedFloats(size_t(k) * k * f.cout_s);
        f.bias = AlignedFloats(size_t(f.cout_s));
        for (int c = 0; c < f.cout; ++c) {
            for (int t = 0; t < k * k; ++t)
                f.weight[size_t(t) * f.cout_s + c] =
                    float(double(w.data[size_t(c) * k * k + t]) * scale[size_t(c)]);
            f.bias[size_t(c)] = float(shift[size_t(c)]);
        }
        f.flops_per_image = 2.0 * out_pixels * k * k * f.cout;
        break;
    }
    case LayerKind::SqueezeExcite: {
        const int c = f.cin, cs = f.cin_s, r = l.reduced_channels, rs = round_up(r, vw);
        f.reduced = r;
        f.reduced_s = rs;
        const Tensor& w1 = model.param(l.param("reduce.weight")); // [R, C, 1, 1]
        const Tensor& b1 = model.param(l.param("reduce.bias"));   // [R]
        const Tensor& w2 = model.param(l.param("expand.weight")); // [C, R, 1, 1]
        const Tensor& b2 = model.param(l.param("expand.bias"));   // [C]
        f.se_reduce = AlignedFloats(size_t(c) * rs);
        f.se_reduce_bias = AlignedFloats(size_t(rs));
        f.se_expand = AlignedFloats(size_t(r) * cs);
        f.se_expand_bias = AlignedFloats(size_t(cs));
        for (int j = 0; j < r; ++j) {
            for (int i = 0; i < c; ++i) {
                f.se_reduce[size_t(i) * rs + j] = w1.data[size_t(j) * c + i];
                f.se_expand[size_t(j) * cs + i] = w2.data[size_t(i) * r + j];
            }
            f.se_reduce_bias[size_t(j)] = b1.data[size_t(j)];
        }
        for (int i = 0; i < c; ++i) f.se_expand_bias[size_t(i)] = b2.data[size_t(i)];
        f.flops_per_image = 4.0 * c * r + double(l.in.pixels()) * c;
        break;
    }
    case LayerKind::Classifier: {
        const Tensor& w = model.param(l.param("weight")); // [classes, F]
        const Tensor& b = model.param(l.param("bias"));
        shift.assign(b.data.begin(), b.data.end());
        pack_panels(
            f, f.cin, f.cout, f.cout_s, nr, [&](int o, int kk) { return w.data[size_t(o) * f.cin + kk]; },
            shift);
        f.flops_per_image = 2.0 * f.cin * f.cout;
        break;
    }
    case LayerKind::Pool:
        f.flops_per_image = double(l.in.pixels()) * f.cin;
        break;
    case LayerKind::Dropout:
        break;
    }
    return f;
}

} // namespace effnet::cpu_fast
