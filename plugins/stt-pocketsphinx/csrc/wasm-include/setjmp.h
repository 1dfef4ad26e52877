/* setjmp.h for wasm32-wasi builds of PocketSphinx (plugins/stt-pocketsphinx).
 *
 * The wasi-libc this is compiled against has no setjmp.h (Wasm has no non-local jumps without
 * the exception-handling proposal). PocketSphinx uses it in one place: ckd_set_jump(), which
 * makes allocation failures longjmp() to a caller's target instead of exiting. The plugin never
 * sets a target, so setjmp() is never called; longjmp() (csrc/shim.c) aborts if it ever is. */
#ifndef GATEWAYD_WASM_SETJMP_H
#define GATEWAYD_WASM_SETJMP_H

typedef long jmp_buf[1];

#define setjmp(env) ((void)(env), 0)
_Noreturn void longjmp(jmp_buf env, int val);

#endif
