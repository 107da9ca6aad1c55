// effnet._effnet.Session: inference on the CPU (fp32, any batch and size: the fast path,
// CpuSession, rebuilt when the size changes or the batch grows; features, and engine=
// "reference", on the reference engine cpu::Network) or on the GPU (InferenceSession: fixed batch and size,
// fp32/fp16/bf16), on host arrays (NumPy, or anything with the buffer protocol / DLPack on the CPU) and, on
// the GPU, on device arrays through DLPack without a host copy.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <optional>

#include "common.hpp"
#include "effnet/cpu_engine.hpp"
#include "effnet/cpu_session.hpp"
#include "effnet/diagnose.hpp"
#include "effnet/error.hpp"
#include "effnet/inference.hpp"
#include "effnet/network_plan.hpp"

#ifdef EFFNET_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace effnet::py {

namespace {

#ifdef EFFNET_WITH_CUDA
void cuda_check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw Error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Device memory owned by the array handed to Python (freed when its last user lets go).
struct DeviceBuffer {
    float* ptr = nullptr;
    int device = 0;
};

nb::object device_array(size_t floats, const std::vector<size_t>& shape, int device, bool torch_out,
                        float** data_out) {
    auto* buf = new DeviceBuffer;
    buf->device = device;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess)
        e = cudaMalloc(reinterpret_cast<void**>(&buf->ptr), std::max<size_t>(floats, 1) * sizeof(float));
    if (e != cudaSuccess) {
        delete buf;
        throw Error("cannot allocate " + std::to_string(floats * sizeof(float)) +
                    " bytes on cuda:" + std::to_string(device) + ": " + cudaGetErrorString(e));
    }
    *data_out = buf->ptr;
    nb::capsule owner(buf, [](void* p) noexcept {
        auto* b = static_cast<DeviceBuffer*>(p);
        int prev = 0;
        cudaGetDevice(&prev);
        cudaSetDevice(b->device);
        cudaFree(b->ptr);
        cudaSetDevice(prev);
        delete b;
    });
    if (torch_out)
        return nb::cast(nb::ndarray<nb::pytorch, float, nb::device::cuda>(
                            buf->ptr, shape.size(), shape.data(), owner, nullptr, nb::dtype<float>(),
                            nb::device::cuda::value, device),
                        nb::rv_policy::reference);
    return nb::cast(nb::ndarray<float, nb::device::cuda>(buf->ptr, shape.size(), shape.data(), owner, nullptr,
                                                         nb::dtype<float>(), nb::device::cuda::value, device),
                    nb::rv_policy::reference);
}
#endif

std::vector<size_t> to_sizes(const Shape& s) {
    return std::vector<size_t>(s.begin(), s.end());
}

} // namespace

class Session {
public:
    Session(const Model& model, const std::string& device, const std::string& precision, int batch,
            std::optional<int> height, std::optional<int> width, std::optional<std::vector<int>> features,
            bool features_only, bool autotune, bool cuda_graph, int device_index, const std::string& engine,
            int threads)
        : model_(model) {
        if (engine != "fast" && engine != "reference")
            value_error("engine must be 'fast' or 'reference', got '" + engine + "'");
        if (threads < 0) value_error("threads must be >= 0 (0: every CPU), got " + std::to_string(threads));
        engine_ = engine;
        threads_ = threads;
        if (device != "auto" && device != "cpu" && device != "cuda")
            value_error("device must be 'auto', 'cpu' or 'cuda', got '" + device + "'");
        try {
            precision_ = parse_precision(precision);
        } catch (const Error& e) {
            value_error(e.what());
        }
        if (batch < 1) value_error("batch must be >= 1, got " + std::to_string(batch));
        if (height && *height < 1) value_error("height must be >= 1, got " + std::to_string(*height));
        if (width && *width < 1) value_error("width must be >= 1, got " + std::to_string(*width));
        if (device_index < 0) value_error("device_index must be >= 0");
        cuda_ = device == "cuda" || (device == "auto" && cuda_available());
        if (!cuda_ && precision_ != Precision::FP32)
            value_error(
                std::string("precision '") + precision_name(precision_) +
                "' needs device='cuda' (the CPU engine runs fp32)" +
                (device == "auto" ? "; no usable CUDA device here: " + cuda_device_description() : ""));
        batch_ = batch;
        features_only_ = features_only;
        if (features) features_ = *features;
        if (features_only && features_.empty())
            for (int i = 0; i < 5; ++i) features_.push_back(i);
        if (!features_.empty()) {
#ifdef EFFNET_PY_FEATURES
            check_feature_indices(features_);
#else
            throw Error("this build of effnet has no backbone-feature API");
#endif
        }
        if (cuda_) {
            height_ = height.value_or(model_.config.resolution);
            width_ = width.value_or(model_.config.resolution);
            SessionOptions o;
            o.autotune = autotune;
            o.use_cuda_graph = cuda_graph;
            o.device = device_index;
#ifdef EFFNET_PY_FEATURES
            o.features = features_;
            o.features_only = features_only_;
#endif
            device_index_ = device_index;
            nb::gil_scoped_release release;
            gpu_ = std::make_unique<InferenceSession>(model_, batch_, height_, width_, precision_, o);
        } else {
            height_ = height.value_or(0);
            width_ = width.value_or(0);
            // Validates the config (and, with features, that it has all five strides).
            const int h = height_ ? height_ : model_.config.resolution,
                      w = width_ ? width_ : model_.config.resolution;
            const NetworkPlan plan = make_network_plan(model_.config, 1, h, w);
#ifdef EFFNET_PY_FEATURES
            if (!features_.empty()) feature_info(plan);
#endif
            cpu_ = std::make_unique<cpu::Network>(model_);
        }
    }

