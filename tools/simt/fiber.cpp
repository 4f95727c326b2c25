// Context switching for tools/simt/fiber.h.
#include "fiber.h"

#include <cstdint>
#include <cstdlib>

namespace simt {

#if SIMT_ASM_SWITCH

extern "C" {
void simt_switch(void** save_sp, void* load_sp);
void simt_fiber_trampoline();
}

// simt_switch pushes the callee-saved registers and the floating-point control words, stores
// the stack pointer into *save_sp, loads load_sp and pops the same frame off the other stack.
// A fresh fiber's stack holds such a frame whose return address is simt_fiber_trampoline,
// which calls the entry function kept in r12.
asm(R"(
    .text
    .p2align 4
    .globl simt_switch
    .hidden simt_switch
    .type simt_switch, @function
simt_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size simt_switch, .-simt_switch

    .p2align 4
    .globl simt_fiber_trampoline
    .hidden simt_fiber_trampoline
    .type simt_fiber_trampoline, @function
simt_fiber_trampoline:
    callq *%r12
    ud2
    .size simt_fiber_trampoline, .-simt_fiber_trampoline
)");

void make_context(Context& context, char* stack, size_t size, void (*entry)()) {
  // `ret` pops the trampoline's address off top - 8, so the trampoline starts with rsp at the
  // 16-byte aligned top, as the ABI wants it before a call.
  auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15);
  auto* return_slot = reinterpret_cast<uint64_t*>(top - 8);
  *return_slot = reinterpret_cast<uint64_t>(&simt_fiber_trampoline);
  uint64_t* regs = return_slot - 6;  // r15 r14 r13 r12 rbx rbp, popped in that order
  regs[0] = regs[1] = regs[2] = regs[4] = regs[5] = 0;
  regs[3] = reinterpret_cast<uint64_t>(entry);  // r12
  uint32_t* control = reinterpret_cast<uint32_t*>(regs - 1);
  asm volatile("stmxcsr %0" : "=m"(control[0]));
  asm volatile("fnstcw %0" : "=m"(control[1]));
  context.sp = regs - 1;
}

void switch_context(Context& from, Context& to) { simt_switch(&from.sp, to.sp); }

#else

void make_context(Context& context, char* stack, size_t size, void (*entry)()) {
  getcontext(&context.uc);
  context.uc.uc_stack.ss_sp = stack;
  context.uc.uc_stack.ss_size = size;
  context.uc.uc_link = nullptr;
  makecontext(&context.uc, entry, 0);
}

void switch_context(Context& from, Context& to) {
  if (swapcontext(&from.uc, &to.uc) != 0) std::abort();
}

#endif

}  // namespace simt
