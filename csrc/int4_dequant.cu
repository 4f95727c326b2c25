// Launcher for the int4 dequantization kernel: checks the arguments the
// kernel relies on, dispatches on dtypes and enqueues on the caller's stream.
#include <algorithm>
#include <cstdint>
#include <string>

#include "fastcot/api.h"
#include "fastcot/int4_dequant.cuh"

namespace fastcot {
namespace {

int64_t resolved_group_size(const Int4DequantParams& p) {
  return p.group_size == -1 ? p.k : p.group_size;
}

template <typename OutT, typename ScaleT>
Status launch(const Int4DequantParams& p, int64_t group_size, cudaStream_t stream) {
  const Int4DequantArgs<OutT, ScaleT> args{
      reinterpret_cast<const uint32_t*>(p.qweight),
      static_cast<const ScaleT*>(p.scales),
      static_cast<const ScaleT*>(p.zeros),
      p.perm,
      static_cast<OutT*>(p.out),
      p.n,
      p.k,
      group_size,
      reinterpret_cast<uintptr_t>(p.out) % sizeof(uint4) == 0,
  };
  const int64_t words_per_row = p.k / 8;
  // Narrow rows (small K) would leave most of a 256-thread block idle.
  const int threads = static_cast<int>(
      std::min<int64_t>(kInt4DequantMaxThreads, ceil_div(words_per_row, 32) * 32));
  const dim3 grid(static_cast<unsigned>(ceil_div(words_per_row, threads)),
                  static_cast<unsigned>(std::min(p.n, kMaxGridY)));
  int4_dequantize_kernel<OutT, ScaleT><<<grid, threads, 0, stream>>>(args);
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) return Status::Cuda(error, "int4_dequantize kernel launch");
  return Status::Ok();
}

template <typename OutT>
Status dispatch_scale(const Int4DequantParams& p, int64_t group_size, cudaStream_t stream) {
  switch (p.scale_dtype) {
    case DType::kFloat32:
      return launch<OutT, float>(p, group_size, stream);
    case DType::kFloat16:
      return launch<OutT, __half>(p, group_size, stream);
    case DType::kBFloat16:
      return launch<OutT, __nv_bfloat16>(p, group_size, stream);
    default:
      break;
  }
  return Status::InvalidArgument("int4_dequantize: unknown scale dtype code " +
                                 std::to_string(static_cast<int>(p.scale_dtype)));
}

}  // namespace

Status check_int4_dequantize(const Int4DequantParams& p) {
  if (p.n < 0 || p.k < 0) {
    return Status::InvalidArgument("int4_dequantize: expected N >= 0 and K >= 0, got N=" +
                                   std::to_string(p.n) + ", K=" + std::to_string(p.k));
  }
  if (p.k % 8 != 0) {
    return Status::InvalidArgument(
        "int4_dequantize: K must be a multiple of 8 (8 nibbles per int32 word), got K=" +
        std::to_string(p.k));
  }
  if (p.n == 0 || p.k == 0) return Status::Ok();
  const int64_t group_size = resolved_group_size(p);
  if (group_size <= 0 || group_size % 8 != 0 || p.k % group_size != 0) {
    return Status::InvalidArgument(
        "int4_dequantize: group_size must be -1 or a positive multiple of 8 dividing K=" +
        std::to_string(p.k) + ", got " + std::to_string(p.group_size));
  }
  if (p.qweight == nullptr || p.scales == nullptr || p.out == nullptr) {
    return Status::InvalidArgument("int4_dequantize: qweight, scales and out must be non-null");
  }
  return Status::Ok();
}

Status int4_dequantize(const Int4DequantParams& params, cudaStream_t stream) {
  const Status status = check_int4_dequantize(params);
  if (!status.ok() || params.n == 0 || params.k == 0) return status;

  const int64_t group_size = resolved_group_size(params);
  switch (params.out_dtype) {
    case DType::kFloat32:
      return dispatch_scale<float>(params, group_size, stream);
    case DType::kFloat16:
      return dispatch_scale<__half>(params, group_size, stream);
    case DType::kBFloat16:
      return dispatch_scale<__nv_bfloat16>(params, group_size, stream);
    default:
      break;
  }
  return Status::InvalidArgument("int4_dequantize: unknown output dtype code " +
                                 std::to_string(static_cast<int>(params.out_dtype)));
}

}  // namespace fastcot
