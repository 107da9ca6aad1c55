#pragma once
// Shared helpers of the effnet Python bindings: array validation with clear messages, and
// arrays that own their memory (NumPy on the host, DLPack capsules on the device).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <string>
#include <vector>

#include "effnet/model.hpp"

namespace effnet::py {

namespace nb = nanobind;

// Any array (NumPy, PyTorch, anything with __dlpack__ or the buffer protocol), read-only view.
using AnyArray = nb::ndarray<nb::ro>;
// A writable one (for out=).
using OutArray = nb::ndarray<>;

std::string dtype_name(nb::dlpack::dtype dt);
std::string device_name(int32_t device_type, int32_t device_id);
std::string shape_text(const AnyArray& a);

// Throws TypeError unless `a` is float32, ValueError unless it is C-contiguous.
void check_float32_contiguous(const char* what, int32_t dtype_code, int32_t dtype_bits, size_t ndim,
                              const int64_t* shape, const int64_t* strides);
template <class A>
void check_float32_contiguous(const char* what, const A& a) {
    std::vector<int64_t> shape(a.ndim()), strides(a.ndim());
    for (size_t i = 0; i < a.ndim(); ++i) {
        shape[i] = int64_t(a.shape(i));
        strides[i] = a.stride(i);
    }
    check_float32_contiguous(what, a.dtype().code, a.dtype().bits, a.ndim(), shape.data(), strides.data());
}

// Converts a Python object into an array view; TypeError naming what it got when it is not
// array-like.
AnyArray as_array(nb::handle obj, const char* what);
OutArray as_out_array(nb::handle obj, const char* what);

// True when obj is a torch.Tensor (looked up by type name: torch is never imported here).
bool is_torch_tensor(nb::handle obj);

// A host float32 array of `shape` taking ownership of `data`, as NumPy (or, with torch_out, a
// torch.Tensor sharing the memory).
nb::object host_array(std::vector<float>&& data, const std::vector<size_t>& shape, bool torch_out);

// A C++ exception carrying a Python exception type (ValueError / TypeError) for argument problems.
[[noreturn]] void value_error(const std::string& message);
[[noreturn]] void type_error(const std::string& message);

void bind_model(nb::module_& m);
void bind_session(nb::module_& m);
void bind_images(nb::module_& m);
void bind_trainer(nb::module_& m);

} // namespace effnet::py