    ~Session() {
#ifdef EFFNET_WITH_CUDA
        for (void* ev : events_)
            if (ev) cudaEventDestroy(static_cast<cudaEvent_t>(ev));
#endif
    }

    std::string device() const {
        return cuda_ ? "cuda" : "cpu";
    }
    std::string precision() const {
        return precision_name(precision_);
    }
    int batch() const {
        return batch_;
    }
    std::optional<int> height() const {
        return height_ ? std::optional<int>(height_) : std::nullopt;
    }
    std::optional<int> width() const {
        return width_ ? std::optional<int>(width_) : std::nullopt;
    }
    int num_classes() const {
        return model_.config.num_classes;
    }
    int device_index() const {
        return device_index_;
    }
    std::vector<int> features() const {
        return features_;
    }
    bool features_only() const {
        return features_only_;
    }
    const Model& model() const {
        return model_;
    }
    std::string description() const {
        if (!cuda_) {
            if (engine_ == "reference") return "cpu (fp32, reference engine)";
            if (fast_) return fast_->description();
            return std::string("cpu fast path (") + cpu_isa_name(best_cpu_isa()) + ")";
        }
        return std::string("cuda (") + precision_name(precision_) + ", " + cuda_device_description() + ")";
    }
    std::optional<size_t> peak_device_memory() const {
        return gpu_ ? std::optional<size_t>(gpu_->peak_device_memory()) : std::nullopt;
    }
    void synchronize() {
        if (gpu_) {
            nb::gil_scoped_release release;
            gpu_->synchronize();
        }
    }

    // One dict per requested feature: index, stride, name, shape (for this session's batch and
    // size; a CPU session without a fixed size: for batch 1 at the model's resolution).
    nb::list feature_info_list() const {
        nb::list out;
#ifdef EFFNET_PY_FEATURES
        std::vector<FeatureInfo> infos;
        if (gpu_) {
            infos = gpu_->features();
        } else if (!features_.empty()) {
            const int h = height_ ? height_ : model_.config.resolution,
                      w = width_ ? width_ : model_.config.resolution;
            const std::vector<FeatureInfo> all = feature_info(make_network_plan(model_.config, 1, h, w));
            for (int i : features_) infos.push_back(all.at(size_t(i)));
        }
        for (const FeatureInfo& f : infos) {
            nb::dict d;
            d["index"] = f.index;
            d["stride"] = f.stride;
            d["name"] = f.name;
            d["channels"] = f.shape.channels;
            d["shape"] = nb::make_tuple(f.shape.batch, f.shape.channels, f.shape.height, f.shape.width);
            out.append(d);
        }
#endif
        return out;
    }

    nb::object run(nb::handle x, nb::handle out, nb::handle stream) {
        if (features_only_)
            throw Error(
                "this session was made with features_only=True (no classifier, no logits); use features()");
        return forward(x, out, stream, false, false);
    }

