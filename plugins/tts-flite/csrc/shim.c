/* The C side of gatewayd-tts-flite: a few entry points over Flite's API so the Rust FFI needs
 * only opaque pointers and plain integers (no Flite struct layouts are mirrored in Rust).
 * Not thread-safe, like Flite itself: the Rust side calls it under one lock. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include "flite.h"
#include "cst_cg.h"

/* Flite's error printer (src/utils/cst_error.c is not compiled: it defines a jmp_buf, and
 * wasi-libc has no setjmp.h; errors abort, see build.rs). */
int cst_errmsg(const char *fmt, ...)
{
    va_list args;
    int rv;
    va_start(args, fmt);
    rv = vfprintf(stderr, fmt, args);
    va_end(args);
    return rv;
}

void usenglish_init(cst_voice *v);
cst_lexicon *cmulex_init(void);

/* Register the US English language and CMU lexicon (compiled in) under the names voice files
 * use (`language` feature: "eng", older dumps "usenglish"). Idempotent. */
void gw_flite_init(void)
{
    static int done = 0;
    if (done)
        return;
    flite_init();
    flite_add_lang("eng", usenglish_init, cmulex_init);
    flite_add_lang("usenglish", usenglish_init, cmulex_init);
    done = 1;
}

/* A clustergen voice from a `.flitevox` file; NULL when it cannot be read. */
cst_voice *gw_flite_voice_load(const char *path)
{
    return flite_voice_load(path);
}

/* The voice's output rate in Hz, or -1 when it is not a clustergen voice. */
int gw_flite_voice_rate(const cst_voice *v)
{
    if (v == NULL || !feat_present(v->features, "cg_db"))
        return -1;
    return val_cg_db(feat_val(v->features, "cg_db"))->sample_rate;
}

/* Synthesise `text` (one utterance) with durations stretched by `stretch` (1.0: the voice's
 * own pace; 2.0: twice as slow). NULL on failure; free with gw_flite_utt_free.
 * The mixed-excitation vocoder draws signs from libc's rand(): reseeding makes a text's audio
 * the same every time, whatever was synthesised before. */
cst_utterance *gw_flite_synth(cst_voice *v, const char *text, float stretch)
{
    srand(1);
    feat_set_float(v->features, "duration_stretch", stretch);
    return flite_synth_text(text, v);
}

/* The utterance's samples (mono s16) and their count; 0 and NULL when it has no wave. */
int gw_flite_utt_samples(cst_utterance *u, const short **samples)
{
    const cst_wave *w = utt_wave(u);
    *samples = NULL;
    if (w == NULL || w->num_channels != 1 || w->num_samples <= 0)
        return 0;
    *samples = w->samples;
    return w->num_samples;
}

void gw_flite_utt_free(cst_utterance *u)
{
    if (u != NULL)
        delete_utterance(u);
}

#ifdef __wasm__
/* Wasm only (build.rs compiles Flite with -Dfopen=gw_fopen -Dfclose=gw_fclose): Flite reads a
 * voice file with thousands of small freads, and wasi-libc's 1 KiB stdio buffer makes every
 * KiB a call out to the host (about 400 ms for a 2.5 MB voice under wasmtime). One file at a
 * time gets a big buffer instead (voice loading opens one file at a time). */
#undef fopen
#undef fclose
/* <stdio.h> declared them under the gw_ names: declare libc's own. */
FILE *fopen(const char *restrict path, const char *restrict mode);
int fclose(FILE *f);

static char gw_read_buf[256 * 1024];
static FILE *gw_read_buf_owner = NULL;

FILE *gw_fopen(const char *path, const char *mode)
{
    FILE *f = fopen(path, mode);
    if (f != NULL && gw_read_buf_owner == NULL && mode[0] == 'r'
        && setvbuf(f, gw_read_buf, _IOFBF, sizeof gw_read_buf) == 0)
        gw_read_buf_owner = f;
    return f;
}

int gw_fclose(FILE *f)
{
    int rv = fclose(f);
    if (f == gw_read_buf_owner)
        gw_read_buf_owner = NULL;
    return rv;
}
#endif
