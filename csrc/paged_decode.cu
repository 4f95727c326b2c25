// Launcher for split-KV paged decode attention: checks what the kernels rely on, picks the
// query-head tile, dispatches on cache dtype and head size, enqueues the attention kernel
// and (when split) the merge on the caller's stream, both with programmatic dependent launch on
// sm_90+ (fastcot/launch.cuh; the kernels wait before their first global access).
#include <cstdint>
#include <string>

#include "fastcot/api.h"
#include "fastcot/launch.cuh"
#include "fastcot/paged_decode.cuh"

namespace fastcot {
namespace {

std::string str(int64_t v) { return std::to_string(v); }

bool is_float_code(DType d) {
  return d == DType::kFloat32 || d == DType::kFloat16 || d == DType::kBFloat16;
}

int64_t element_size(DType d) {
  return d == DType::kFloat32 ? 4 : d == DType::kFloat8E4M3 ? 1 : 2;
}

int log2_exact(int64_t v) {
  int shift = 0;
  while ((int64_t(1) << shift) < v) ++shift;
  return shift;
}

// Query heads per block: the whole GQA group up to 8 (each KV byte read once), else tiles of 8.
int group_tile(int64_t group) { return group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8; }

PagedDecodeArgs make_args(const PagedDecodeParams& p) {
  const int64_t group = p.q_heads / p.num_kv_heads;
  PagedDecodeArgs a{};
  a.q = p.q;
  a.k_cache = p.k_cache;
  a.v_cache = p.v_cache;
  a.block_tables = p.block_tables;
  a.seq_lens = p.seq_lens;
  a.out = p.out;
  a.part_out = p.part_out;
  a.part_lse = p.part_lse;
  a.q_heads = static_cast<int>(p.q_heads);
  a.group = static_cast<int>(group);
  a.group_tiles = static_cast<int>(ceil_div(group, group_tile(group)));
  a.num_splits = static_cast<int>(p.num_splits);
  a.block_shift = log2_exact(p.block_size);
  a.stride_q_b = p.stride_q_b;
  a.stride_q_h = p.stride_q_h;
  a.stride_out_b = p.stride_out_b;
  a.stride_out_h = p.stride_out_h;
  a.stride_table_b = p.stride_table_b;
  a.stride_slot = p.num_kv_heads * p.head_dim;
  a.qk_scale = p.qk_scale;  // an fp8 cache's widening factor is the kernel's business (fastcot/fp8.cuh)
  a.v_scale = p.v_scale;
  a.q_code = static_cast<int>(p.q_dtype);
  return a;
}

template <typename CacheT, int D, int G>
Status launch(const PagedDecodeParams& p, cudaStream_t stream) {
  const PagedDecodeArgs args = make_args(p);
  int device = 0;
  bool pdl = false;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) error = pdl_enabled(device, &pdl);
  if (error != cudaSuccess) return Status::Cuda(error, "paged_decode: reading the compute capability");
  const dim3 grid(static_cast<unsigned>(p.batch), static_cast<unsigned>(p.num_kv_heads * args.group_tiles),
                  static_cast<unsigned>(p.num_splits));
  error = launch_kernel(paged_decode_kernel<CacheT, D, G>, grid, kDecodeThreads, 0, stream, pdl, args);
  if (error != cudaSuccess) {
    return Status::Cuda(error, pdl ? "paged_decode kernel launch (PDL)" : "paged_decode kernel launch");
  }
  if (p.num_splits > 1) {
    const dim3 merge_grid(static_cast<unsigned>(p.batch), static_cast<unsigned>(p.q_heads));
    error = launch_kernel(paged_decode_merge_kernel, merge_grid, static_cast<unsigned>(D), 0, stream, pdl, args, D);
    if (error != cudaSuccess) {
      return Status::Cuda(error, pdl ? "paged_decode merge kernel launch (PDL)" : "paged_decode merge kernel launch");
    }
  }
  return Status::Ok();
}

template <typename CacheT, int D>
Status dispatch_group(const PagedDecodeParams& p, cudaStream_t stream) {
  switch (group_tile(p.q_heads / p.num_kv_heads)) {
    case 1:
      return launch<CacheT, D, 1>(p, stream);
    case 2:
      return launch<CacheT, D, 2>(p, stream);
    case 4:
      return launch<CacheT, D, 4>(p, stream);
    default:
      return launch<CacheT, D, 8>(p, stream);
  }
}

template <typename CacheT>
Status dispatch_head_dim(const PagedDecodeParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64:
      return dispatch_group<CacheT, 64>(p, stream);
    case 128:
      return dispatch_group<CacheT, 128>(p, stream);
    default:
      return dispatch_group<CacheT, 256>(p, stream);
  }
}

}  // namespace