    nb::object run_features(nb::handle x, bool with_logits, nb::handle stream) {
        if (features_.empty())
            value_error(
                "this session computes no features: make it with features=[...] (indices 0..4, strides "
                "2..32) or features_only=True");
        if (with_logits && features_only_)
            value_error("with_logits=True needs a session made without features_only");
        return forward(x, nb::none(), stream, true, with_logits);
    }

private:
    // Validates x and returns its view, [N, 3, H, W] float32 C-contiguous.
    AnyArray input_view(nb::handle x) const {
        AnyArray a = as_array(x, "input");
        if (a.ndim() != 4 || a.shape(1) != size_t(model_.config.in_channels))
            value_error("input must be [N, " + std::to_string(model_.config.in_channels) +
                        ", H, W] (NCHW), got shape " + shape_text(a));
        if (a.shape(0) < 1 || a.shape(2) < 1 || a.shape(3) < 1)
            value_error("input must have N, H, W >= 1, got shape " + shape_text(a));
        check_float32_contiguous("input", a);
        if (cuda_) {
            if (int64_t(a.shape(0)) != batch_ || int64_t(a.shape(2)) != height_ ||
                int64_t(a.shape(3)) != width_)
                value_error("input shape " + shape_text(a) + " does not match the GPU session's [" +
                            std::to_string(batch_) + ", 3, " + std::to_string(height_) + ", " +
                            std::to_string(width_) + "] (a GPU session has a fixed batch and size)");
        } else if ((height_ && int64_t(a.shape(2)) != height_) || (width_ && int64_t(a.shape(3)) != width_)) {
            value_error("input shape " + shape_text(a) + " does not match the session's height " +
                        std::to_string(height_) + " and width " + std::to_string(width_));
        }
        return a;
    }

    nb::object forward(nb::handle x, nb::handle out, nb::handle stream, bool features, bool with_logits) {
        AnyArray a = input_view(x);
        const bool torch_out = is_torch_tensor(x);
        const int dev = a.device_type();
        const int64_t n = int64_t(a.shape(0));
        const int classes = model_.config.num_classes;
        if (dev != nb::device::cpu::value && !(cuda_ && dev == nb::device::cuda::value))
            value_error("device mismatch: the input is on " + device_name(dev, a.device_id()) +
                        ", the session runs on " +
                        (cuda_
                             ? "cuda:" + std::to_string(device_index_) + " (inputs on the CPU or on that GPU)"
                             : std::string("the CPU (use device='cuda' for GPU arrays)")));
        if (!stream.is_none() && dev != nb::device::cuda::value)
            value_error("stream= is for GPU arrays only");

        if (!cuda_) return forward_cpu(a, out, n, classes, torch_out, features, with_logits);
#ifdef EFFNET_WITH_CUDA
        return forward_gpu(a, out, stream, n, classes, torch_out, features, with_logits);
#else
        throw Error("this build of effnet has no CUDA");
#endif
    }

    // out= for logits: float32 [n, classes], C-contiguous, on device `dev` (id `id`).
    OutArray check_out(nb::handle out, int64_t n, int classes, int dev, int id) const {
        OutArray o = as_out_array(out, "out");
        check_float32_contiguous("out", o);
        if (o.ndim() != 2 || int64_t(o.shape(0)) != n || int64_t(o.shape(1)) != classes)
            value_error("out must be [" + std::to_string(n) + ", " + std::to_string(classes) +
                        "], got shape " + shape_text(AnyArray(o)));
        if (o.device_type() != dev || (dev != nb::device::cpu::value && o.device_id() != id))
            value_error("device mismatch: out is on " + device_name(o.device_type(), o.device_id()) +
                        ", the input on " + device_name(dev, id));
        return o;
    }

    void check_finite(const float* input, int64_t n, int h, int w, const float* logits) const {
        const int64_t classes = model_.config.num_classes;
        if (first_non_finite_row(logits, n, classes) < 0) return;
        check_logits_finite(model_, input, {n, 3, h, w}, logits, classes, description(),
                            [](int64_t row) { return "input row " + std::to_string(row); });
    }

