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

fastcot::DType dtype_from_code(int code, const char* name, bool allow_fp8 = false) {
  switch (code) {
    case static_cast<int>(fastcot::DType::kFloat32):
    case static_cast<int>(fastcot::DType::kFloat16):
    case static_cast<int>(fastcot::DType::kBFloat16):
      return static_cast<fastcot::DType>(code);
    case static_cast<int>(fastcot::DType::kFloat8E4M3):
      if (allow_fp8) return static_cast<fastcot::DType>(code);
      break;
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

void int4_gemv(uintptr_t x, uintptr_t qweight, uintptr_t scales, uintptr_t zeros, uintptr_t bias,
               uintptr_t out, int64_t m, int64_t n, int64_t k, int64_t group_size, int64_t stride_xm,
               int64_t stride_om, int x_dtype, int scale_dtype, int bias_dtype, int device,
               uintptr_t stream) {
  fastcot::Int4GemvParams params;
  params.x = as_pointer<const void>(x);
  params.qweight = as_pointer<const int32_t>(qweight);
  params.scales = as_pointer<const void>(scales);
  params.zeros = as_pointer<const void>(zeros);
  params.bias = as_pointer<const void>(bias);
  params.out = as_pointer<void>(out);
  params.m = m;
  params.n = n;
  params.k = k;
  params.group_size = group_size;
  params.stride_xm = stride_xm;
  params.stride_om = stride_om;
  params.x_dtype = dtype_from_code(x_dtype, "x_dtype");
  params.scale_dtype = dtype_from_code(scale_dtype, "scale_dtype");
  params.bias_dtype = dtype_from_code(bias_dtype, "bias_dtype");

  const Status checked = fastcot::check_int4_gemv(params);
  if (!checked.ok()) raise_status(checked);
  if (m == 0 || n == 0) return;

  DeviceGuard guard(device);
  const Status status = fastcot::int4_gemv(params, as_pointer<CUstream_st>(stream));
  if (!status.ok()) raise_status(status);
}

void paged_decode_attention(uintptr_t q, uintptr_t k_cache, uintptr_t v_cache, uintptr_t block_tables,
                            uintptr_t seq_lens, uintptr_t out, uintptr_t part_out, uintptr_t part_lse,
                            int64_t batch, int64_t q_heads, int64_t num_kv_heads, int64_t head_dim,
                            int64_t num_blocks, int64_t block_size, int64_t num_splits, int64_t stride_q_b,
                            int64_t stride_q_h, int64_t stride_out_b, int64_t stride_out_h,
                            int64_t stride_table_b, double qk_scale, double v_scale, int q_dtype,
                            int cache_dtype, int device, uintptr_t stream) {
  fastcot::PagedDecodeParams params;
  params.q = as_pointer<const void>(q);
  params.k_cache = as_pointer<const void>(k_cache);
  params.v_cache = as_pointer<const void>(v_cache);
  params.block_tables = as_pointer<const int32_t>(block_tables);
  params.seq_lens = as_pointer<const int32_t>(seq_lens);
  params.out = as_pointer<void>(out);
  params.part_out = as_pointer<float>(part_out);
  params.part_lse = as_pointer<float>(part_lse);
  params.batch = batch;
  params.q_heads = q_heads;
  params.num_kv_heads = num_kv_heads;
  params.head_dim = head_dim;
  params.num_blocks = num_blocks;
  params.block_size = block_size;
  params.num_splits = num_splits;
  params.stride_q_b = stride_q_b;
  params.stride_q_h = stride_q_h;
  params.stride_out_b = stride_out_b;
  params.stride_out_h = stride_out_h;
  params.stride_table_b = stride_table_b;
  params.qk_scale = static_cast<float>(qk_scale);
  params.v_scale = static_cast<float>(v_scale);
  params.q_dtype = dtype_from_code(q_dtype, "q_dtype");
  params.cache_dtype = dtype_from_code(cache_dtype, "cache_dtype", /*allow_fp8=*/true);

  const Status checked = fastcot::check_paged_decode(params);
  if (!checked.ok()) raise_status(checked);
  if (batch == 0) return;

  DeviceGuard guard(device);
  const Status status = fastcot::paged_decode_attention(params, as_pointer<CUstream_st>(stream));
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
  m.attr("DTYPE_FLOAT8_E4M3") = static_cast<int>(fastcot::DType::kFloat8E4M3);
  m.attr("INT4_GEMV_MAX_M") = fastcot::kInt4GemvMaxM;
  m.attr("PAGED_DECODE_MAX_SPLITS") = fastcot::kPagedDecodeMaxSplits;

  m.def("int4_dequantize", &int4_dequantize, py::kw_only(), py::arg("qweight"),
        py::arg("scales"), py::arg("zeros"), py::arg("perm"), py::arg("out"), py::arg("n"),
        py::arg("k"), py::arg("group_size"), py::arg("out_dtype"), py::arg("scale_dtype"),
        py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "Dequantize packed int4 weights [N, K/8] into out [N, K] on `stream`. "
        "Pointers are raw device addresses (0 for absent zeros/perm).");
  m.def("int4_gemv", &int4_gemv, py::kw_only(), py::arg("x"), py::arg("qweight"), py::arg("scales"),
        py::arg("zeros"), py::arg("bias"), py::arg("out"), py::arg("m"), py::arg("n"), py::arg("k"),
        py::arg("group_size"), py::arg("stride_xm"), py::arg("stride_om"), py::arg("x_dtype"),
        py::arg("scale_dtype"), py::arg("bias_dtype"), py::arg("device"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "out[M, N] = x[M, K] @ W.T (+ bias) for M <= INT4_GEMV_MAX_M, W packed int4 [N, K/8], on "
        "`stream`. Pointers are raw device addresses (0 for absent zeros/bias).");
  m.def("paged_decode_attention", &paged_decode_attention, py::kw_only(), py::arg("q"), py::arg("k_cache"),
        py::arg("v_cache"), py::arg("block_tables"), py::arg("seq_lens"), py::arg("out"), py::arg("part_out"),
        py::arg("part_lse"), py::arg("batch"), py::arg("q_heads"), py::arg("num_kv_heads"),
        py::arg("head_dim"), py::arg("num_blocks"), py::arg("block_size"), py::arg("num_splits"),
        py::arg("stride_q_b"), py::arg("stride_q_h"), py::arg("stride_out_b"), py::arg("stride_out_h"),
        py::arg("stride_table_b"), py::arg("qk_scale"), py::arg("v_scale"), py::arg("q_dtype"),
        py::arg("cache_dtype"), py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "Split-KV paged decode attention into out [B, Hq, D] on `stream` (and the merge when "
        "num_splits > 1, through the caller's part_out/part_lse scratch).");
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