Status check_paged_decode(const PagedDecodeParams& p) {
  const std::string op = "paged_decode_attention: ";
  if (p.batch < 0 || p.q_heads <= 0 || p.num_kv_heads <= 0 || p.num_blocks < 0) {
    return Status::InvalidArgument(op + "expected B >= 0, Hq > 0, Hkv > 0, num_blocks >= 0, got B=" + str(p.batch) +
                                   ", Hq=" + str(p.q_heads) + ", Hkv=" + str(p.num_kv_heads) +
                                   ", num_blocks=" + str(p.num_blocks));
  }
  if (p.q_heads % p.num_kv_heads != 0) {
    return Status::InvalidArgument(op + "Hq=" + str(p.q_heads) + " is not a multiple of Hkv=" + str(p.num_kv_heads));
  }
  if (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256) {
    return Status::InvalidArgument(op + "head_dim must be 64, 128 or 256, got " + str(p.head_dim));
  }
  if (p.block_size < 8 || p.block_size > 256 || (p.block_size & (p.block_size - 1)) != 0) {
    return Status::InvalidArgument(op + "block_size must be a power of two from 8 to 256, got " + str(p.block_size));
  }
  if (p.num_splits < 1 || p.num_splits > kPagedDecodeMaxSplits) {
    return Status::InvalidArgument(op + "num_splits must be in [1, " + str(kPagedDecodeMaxSplits) + "], got " +
                                   str(p.num_splits));
  }
  if (!is_float_code(p.q_dtype)) {
    return Status::InvalidArgument(op + "q must be float32, float16 or bfloat16");
  }
  if (p.cache_dtype != p.q_dtype && p.cache_dtype != DType::kFloat8E4M3) {
    return Status::InvalidArgument(op + "the cache must have q's dtype or be float8_e4m3fn");
  }
  if (p.cache_dtype == DType::kFloat32) {
    return Status::InvalidArgument(op + "float32 caches are not served by the cuda kernel (use float16, "
                                   "bfloat16 or float8_e4m3fn)");
  }
  if (p.num_blocks * p.block_size > 0x7FFFFFFF) {
    return Status::InvalidArgument(op + "num_blocks * block_size must fit in 31 bits (slots are int32), got " +
                                   str(p.num_blocks * p.block_size));
  }
  if (p.batch > 0x7FFFFFFF || p.q_heads > 65535) {
    return Status::InvalidArgument(op + "B=" + str(p.batch) + " or Hq=" + str(p.q_heads) + " exceeds the grid");
  }
  if (p.batch == 0) return Status::Ok();
  if (p.q == nullptr || p.k_cache == nullptr || p.v_cache == nullptr || p.block_tables == nullptr ||
      p.seq_lens == nullptr || p.out == nullptr) {
    return Status::InvalidArgument(op + "q, k_cache, v_cache, block_tables, seq_lens and out must be non-null");
  }
  if (p.num_splits > 1 && (p.part_out == nullptr || p.part_lse == nullptr)) {
    return Status::InvalidArgument(op + "num_splits > 1 needs the part_out and part_lse scratch buffers");
  }
  if (reinterpret_cast<uintptr_t>(p.k_cache) % 16 != 0 || reinterpret_cast<uintptr_t>(p.v_cache) % 16 != 0) {
    return Status::InvalidArgument(op + "k_cache and v_cache must be 16-byte aligned");
  }
  if (p.num_kv_heads * p.head_dim * element_size(p.cache_dtype) > 0x7FFFFFFF) {
    return Status::InvalidArgument(op + "a cache slot (Hkv * head_dim elements) must fit in 31 bits of bytes");
  }
  return Status::Ok();
}

Status paged_decode_attention(const PagedDecodeParams& params, cudaStream_t stream) {
  const Status status = check_paged_decode(params);
  if (!status.ok() || params.batch == 0) return status;
  switch (params.cache_dtype) {
    case DType::kFloat16:
      return dispatch_head_dim<__half>(params, stream);
    case DType::kBFloat16:
      return dispatch_head_dim<__nv_bfloat16>(params, stream);
    case DType::kFloat8E4M3:
      return dispatch_head_dim<__nv_fp8_e4m3>(params, stream);
    default:
      break;
  }
  return Status::InvalidArgument("paged_decode_attention: unknown cache dtype code " +
                                 std::to_string(static_cast<int>(params.cache_dtype)));
}

}  // namespace fastcot
