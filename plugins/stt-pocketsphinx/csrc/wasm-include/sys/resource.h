/* sys/resource.h for wasm32-wasi builds of PocketSphinx (plugins/stt-pocketsphinx).
 *
 * WASI has no process CPU clock. PocketSphinx's util/profile.c reads getrusage() for its
 * (unused here) CPU-time counters; getrusage() here reports zero (csrc/shim.c). */
#ifndef GATEWAYD_WASM_SYS_RESOURCE_H
#define GATEWAYD_WASM_SYS_RESOURCE_H

#include <sys/time.h>

#define RUSAGE_SELF 0

struct rusage {
    struct timeval ru_utime;
    struct timeval ru_stime;
};

int getrusage(int who, struct rusage *usage);

#endif
