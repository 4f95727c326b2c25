// Launcher for the int4 GEMV: checks what the kernels rely on, picks the tensor-core kernel
// (int4_mma.cuh) where it applies and the SIMT kernel (int4_gemv.cuh) elsewhere, the M tile,
// load width and warps per block, dispatches on the activation dtype and enqueues on the
// caller's stream, with programmatic dependent launch on sm_90+ (fastcot/launch.cuh).
#include <cstdint>
#include <string>

#include "fastcot/api.h"
#include "fastcot/int4_gemv.cuh"
#include "fastcot/int4_mma.cuh"
#include "fastcot/launch.cuh"

namespace fastcot {
namespace {

std::string str(int64_t v) { return std::to_string(v); }

bool is_float_code(DType d) {
  return d == DType::kFloat32 || d == DType::kFloat16 || d == DType::kBFloat16;
}

int64_t element_size(DType d) { return d == DType::kFloat32 ? 4 : 2; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

int64_t resolved_group_size(const Int4GemvParams& p) { return p.group_size == -1 ? p.k : p.group_size; }

// 16-byte weight loads need rows of whole 16-byte units and groups of whole 32-nibble chunks.
bool wide_loads(const Int4GemvParams& p) {
  return p.k % 32 == 0 && resolved_group_size(p) % 32 == 0 && aligned16(p.qweight);
}

template <typename XT, int M_TILE, int VEC>
Status launch(const Int4GemvParams& p, cudaStream_t stream) {
  const Int4GemvArgs args{
      p.x,           reinterpret_cast<const uint32_t*>(p.qweight),
      p.scales,      p.zeros,
      p.bias,        p.out,
      p.m,           p.n,
      p.k,           resolved_group_size(p),
      p.stride_xm,   p.stride_om,
      static_cast<int>(p.scale_dtype), static_cast<int>(p.bias_dtype),
  };
  int device = 0;
  bool pdl = false;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) error = pdl_enabled(device, &pdl);
  if (error != cudaSuccess) return Status::Cuda(error, "int4_gemv: reading the compute capability");
  const dim3 grid(static_cast<unsigned>(ceil_div(p.n, kGemvRows)));
  error = launch_kernel(int4_gemv_kernel<XT, M_TILE, VEC>, grid, kGemvThreads, 0, stream, pdl, args);
  if (error != cudaSuccess) {
    return Status::Cuda(error, pdl ? "int4_gemv kernel launch (PDL)" : "int4_gemv kernel launch");
  }
  return Status::Ok();
}

template <typename XT, int VEC>
Status dispatch_m(const Int4GemvParams& p, cudaStream_t stream) {
  // Tiles of 1, 2, 4, 8, 16 rows: an odd M runs the next tile up with its extra rows masked.
  if (p.m <= 1) return launch<XT, 1, VEC>(p, stream);
  if (p.m <= 2) return launch<XT, 2, VEC>(p, stream);
  if (p.m <= 4) return launch<XT, 4, VEC>(p, stream);
  if (p.m <= 8) return launch<XT, 8, VEC>(p, stream);
  return launch<XT, 16, VEC>(p, stream);
}

// The tensor-core kernel: 16-bit x with scales (and zeros) of its dtype, K and the group
// size multiples of 128 (a chunk never straddles a group), 32-bit group and row indices.
bool mma_applies(const Int4GemvParams& p) {
  const int64_t group_size = resolved_group_size(p);
  return (p.x_dtype == DType::kFloat16 || p.x_dtype == DType::kBFloat16) && p.scale_dtype == p.x_dtype &&
         p.k % kMmaChunk == 0 && group_size % kMmaChunk == 0 && p.k / kMmaChunk < (1 << 16) &&
         (p.k / group_size) * p.n < (int64_t(1) << 31) && aligned16(p.qweight);
}

// Warps per block, each taking every W-th 128-wide chunk of K: the most (up to `max_warps`)
// that keep the grid of `rows`-column blocks in one wave at `resident` threads per SM
// (mma_resident_threads), so small N still has enough loads in flight; never more warps than
// chunks.
int mma_warps(int64_t n, int64_t chunks, int sms, int resident, int rows, int max_warps) {
  const int64_t blocks = ceil_div(n, rows);
  int warps = 4;
  for (int w = max_warps; w >= 2; w /= 2) {
    if (blocks <= int64_t(sms) * (resident / (32 * w))) {
      warps = w;
      break;
    }
  }
  while (warps > 1 && warps > chunks) warps /= 2;
  return warps;
}

template <typename XT, int M_TILE, bool HAS_ZEROS>
Status launch_mma(const Int4GemvParams& p, cudaStream_t stream) {
  int device = 0, sms = 0, max_smem = 0;
  bool pdl = false;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) error = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (error == cudaSuccess) error = pdl_enabled(device, &pdl);
  if (error != cudaSuccess) {
    return Status::Cuda(error, "int4_gemv: reading the SM count, shared memory and compute capability");
  }
  const int64_t chunks = p.k / kMmaChunk;
  const int64_t chunks_per_group = resolved_group_size(p) / kMmaChunk;
  // floor(chunk / d) = umulhi(chunk, ceil(2^32 / d)) for chunk, d < 2^16.
  const uint32_t magic =
      chunks_per_group == 1 ? 0u : static_cast<uint32_t>(((int64_t(1) << 32) + chunks_per_group - 1) / chunks_per_group);
  const Int4MmaArgs args{
      p.x,      reinterpret_cast<const uint4*>(p.qweight),
      p.scales, p.zeros,
      p.bias,   p.out,
      static_cast<int>(p.m), static_cast<int>(p.n),
      static_cast<int>(chunks), magic,
      p.stride_xm, p.stride_om,
      static_cast<int>(p.bias_dtype),
  };
  constexpr int rows = mma_rows<M_TILE>();
  int warps = mma_warps(p.n, chunks, sms, mma_resident_threads<M_TILE>(), rows, mma_max_warps<M_TILE>());
  // Each warp's ring of weight stages: at most 16 warps x 8 KB = 128 KB, within an A100's and
  // an H100's per-block limit; GPUs with less (sm_86, sm_89: 99 KB) get fewer warps. More than
  // the default 48 KB needs the opt-in.
  while (warps > 1 && warps * mma_ring_bytes<M_TILE>() > max_smem) warps /= 2;
  const int smem = warps * mma_ring_bytes<M_TILE>();
  const auto kernel = int4_mma_kernel<XT, M_TILE, HAS_ZEROS>;
  if (smem > 48 * 1024) {
    error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (error != cudaSuccess) return Status::Cuda(error, "int4_gemv (tensor cores): shared memory opt-in");
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(p.n, rows)));
  error = launch_kernel(kernel, grid, warps * 32, smem, stream, pdl, args);
  if (error != cudaSuccess) {
    return Status::Cuda(error, pdl ? "int4_gemv (tensor cores) kernel launch (PDL)"
                                   : "int4_gemv (tensor cores) kernel launch");
  }
  return Status::Ok();
}

