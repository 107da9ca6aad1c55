#pragma once
// One layer of the network plan as the fast CPU path runs it: batch norm folded into the
// convolution (w' = w * gamma / sqrt(var + eps), b' = beta - mean * gamma / sqrt(var + eps)),
// the weights laid out for its kernel, and its place in the arena.
#include <cstdint>

#include "cpu_fast/aligned_buffer.hpp"
#include "cpu_fast/kernels.hpp"
#include "effnet/model.hpp"
#include "effnet/network_plan.hpp"

namespace effnet::cpu_fast {

struct FoldedLayer {
    const Layer* layer = nullptr;
    int cin = 0, cout = 0;     // real channels (classifier: features in, classes out)
    int cin_s = 0, cout_s = 0; // channel strides in the arena (a multiple of the vector width)
    Act act = Act::None;
    // Stem, Expand, Project, Head, Classifier: B panels [ceil(cout_s / nr)][K][nr] (K = cin, or
    // 27 for the stem: (channel, ky, kx) as PyTorch orders them) and bias [panels * nr].
    // Depthwise: weight [k * k][cout_s], bias [cout_s]. Zero beyond the real channels.
    AlignedFloats weight, bias;
    // SqueezeExcite: reduce [C][Rs] (transposed), reduce bias [Rs], expand [R][cin_s], expand
    // bias [cin_s]; Rs = R padded to the vector width, zeros beyond the real sizes.
    int reduced = 0, reduced_s = 0;
    AlignedFloats se_reduce, se_reduce_bias, se_expand, se_expand_bias;
    // Arena slots of the layer's input, output and residual (-1: none). Squeeze-excite and
    // dropout write no tensor: their output is their input's slot (the gate goes with it).
    int in_slot = -1, out_slot = -1, residual_slot = -1;
    double flops_per_image = 0; // multiply-adds x 2
};

// Folds and lays out `layer`'s parameters for a kernel table of GEMM panel width nr and vector
// width vw. Throws effnet::Error for a configuration the fast path does not run (a depthwise
// kernel size other than 3, 5, 7 or a stride other than 1, 2).
FoldedLayer fold_layer(const Model& model, const Layer& layer, int nr, int vw);

int round_up(int x, int multiple);

} // namespace effnet::cpu_fast
