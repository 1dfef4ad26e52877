/* sys/mman.h for wasm32-wasi builds of PocketSphinx (plugins/stt-pocketsphinx).
 *
 * WASI has no mmap. PocketSphinx's util/mmio.c calls it for memory-mapped model files; the
 * plugin sets `mmap` to false, and where mmio is tried anyway (logmath tables) a failed map
 * falls back to reading the file. mmap() here always fails with ENOSYS (csrc/shim.c). */
#ifndef GATEWAYD_WASM_SYS_MMAN_H
#define GATEWAYD_WASM_SYS_MMAN_H

#include <stddef.h>
#include <sys/types.h>

#define PROT_READ 1
#define PROT_WRITE 2
#define MAP_SHARED 1
#define MAP_PRIVATE 2
#define MAP_FAILED ((void *)-1)

void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
int munmap(void *addr, size_t length);

#endif
