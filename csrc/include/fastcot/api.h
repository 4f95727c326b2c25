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
  kFloat8E4M3 = 3,  // float8_e4m3fn: paged KV caches only
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

// W4A16 GEMV for decode: out[M, N] = x[M, K] @ W.T (+ bias), W in the packed layout above
// read as is (no pre-shuffle), for M <= kInt4GemvMaxM. Accumulates in fp32.
//   x      [M, K] fp16/bf16/fp32, row stride stride_xm elements, unit stride along K;
//          16-byte aligned rows (base and stride_xm * element size).
//   scales, zeros [G, N] as above (zeros null: zero point 8), any of fp32/fp16/bf16.
//   bias   [N] or null, its own float dtype.  out [M, N] of x's dtype, row stride stride_om.
// An act-order perm is applied by the caller (x gathered into stored column order).
constexpr int64_t kInt4GemvMaxM = 16;

struct Int4GemvParams {
  const void* x = nullptr;
  const int32_t* qweight = nullptr;
  const void* scales = nullptr;
  const void* zeros = nullptr;
  const void* bias = nullptr;
  void* out = nullptr;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  int64_t group_size = 0;  // -1 means one group spanning K
  int64_t stride_xm = 0;
  int64_t stride_om = 0;
  DType x_dtype = DType::kFloat16;  // also out's dtype
  DType scale_dtype = DType::kFloat16;
  DType bias_dtype = DType::kFloat16;
};

Status check_int4_gemv(const Int4GemvParams& params);
Status int4_gemv(const Int4GemvParams& params, cudaStream_t stream);

// Split-KV paged decode attention (one query token per sequence), GQA.
//   q        [B, Hq, D] (strides stride_q_b, stride_q_h; unit along D), fp16/bf16/fp32.
//   caches   [num_blocks, block_size, Hkv, D] contiguous, q's dtype or float8_e4m3fn.
//   block_tables [B, >= max blocks] int32 (row stride stride_table_b), seq_lens [B] int32.
//   out      [B, Hq, D] of q's dtype (strides stride_out_b, stride_out_h).
//   part_out [B, Hq, num_splits, D] fp32 and part_lse [B, Hq, num_splits] fp32: scratch the
//            caller owns, needed when num_splits > 1 (null otherwise).
// Scores use qk_scale = softmax scale * k_scale * log2(e) (softmax in base 2); v_scale
// multiplies the normalized output. A sequence of length 0 gives zeros.
constexpr int64_t kPagedDecodeMaxSplits = 64;

struct PagedDecodeParams {
  const void* q = nullptr;
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  const int32_t* block_tables = nullptr;
  const int32_t* seq_lens = nullptr;
  void* out = nullptr;
  float* part_out = nullptr;
  float* part_lse = nullptr;
  int64_t batch = 0;
  int64_t q_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t num_splits = 1;
  int64_t stride_q_b = 0;
  int64_t stride_q_h = 0;
  int64_t stride_out_b = 0;
  int64_t stride_out_h = 0;
  int64_t stride_table_b = 0;
  float qk_scale = 0.0f;
  float v_scale = 1.0f;
  DType q_dtype = DType::kFloat16;  // also out's dtype
  DType cache_dtype = DType::kFloat16;
};

Status check_paged_decode(const PagedDecodeParams& params);
Status paged_decode_attention(const PagedDecodeParams& params, cudaStream_t stream);

}  // namespace fastcot
