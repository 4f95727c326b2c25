// Host-side contract between the launchers (*.cu, built by nvcc) and the
// binding (bindings.cpp, built by the host compiler): plain C++ and the CUDA
// runtime API only, so neither side needs the other's compiler or any framework.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include <cuda_runtime_api.h>

namespace fastcot {

// Element types crossing the boundary as ints. Python reads these values from
// fastcot._C, so this enum is their single definition.
enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

// Launchers report failure by value: the binding turns kInvalidArgument into
// ValueError and kCudaError into RuntimeError carrying cudaGetErrorString.
struct Status {
  enum class Code { kOk, kInvalidArgument, kCudaError };
  Code code = Code::kOk;
  std::string message;

  bool ok() const { return code == Code::kOk; }
  static Status Ok() { return {}; }
  static Status InvalidArgument(std::string why) {
    return {Code::kInvalidArgument, std::move(why)};
  }
  static Status Cuda(cudaError_t error, const std::string& where) {
    return {Code::kCudaError, where + ": " + cudaGetErrorName(error) + ": " +
                                  cudaGetErrorString(error)};
  }
};

// fastcot's packed int4 layout (the contract fastcot.Int4Weight relies on):
//   qweight [N, K/8] int32; nibble j of qweight[n, w] (bits 4j..4j+3) is
//           q[n, 8w + j], unsigned 0..15.
//   scales  [G, N] (G = K / group_size), zeros [G, N] same dtype or null
//           (symmetric: zero point 8), perm [K] int32 or null.
//   out     [N, K]: out[n, perm[j]] = (q[n, j] - zero[j / gs, n]) * scale[j / gs, n],
//           computed in fp32 and rounded once to the output dtype.
struct Int4DequantParams {
  const int32_t* qweight = nullptr;
  const void* scales = nullptr;
  const void* zeros = nullptr;
  const int32_t* perm = nullptr;
  void* out = nullptr;
  int64_t n = 0;
  int64_t k = 0;
  int64_t group_size = 0;  // -1 means one group spanning K
  DType out_dtype = DType::kFloat16;
  DType scale_dtype = DType::kFloat16;
};

// Checks everything the kernel relies on, without touching the device.
Status check_int4_dequantize(const Int4DequantParams& params);

// Runs the check above, then enqueues the dequantization on `stream` of the current device; never
// synchronizes and never allocates, so it is safe inside CUDA-graph capture.
Status int4_dequantize(const Int4DequantParams& params, cudaStream_t stream);

}  // namespace fastcot