    nb::object forward_cpu(const AnyArray& a, nb::handle out, int64_t n, int classes, bool torch_out,
                           bool features, bool with_logits) {
        const int h = int(a.shape(2)), w = int(a.shape(3));
        std::optional<OutArray> o;
        if (!out.is_none()) o = check_out(out, n, classes, nb::device::cpu::value, 0);
        cpu::ForwardResult r;
        // The fast path reads the caller's array in place; the reference engine takes a Tensor.
        const float* x = static_cast<const float*>(a.data());
        Tensor input;
        if (!features && engine_ == "fast") {
            r.logits = Tensor({n, int64_t(classes)});
            nb::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            if (!fast_ || fast_->batch() < n || fast_->height() != h || fast_->width() != w) {
                CpuSessionOptions o;
                o.threads = threads_;
                fast_.reset();
                fast_ = std::make_unique<CpuSession>(model_, int(std::max<int64_t>(n, batch_)), h, w, o);
            }
            fast_->run(x, r.logits.ptr(), int(n));
        } else {
            nb::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            input = Tensor({n, int64_t(a.shape(1)), h, w});
            std::memcpy(input.ptr(), x, sizeof(float) * size_t(input.numel()));
            x = input.ptr();
            cpu::ForwardOptions fo;
#ifdef EFFNET_PY_FEATURES
            if (features) {
                fo.features = features_;
                fo.features_only = features_only_;
            }
#endif
            r = cpu_->forward(input, fo);
        }
        if (!r.logits.empty()) check_finite(x, n, h, w, r.logits.ptr());
        nb::object logits;
        if (!features || with_logits) {
            if (o) {
                std::memcpy(o->data(), r.logits.ptr(), sizeof(float) * size_t(r.logits.numel()));
                logits = nb::borrow(out);
            } else {
                logits = host_array(std::move(r.logits.data), to_sizes(r.logits.shape), torch_out);
            }
        }
        if (!features) return logits;
#ifdef EFFNET_PY_FEATURES
        nb::list maps;
        for (Tensor& t : r.features) maps.append(host_array(std::move(t.data), to_sizes(t.shape), torch_out));
        if (with_logits) return nb::make_tuple(maps, logits);
        return std::move(maps);
#else
        throw Error("this build of effnet has no backbone-feature API");
#endif
    }

#ifdef EFFNET_WITH_CUDA
    cudaEvent_t event(int which) {
        if (!events_[which]) {
            cudaEvent_t e;
            cuda_check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
            events_[which] = e;
        }
        return static_cast<cudaEvent_t>(events_[which]);
    }

    nb::object forward_gpu(const AnyArray& a, nb::handle out, nb::handle stream, int64_t n, int classes,
                           bool torch_out, bool features, bool with_logits) {
        const bool on_device = a.device_type() == nb::device::cuda::value;
        if (on_device && a.device_id() != device_index_)
            value_error("device mismatch: the input is on cuda:" + std::to_string(a.device_id()) +
                        ", the session on cuda:" + std::to_string(device_index_));
        const int dev = on_device ? int(nb::device::cuda::value) : int(nb::device::cpu::value);
        std::optional<OutArray> o;
        if (!out.is_none()) o = check_out(out, n, classes, dev, device_index_);
        const bool want_logits = !features || with_logits;

        // Outputs: host vectors handed to NumPy, or device buffers owned by the returned arrays.
        std::vector<std::vector<float>> host_maps;
        std::vector<nb::object> maps_obj;
        std::vector<float*> map_ptrs;
        std::vector<float> host_logits;
        nb::object logits_obj;
        float* logits_ptr = nullptr;
#ifdef EFFNET_PY_FEATURES
        const std::vector<FeatureInfo>& infos = gpu_->features();
#endif
        if (features) {
#ifdef EFFNET_PY_FEATURES
            for (const FeatureInfo& f : infos) {
                const std::vector<size_t> shape = {size_t(f.shape.batch), size_t(f.shape.channels),
                                                   size_t(f.shape.height), size_t(f.shape.width)};
                if (on_device) {
                    float* p = nullptr;
                    maps_obj.push_back(
                        device_array(size_t(f.shape.numel()), shape, device_index_, torch_out, &p));
                    map_ptrs.push_back(p);
                } else {
                    host_maps.emplace_back(size_t(f.shape.numel()));
                    map_ptrs.push_back(host_maps.back().data());
                }
            }
#endif
        }
        if (want_logits) {
            if (o) {
                logits_ptr = static_cast<float*>(o->data());
                logits_obj = nb::borrow(out);
            } else if (on_device) {
                logits_obj = device_array(size_t(n) * classes, {size_t(n), size_t(classes)}, device_index_,
                                          torch_out, &logits_ptr);
            } else {
                host_logits.resize(size_t(n) * classes);
                logits_ptr = host_logits.data();
            }
        }
        cudaStream_t producer = cudaStreamLegacy;
        if (!stream.is_none()) producer = reinterpret_cast<cudaStream_t>(nb::cast<uintptr_t>(stream));
        {
            nb::gil_scoped_release release;
            std::lock_guard<std::mutex> lock(mutex_);
            const float* in = static_cast<const float*>(a.data());
            cudaStream_t s = static_cast<cudaStream_t>(gpu_->stream());
            if (on_device) {
                // The input was written on the producer's stream (the legacy default stream
                // unless stream= says otherwise): the session's stream waits for it, and the
                // producer's stream waits for the outputs.
                cuda_check(cudaSetDevice(device_index_), "cudaSetDevice");
                cuda_check(cudaEventRecord(event(0), producer), "cudaEventRecord");
                cuda_check(cudaStreamWaitEvent(s, event(0), 0), "cudaStreamWaitEvent");
            }
            if (features) {
#ifdef EFFNET_PY_FEATURES
                gpu_->run_features(in, map_ptrs.data(), logits_ptr, on_device);
#endif
            } else {
                gpu_->run(in, logits_ptr, on_device);
            }
            if (on_device) {
                cuda_check(cudaEventRecord(event(1), s), "cudaEventRecord");
                cuda_check(cudaStreamWaitEvent(producer, event(1), 0), "cudaStreamWaitEvent");
            }
        }
        if (want_logits && !on_device) {
            check_finite(static_cast<const float*>(a.data()), n, height_, width_, logits_ptr);
            if (!o) logits_obj = host_array(std::move(host_logits), {size_t(n), size_t(classes)}, torch_out);
        }
        if (!features) return logits_obj;
        nb::list maps;
#ifdef EFFNET_PY_FEATURES
        for (size_t k = 0; k < infos.size(); ++k) {
            if (on_device) {
                maps.append(maps_obj[k]);
            } else {
                const FeatureInfo& f = infos[k];
                maps.append(host_array(std::move(host_maps[k]),
                                       {size_t(f.shape.batch), size_t(f.shape.channels),
                                        size_t(f.shape.height), size_t(f.shape.width)},
                                       torch_out));
            }
        }
#endif
        if (with_logits) return nb::make_tuple(maps, logits_obj);
        return std::move(maps);
    }
#endif

