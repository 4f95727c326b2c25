// pybind11 module fastcot._C. It takes only Python ints (data pointers, sizes,
// dtype codes, device index, stream handle) so it links against no framework
// and one build serves every torch version.
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include "fastcot/api.h"

// setup.py generates this header; the fallback keeps hand builds working.
#if __has_include("fastcot_build_info.h")
#include "fastcot_build_info.h"
#else
#define FASTCOT_BUILD_ARCHS ""
#define FASTCOT_BUILD_PTX ""
#define FASTCOT_NVCC_VERSION "unknown"
#define FASTCOT_SOURCE_SHA256 "unknown"
#endif

namespace py = pybind11;

namespace {

using fastcot::Status;

[[noreturn]] void raise_status(const Status& status) {
  if (status.code == Status::Code::kInvalidArgument) throw py::value_error(status.message);
  throw std::runtime_error(status.message);
}

void check_cuda(cudaError_t error, const char* where) {
  if (error != cudaSuccess) raise_status(Status::Cuda(error, where));
}

// The stream belongs to the tensors' device, which need not be the caller's
// current device; launch there and put the caller's device back.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : target_(device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != target_) check_cuda(cudaSetDevice(target_), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ != target_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  int target_;
};

fastcot::DType dtype_from_code(int code, const char* name) {
  switch (code) {
    case static_cast<int>(fastcot::DType::kFloat32):
    case static_cast<int>(fastcot::DType::kFloat16):
    case static_cast<int>(fastcot::DType::kBFloat16):
      return static_cast<fastcot::DType>(code);
  }
  throw py::value_error(std::string(name) + ": unknown dtype code " + std::to_string(code));
}

template <typename T>
T* as_pointer(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

void int4_dequantize(uintptr_t qweight, uintptr_t scales, uintptr_t zeros, uintptr_t perm,
                     uintptr_t out, int64_t n, int64_t k, int64_t group_size, int out_dtype,
                     int scale_dtype, int device, uintptr_t stream) {
  fastcot::Int4DequantParams params;
  params.qweight = as_pointer<const int32_t>(qweight);
  params.scales = as_pointer<const void>(scales);
  params.zeros = as_pointer<const void>(zeros);
  params.perm = as_pointer<const int32_t>(perm);
  params.out = as_pointer<void>(out);
  params.n = n;
  params.k = k;
  params.group_size = group_size;
  params.out_dtype = dtype_from_code(out_dtype, "out_dtype");
  params.scale_dtype = dtype_from_code(scale_dtype, "scale_dtype");

  // Bad arguments are reported as such even on a machine without a GPU, and
  // empty tensors never touch the device.
  const Status checked = fastcot::check_int4_dequantize(params);
  if (!checked.ok()) raise_status(checked);
  if (n == 0 || k == 0) return;

  DeviceGuard guard(device);
  const Status status = fastcot::int4_dequantize(params, as_pointer<CUstream_st>(stream));
  if (!status.ok()) raise_status(status);
}

// Never raises: no driver, no device or a broken driver all mean 0 devices.
int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // so a later cudaGetLastError does not report this query
    return 0;
  }
  return count;
}

// Why device_count() is 0, as CUDA words it; None when the query succeeded.
py::object device_error() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error == cudaSuccess) return py::none();
  cudaGetLastError();
  return py::str(std::string(cudaGetErrorName(error)) + ": " + cudaGetErrorString(error));
}

int cuda_runtime_version() {
  int version = 0;
  check_cuda(cudaRuntimeGetVersion(&version), "cudaRuntimeGetVersion");
  return version;
}

// 0 when no driver is installed, as cudaDriverGetVersion reports it.
int cuda_driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return version;
}

py::dict build_info() {
  py::dict info;
  info["archs"] = FASTCOT_BUILD_ARCHS;
  info["ptx"] = FASTCOT_BUILD_PTX;
  info["cuda_version"] = CUDART_VERSION;
  info["nvcc_version"] = FASTCOT_NVCC_VERSION;
  info["source_sha256"] = FASTCOT_SOURCE_SHA256;
  info["cudart"] = "static";
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastcot's compiled CUDA kernels; use them through fastcot.kernels.cuda.";

  m.attr("DTYPE_FLOAT32") = static_cast<int>(fastcot::DType::kFloat32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(fastcot::DType::kFloat16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(fastcot::DType::kBFloat16);

  m.def("int4_dequantize", &int4_dequantize, py::kw_only(), py::arg("qweight"),
        py::arg("scales"), py::arg("zeros"), py::arg("perm"), py::arg("out"), py::arg("n"),
        py::arg("k"), py::arg("group_size"), py::arg("out_dtype"), py::arg("scale_dtype"),
        py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "Dequantize packed int4 weights [N, K/8] into out [N, K] on `stream`. "
        "Pointers are raw device addresses (0 for absent zeros/perm).");
  m.def("device_count", &device_count,
        "Number of visible CUDA devices; 0 when there is no driver or device.");
  m.def("device_error", &device_error,
        "Why device_count() is 0, as a CUDA error string; None when devices were queried.");
  m.def("cuda_runtime_version", &cuda_runtime_version,
        "Version of the statically linked CUDA runtime, e.g. 13000.");
  m.def("cuda_driver_version", &cuda_driver_version,
        "CUDA version the installed driver supports; 0 without a driver.");
  m.def("build_info", &build_info, "How this extension was compiled (arches, PTX, CUDA).");
}
