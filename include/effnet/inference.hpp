#pragma once
// GPU inference. A session is built once for (model, batch, height, width, precision): it
// folds batch norm, uploads weights, plans every activation into one arena, and captures the
// forward in a CUDA graph. run() allocates nothing and does not synchronise the host unless
// the output is a host buffer.
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "effnet/model.hpp"
#include "effnet/network_plan.hpp"

namespace effnet {

enum class Precision { FP32, FP16, BF16 };
const char* precision_name(Precision p);         // "fp32" | "fp16" | "bf16"
Precision parse_precision(const std::string& s); // throws effnet::Error on unknown names

// True when this build has CUDA and a usable GPU is present (never throws).
bool cuda_available();
// A one-line description of the GPU, driver and runtime, or why there is none.
std::string cuda_device_description();

// Which GEMM runs each 1x1 convolution (expand, project, head).
enum class GemmBackend {
    Auto,        // time both at construction, per layer, and keep the faster
    Handwritten, // effnet's kernel: gate in its prologue, bias/activation/residual in its epilogue
    CublasLt,    // cuBLASLt with its bias epilogue (residual as C); the gate and SiLU/ReLU6 run as
                 // separate in-place passes
};
const char* gemm_backend_name(GemmBackend b);         // "auto" | "handwritten" | "cublaslt"
GemmBackend parse_gemm_backend(const std::string& s); // throws effnet::Error on unknown names

// cuDNN as a candidate for the stem and the depthwise convolutions (grouped convolution, then
// bias + activation and the squeeze sums as separate passes, all timed together).
enum class CudnnCandidate {
    Auto,  // timed against the hand-written kernels when autotune is on; kept where faster
    Off,   // never
    Force, // used wherever cuDNN can run the layer, untimed (tests); elsewhere hand-written
};
const char* cudnn_candidate_name(CudnnCandidate c);         // "off" | "auto" | "force"
CudnnCandidate parse_cudnn_candidate(const std::string& s); // throws effnet::Error on unknown names

struct SessionOptions {
    bool fused_mbconv = false; // true: expand 1x1 + depthwise fused (slower today, see bench/results)
    bool use_cuda_graph = true;
    bool allow_tf32 = false; // fp32 only: TF32 tensor cores for the cuBLASLt 1x1 convolutions
    GemmBackend gemm = GemmBackend::Auto;
    // Time the candidate kernels of each layer while building (the GEMM choice above, and the
    // depthwise schedule: register strips or a shared-memory tile) and keep the fastest. false:
    // the fixed defaults (hand-written GEMMs, register strips); construction is faster.
    bool autotune = true;
    // Whether cuDNN competes for the stem and the depthwise convolutions. A layer cuDNN cannot
    // run (asymmetric padding, an unsupported type) keeps the hand-written kernel. Off by default
    // until its GPU tests (tests/gpu/test_session_cudnn.cpp) have passed on a GPU: it was written
    // without one, and a candidate is chosen by speed alone.
    CudnnCandidate cudnn = CudnnCandidate::Off;
    // The tensor-core fused expand + depthwise (kernels/fused_mbconv_tc.cuh) as a timed candidate
    // for each eligible block (fp16/bf16, autotune on, fused_mbconv off). Off by default until its
    // GPU tests have passed on a GPU, for the same reason.
    bool fused_mbconv_tc = false;
    // Activation memory: a block whose expand output is k times its depthwise output (stride 2:
    // k = 4) runs expand + depthwise in k chunks of the batch when each chunk keeps at least
    // this many images (large batches: less memory, the same speed). 0 or a huge value: never.
    int min_chunk_images = 16;
    int device = 0;
    // Backbone features the session also produces (indices into feature_info: 0..4 = strides
    // 2..32, strictly increasing), read with run_features(). Each costs one NHWC -> NCHW float32
    // conversion kernel in the graph and an arena tensor kept to the end of the forward.
    std::vector<int> features;
    // Stop after the last requested feature: head, pool and classifier are not in the graph (nor
    // their weights on the GPU); run() is refused, run_features() must get logits = nullptr.
    bool features_only = false;
};

// One step of a session's forward as profile_steps() measured it.
struct StepProfile {
    std::string name;   // "blocks.3.expand", "blocks.3.dw", ...
    std::string kernel; // what runs it: "handwritten", "cublaslt", "depthwise", ...
    double ms = 0;      // mean time of one launch of the step, in sequence with the others
};

class InferenceSession {
public:
    // Throws effnet::Error when CUDA is unavailable, the shape/precision is unsupported, or the
    // session would not fit in the GPU's free memory (the message names both figures).
    InferenceSession(const Model& model, int batch, int height, int width, Precision precision,
                     const SessionOptions& options = {});
    ~InferenceSession();
    InferenceSession(InferenceSession&&) noexcept;
    InferenceSession& operator=(InferenceSession&&) noexcept;

    // input: NCHW float32 [batch, 3, height, width]; logits: float32 [batch, num_classes].
    // Host pointers (copies in/out, synchronises) or device pointers (stream-ordered, async).
    // Threads: a session has one stream and one activation arena. Calls may come from any
    // thread one after another; a call made while another thread is inside run() or
    // profile_steps() throws effnet::Error (use one session per thread for concurrency).
    void run(const float* input, float* logits, bool device_pointers = false);
    // The forward with the requested features: features[k] receives options.features[k] as NCHW
    // float32 [batch, C, H, W] (features()[k].shape), converted on the GPU from the session's
    // NHWC storage precision (fp16 / bf16 values widen exactly). logits: [batch, num_classes] or
    // nullptr for none (must be nullptr with features_only). Pointers as for run().
    void run_features(const float* input, float* const* features, float* logits = nullptr,
                      bool device_pointers = false);
    // The requested features (options.features order), shapes for this session's batch and size.
    const std::vector<FeatureInfo>& features() const;
    void synchronize();

    int batch() const;
    int height() const;
    int width() const;
    int num_classes() const;
    Precision precision() const;
    size_t peak_device_memory() const; // bytes: weights + activation arena + workspaces
    size_t activation_arena_bytes() const;
    // Runs the forward eagerly `reps` times with an event between steps (on the input last
    // given to run(), or zeros) and returns each step's mean time. Synchronises; for analysis,
    // not for the hot path.
    std::vector<StepProfile> profile_steps(int reps = 20);
    void* stream() const; // the session's cudaStream_t

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace effnet