    Model model_; // the session's own copy (the CPU engine reads it; diagnoses re-run it)
    Precision precision_ = Precision::FP32;
    bool cuda_ = false;
    int batch_ = 1, height_ = 0, width_ = 0, device_index_ = 0;
    std::vector<int> features_;
    bool features_only_ = false;
    std::string engine_ = "fast";
    int threads_ = 0;
    std::unique_ptr<cpu::Network> cpu_;
    std::unique_ptr<CpuSession> fast_; // built at the first forward of each size
    std::unique_ptr<InferenceSession> gpu_;
    std::mutex mutex_; // one forward at a time (Python threads release the GIL while it runs)
    void* events_[2] = {nullptr, nullptr};
};

void bind_session(nb::module_& m) {
    nb::class_<Session>(m, "Session")
        .def(nb::init<const Model&, const std::string&, const std::string&, int, std::optional<int>,
                      std::optional<int>, std::optional<std::vector<int>>, bool, bool, bool, int,
                      const std::string&, int>(),
             nb::arg("model"), nb::arg("device") = "auto", nb::arg("precision") = "fp32",
             nb::arg("batch") = 1, nb::arg("height") = nb::none(), nb::arg("width") = nb::none(),
             nb::arg("features") = nb::none(), nb::arg("features_only") = false, nb::arg("autotune") = true,
             nb::arg("cuda_graph") = true, nb::arg("device_index") = 0, nb::arg("engine") = "fast",
             nb::arg("threads") = 0)
        .def_prop_ro("device", &Session::device, "'cpu' or 'cuda'")
        .def_prop_ro("precision", &Session::precision)
        .def_prop_ro("batch", &Session::batch)
        .def_prop_ro("height", &Session::height, "fixed input height, or None (CPU: any)")
        .def_prop_ro("width", &Session::width, "fixed input width, or None (CPU: any)")
        .def_prop_ro("num_classes", &Session::num_classes)
        .def_prop_ro("device_index", &Session::device_index)
        .def_prop_ro("feature_indices", &Session::features)
        .def_prop_ro("features_only", &Session::features_only)
        .def_prop_ro("feature_info", &Session::feature_info_list,
                     "one dict per requested feature: index, stride, name, channels, shape")
        .def_prop_ro("description", &Session::description)
        .def_prop_ro("peak_device_memory", &Session::peak_device_memory)
        .def_prop_ro("preprocess", [](const Session& s) { return s.model().config.preprocess; })
        .def("synchronize", &Session::synchronize)
        .def("run", &Session::run, nb::arg("x"), nb::arg("out") = nb::none(), nb::arg("stream") = nb::none())
        .def("features", &Session::run_features, nb::arg("x"), nb::arg("with_logits") = false,
             nb::arg("stream") = nb::none());
}

} // namespace effnet::py