template <typename XT, int M_TILE>
Status launch_mma_zeros(const Int4GemvParams& p, cudaStream_t stream) {
  return p.zeros != nullptr ? launch_mma<XT, M_TILE, true>(p, stream) : launch_mma<XT, M_TILE, false>(p, stream);
}

template <typename XT>
Status dispatch_vec(const Int4GemvParams& p, cudaStream_t stream) {
  if constexpr (!std::is_same<XT, float>::value) {
    if (mma_applies(p)) return p.m <= 8 ? launch_mma_zeros<XT, 8>(p, stream) : launch_mma_zeros<XT, 16>(p, stream);
  }
  return wide_loads(p) ? dispatch_m<XT, 4>(p, stream) : dispatch_m<XT, 1>(p, stream);
}

}  // namespace

Status check_int4_gemv(const Int4GemvParams& p) {
  const std::string op = "int4_gemv: ";
  if (p.m < 0 || p.n < 0 || p.k < 0) {
    return Status::InvalidArgument(op + "expected M, N, K >= 0, got M=" + str(p.m) + ", N=" + str(p.n) +
                                   ", K=" + str(p.k));
  }
  if (p.m > kInt4GemvMaxM) {
    return Status::InvalidArgument(op + "serves decode sizes M <= " + str(kInt4GemvMaxM) + ", got M=" +
                                   str(p.m));
  }
  if (p.k % 8 != 0) {
    return Status::InvalidArgument(op + "K must be a multiple of 8 (8 nibbles per int32 word), got K=" +
                                   str(p.k));
  }
  if (!is_float_code(p.x_dtype) || !is_float_code(p.scale_dtype) || !is_float_code(p.bias_dtype)) {
    return Status::InvalidArgument(op + "x, scales and bias must be float32, float16 or bfloat16");
  }
  if (p.m == 0 || p.n == 0) return Status::Ok();
  const int64_t group_size = resolved_group_size(p);
  if (p.k > 0 && (group_size <= 0 || group_size % 8 != 0 || p.k % group_size != 0)) {
    return Status::InvalidArgument(op + "group_size must be -1 or a positive multiple of 8 dividing K=" +
                                   str(p.k) + ", got " + str(p.group_size));
  }
  if (p.x == nullptr || p.qweight == nullptr || p.scales == nullptr || p.out == nullptr) {
    return Status::InvalidArgument(op + "x, qweight, scales and out must be non-null");
  }
  if (p.n > int64_t(kGemvRows) * 0x7FFFFFFF) {
    return Status::InvalidArgument(op + "N=" + str(p.n) + " exceeds the grid");
  }
  const int64_t x_row_bytes = p.stride_xm * element_size(p.x_dtype);
  if (!aligned16(p.x) || (p.m > 1 && x_row_bytes % 16 != 0) || p.stride_xm < (p.m > 1 ? p.k : 0)) {
    return Status::InvalidArgument(op + "x rows must be 16-byte aligned and not overlap (stride_xm=" +
                                   str(p.stride_xm) + ", K=" + str(p.k) + ")");
  }
  if (p.stride_om < (p.m > 1 ? p.n : 0)) {
    return Status::InvalidArgument(op + "out rows overlap (stride_om=" + str(p.stride_om) + " < N=" +
                                   str(p.n) + ")");
  }
  return Status::Ok();
}

Status int4_gemv(const Int4GemvParams& params, cudaStream_t stream) {
  const Status status = check_int4_gemv(params);
  if (!status.ok() || params.m == 0 || params.n == 0) return status;
  switch (params.x_dtype) {
    case DType::kFloat32:
      return dispatch_vec<float>(params, stream);
    case DType::kFloat16:
      return dispatch_vec<__half>(params, stream);
    case DType::kBFloat16:
      return dispatch_vec<__nv_bfloat16>(params, stream);
    default:
      break;
  }
  return Status::InvalidArgument("int4_gemv: unknown x dtype code " +
                                 std::to_string(static_cast<int>(params.x_dtype)));
}

}  // namespace fastcot
