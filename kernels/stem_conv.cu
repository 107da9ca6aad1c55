#include "kernels/stem_conv.cuh"

#include <algorithm>
#include <string>

#include "kernels/common.cuh"
#include "libeffnet/cuda/cuda_check.hpp"

namespace effnet::kernels {
namespace {

// One thread per output element (n, oh, ow, co), co fastest so the NHWC stores coalesce and a
// warp's input reads are broadcasts. The folded weights live in shared memory.
template <typename T>
__global__ void __launch_bounds__(256) stem_conv_kernel(StemConvArgs a) {
    extern __shared__ float smem[]; // [k*k*Cin*Cout] weights
    const int weight_count = a.kernel * a.kernel * a.in_channels * a.out_channels;
    for (int i = threadIdx.x; i < weight_count; i += blockDim.x) smem[i] = a.weight[i];
    __syncthreads();

    const int64_t total = int64_t(a.batch) * a.out_height * a.out_width * a.out_channels;
    T* y = static_cast<T*>(a.output);
    for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
         idx += int64_t(gridDim.x) * blockDim.x) {
        const int co = int(idx % a.out_channels);
        int64_t pix = idx / a.out_channels;
        const int ow = int(pix % a.out_width);
        pix /= a.out_width;
        const int oh = int(pix % a.out_height);
        const int n = int(pix / a.out_height);
        float acc = a.bias[co];
        for (int kh = 0; kh < a.kernel; ++kh) {
            const int ih = oh * a.stride - a.pad_top + kh;
            if (ih < 0 || ih >= a.height) continue;
            for (int kw = 0; kw < a.kernel; ++kw) {
                const int iw = ow * a.stride - a.pad_left + kw;
                if (iw < 0 || iw >= a.width) continue;
                const float* w = smem + ((kh * a.kernel + kw) * a.in_channels) * a.out_channels + co;
                for (int ci = 0; ci < a.in_channels; ++ci) {
                    const float xv =
                        __ldg(a.input + ((int64_t(n) * a.in_channels + ci) * a.height + ih) * a.width + iw);
                    acc = fmaf(xv, w[ci * a.out_channels], acc);
                }
            }
        }
        y[idx] = from_float<T>(apply_act(acc, a.act));
    }
}

template <typename T>
void launch_typed(const StemConvArgs& a, cudaStream_t stream) {
    const size_t smem = size_t(a.kernel) * a.kernel * a.in_channels * a.out_channels * sizeof(float);
    const int64_t total = int64_t(a.batch) * a.out_height * a.out_width * a.out_channels;
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535LL * 16);
    stem_conv_kernel<T><<<unsigned(blocks), threads, smem, stream>>>(a);
    EFFNET_LAUNCH_CHECK("stem_conv_kernel");
}

} // namespace

void launch_stem_conv(const StemConvArgs& a, Precision precision, cudaStream_t stream) {
    EFFNET_CHECK(a.input && a.weight && a.bias && a.output, "stem_conv: null pointer argument");
    EFFNET_CHECK(a.batch >= 1 && a.in_channels >= 1 && a.height >= 1 && a.width >= 1 && a.out_channels >= 1 &&
                     a.kernel >= 1 && a.stride >= 1 && a.out_height >= 1 && a.out_width >= 1,
                 "stem_conv: bad shape N=" + std::to_string(a.batch) +
                     " Cin=" + std::to_string(a.in_channels) + " H=" + std::to_string(a.height) +
                     " W=" + std::to_string(a.width) + " Cout=" + std::to_string(a.out_channels));
    const size_t smem = size_t(a.kernel) * a.kernel * a.in_channels * a.out_channels * sizeof(float);
    EFFNET_CHECK(smem <= 48 * 1024, "stem_conv: weights of " + std::to_string(smem) +
                                        " bytes exceed the 48 KiB shared-memory tile");
    switch (precision) {
    case Precision::FP32:
        launch_typed<float>(a, stream);
        break;
    case Precision::FP16:
        launch_typed<__half>(a, stream);
        break;
    case Precision::BF16:
        launch_typed<__nv_bfloat16>(a, stream);
        break;
    }
}

} // namespace effnet::kernels
