// effnet._effnet: the module, effnet.Error, and the array helpers of common.hpp.
#include <nanobind/stl/string.h>

#include <cstring>

#include "common.hpp"
#include "effnet/config.hpp"
#include "effnet/error.hpp"
#include "effnet/inference.hpp"

namespace effnet::py {

std::string dtype_name(nb::dlpack::dtype dt) {
    std::string kind;
    switch (nb::dlpack::dtype_code(dt.code)) {
    case nb::dlpack::dtype_code::Int:
        kind = "int";
        break;
    case nb::dlpack::dtype_code::UInt:
        kind = "uint";
        break;
    case nb::dlpack::dtype_code::Float:
        kind = "float";
        break;
    case nb::dlpack::dtype_code::Bfloat:
        kind = "bfloat";
        break;
    case nb::dlpack::dtype_code::Complex:
        kind = "complex";
        break;
    case nb::dlpack::dtype_code::Bool:
        return "bool";
    default:
        kind = "dtype(code " + std::to_string(int(dt.code)) + ")";
    }
    return kind + std::to_string(int(dt.bits));
}

std::string device_name(int32_t device_type, int32_t device_id) {
    if (device_type == nb::device::cpu::value) return "cpu";
    if (device_type == nb::device::cuda::value) return "cuda:" + std::to_string(device_id);
    if (device_type == nb::device::cuda_host::value) return "cuda_host";
    if (device_type == nb::device::cuda_managed::value) return "cuda_managed:" + std::to_string(device_id);
    return "device type " + std::to_string(device_type) + ":" + std::to_string(device_id);
}

std::string shape_text(const AnyArray& a) {
    std::string s = "[";
    for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + "]";
}

void check_float32_contiguous(const char* what, int32_t code, int32_t bits, size_t ndim, const int64_t* shape,
                              const int64_t* strides) {
    nb::dlpack::dtype dt{};
    dt.code = uint8_t(code);
    dt.bits = uint8_t(bits);
    dt.lanes = 1;
    if (!(code == int32_t(nb::dlpack::dtype_code::Float) && bits == 32))
        type_error(std::string(what) + " must be float32, got " + dtype_name(dt));
    int64_t expected = 1;
    for (size_t i = ndim; i-- > 0;) {
        if (shape[i] != 1 && strides[i] != expected)
            value_error(std::string(what) +
                        " must be C-contiguous (row-major, no gaps); got strides that are "
                        "not (copy it with numpy.ascontiguousarray or tensor.contiguous())");
        expected *= shape[i];
    }
}

AnyArray as_array(nb::handle obj, const char* what) {
    AnyArray a;
    if (!nb::try_cast(obj, a, false)) {
        if (is_torch_tensor(obj) && nb::hasattr(obj, "requires_grad") &&
            nb::cast<bool>(obj.attr("requires_grad")))
            type_error(std::string(what) + " is a torch tensor that requires grad: pass x.detach()");
        type_error(std::string(what) +
                   " must be an array (NumPy, or an object with __dlpack__ or the buffer "
                   "protocol), got " +
                   nb::cast<std::string>(nb::str(nb::handle(obj.type()).attr("__name__"))));
    }
    return a;
}

OutArray as_out_array(nb::handle obj, const char* what) {
    OutArray a;
    if (!nb::try_cast(obj, a, false))
        type_error(std::string(what) +
                   " must be a writable array (NumPy, or an object with __dlpack__), got " +
                   nb::cast<std::string>(nb::str(nb::handle(obj.type()).attr("__name__"))));
    return a;
}

bool is_torch_tensor(nb::handle obj) {
    nb::handle t = obj.type();
    if (!nb::hasattr(t, "__module__")) return false;
    const std::string mod = nb::cast<std::string>(nb::str(t.attr("__module__")));
    return mod == "torch" || mod.rfind("torch.", 0) == 0 || (mod == "torch.nn.parameter");
}

nb::object host_array(std::vector<float>&& data, const std::vector<size_t>& shape, bool torch_out) {
    auto* owned = new std::vector<float>(std::move(data));
    nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
    if (torch_out)
        return nb::cast(nb::ndarray<nb::pytorch, float>(owned->data(), shape.size(), shape.data(), owner),
                        nb::rv_policy::reference);
    return nb::cast(nb::ndarray<nb::numpy, float>(owned->data(), shape.size(), shape.data(), owner),
                    nb::rv_policy::reference);
}

void value_error(const std::string& message) {
    throw nb::value_error(message.c_str());
}
void type_error(const std::string& message) {
    throw nb::type_error(message.c_str());
}

} // namespace effnet::py

NB_MODULE(_effnet, m) {
    using namespace effnet::py;
    m.doc() = "effnet's C++ engines (CPU reference and CUDA); use the package `effnet`, not this module.";
    m.attr("__version__") = EFFNET_PY_VERSION;
#ifdef EFFNET_WITH_CUDA
    m.attr("built_with_cuda") = true;
#else
    m.attr("built_with_cuda") = false;
#endif
#ifdef EFFNET_PY_FEATURES
    m.attr("has_features") = true;
#else
    m.attr("has_features") = false;
#endif
    nb::exception<effnet::Error>(m, "Error", PyExc_RuntimeError);

    m.def("cuda_available", &effnet::cuda_available,
          "True when this build has CUDA and a usable GPU is present (never raises).");
    m.def("cuda_device_description", &effnet::cuda_device_description,
          "One line describing the GPU, driver and runtime, or why there is none.");

    bind_model(m);
    bind_session(m);
    bind_images(m);
    bind_trainer(m);
}
