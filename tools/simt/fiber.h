// Fibers for the SIMT runtime: one per CUDA thread, switched cooperatively on the OS thread
// that runs the block. x86-64 gets a hand-written switch (callee-saved registers, MXCSR and the
// x87 control word: ~10 ns, no system call); elsewhere, or with -DSIMT_UCONTEXT, ucontext
// (which makes a sigprocmask system call per switch).
#pragma once

#include <cstddef>

#if defined(__x86_64__) && !defined(SIMT_UCONTEXT)
#define SIMT_ASM_SWITCH 1
#else
#define SIMT_ASM_SWITCH 0
#include <ucontext.h>
#endif

namespace simt {

struct Context {
#if SIMT_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
};

// Prepares `context` to run `entry()` on [stack, stack + size) when first switched to.
// `entry` must never return: it ends by switching away for good.
void make_context(Context& context, char* stack, size_t size, void (*entry)());
// Saves the running context into `from` and resumes `to`.
void switch_context(Context& from, Context& to);

}  // namespace simt
