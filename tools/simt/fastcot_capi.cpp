// C entry points over fastcot's own launchers (csrc/*.cu: argument checks, dtype dispatch,
// launch) for tools/simt/emulator.py, one per function that csrc/bindings.cpp binds.
//
// Each field list below is the single source of a function's parameters: it generates the C
// parameter list, the copy into the launcher's Params struct, and a signature string
// ("p:x,i:m,...") from which Python builds its argument types and orders its keyword
// arguments, so the two sides cannot drift apart. Field codes: p pointer, i int64, f float
// (passed as double), d a fastcot::DType code.
//
// Each returns 0, 1 with an invalid-argument message (the binding's ValueError) or 2 with a
// CUDA error message (its RuntimeError) in `error`.
#include <cstdio>

#include "fastcot/api.h"

#define FASTCOT_DEQUANT_FIELDS(X) \
  X(p, qweight) X(p, scales) X(p, zeros) X(p, perm) X(p, out) X(i, n) X(i, k) X(i, group_size) \
  X(d, out_dtype) X(d, scale_dtype)

#define FASTCOT_GEMV_FIELDS(X)                                                                       \
  X(p, x) X(p, qweight) X(p, scales) X(p, zeros) X(p, bias) X(p, out) X(i, m) X(i, n) X(i, k)         \
  X(i, group_size) X(i, stride_xm) X(i, stride_om) X(d, x_dtype) X(d, scale_dtype) X(d, bias_dtype)

#define FASTCOT_DECODE_FIELDS(X)                                                                        \
  X(p, q) X(p, k_cache) X(p, v_cache) X(p, block_tables) X(p, seq_lens) X(p, out) X(p, part_out)          \
  X(p, part_lse) X(i, batch) X(i, q_heads) X(i, num_kv_heads) X(i, head_dim) X(i, num_blocks)              \
  X(i, block_size) X(i, num_splits) X(i, stride_q_b) X(i, stride_q_h) X(i, stride_out_b) X(i, stride_out_h) \
  X(i, stride_table_b) X(f, qk_scale) X(f, v_scale) X(d, q_dtype) X(d, cache_dtype)

#define SIMT_TYPE_p void*
#define SIMT_TYPE_i int64_t
#define SIMT_TYPE_f double
#define SIMT_TYPE_d int
#define SIMT_PARAM(code, name) , SIMT_TYPE_##code name
#define SIMT_ASSIGN(code, name) params.name = static_cast<decltype(params.name)>(name);
#define SIMT_NAME(code, name) #code ":" #name ","

#define FASTCOT_ENTRY(function, Params, FIELDS)                                       \
  int fastcot_emu_##function(char* error, int error_size FIELDS(SIMT_PARAM)) {        \
    fastcot::Params params;                                                           \
    FIELDS(SIMT_ASSIGN)                                                               \
    return report(fastcot::function(params, nullptr), error, error_size);            \
  }                                                                                   \
  const char* fastcot_emu_##function##_signature() { return FIELDS(SIMT_NAME); }

namespace {

int report(const fastcot::Status& status, char* error, int error_size) {
  if (status.ok()) return 0;
  std::snprintf(error, size_t(error_size), "%s", status.message.c_str());
  return status.code == fastcot::Status::Code::kInvalidArgument ? 1 : 2;
}

}  // namespace

extern "C" {
FASTCOT_ENTRY(int4_dequantize, Int4DequantParams, FASTCOT_DEQUANT_FIELDS)
FASTCOT_ENTRY(int4_gemv, Int4GemvParams, FASTCOT_GEMV_FIELDS)
FASTCOT_ENTRY(paged_decode_attention, PagedDecodeParams, FASTCOT_DECODE_FIELDS)
}  // extern "C"
