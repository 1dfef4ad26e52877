//! Compiles CMU Flite 2.2 (the library, US English text processing and the CMU lexicon; no
//! voice: voices are `.flitevox` files read at run time) and `csrc/shim.c` into a static
//! library linked into the crate.
//!
//! The sources are the unpacked upstream tarball at `FLITE_SRC` (default
//! `/var/cache/gatewayd-ci/speech/flite-2.2`, made by `scripts/speech/flite.sh`); nothing of
//! Flite is vendored in the repository. For wasm32 the compiler is clang-16 (`--target=
//! wasm32-wasi`) against wasi-libc's headers; the objects link with Rust's own self-contained
//! wasi libc. For the host target the system C compiler builds the same sources.
//!
//! Flite configuration: no audio device (`CST_AUDIO_NONE`), no sockets (`CST_NO_SOCKETS`, so
//! no `http:` voices), stdio files and no mmap (`cst_file_stdio.c`, `cst_mmap_none.c`), and
//! `DIE_ON_ERROR`: Flite's internal errors call `abort()` (a trap in Wasm) instead of
//! `longjmp`/`exit`, as wasi-libc has no `setjmp`; `src/utils/cst_error.c` (which defines a
//! `jmp_buf` whatever the setting) is left out and `csrc/shim.c` has its `cst_errmsg`. Flite's `configure` output (`config/config`)
//! is only read by its Makefiles, so no generated header is needed; `include/flite_version.h`
//! ships in the tarball.

use std::env;
use std::path::{Path, PathBuf};

const DEFAULT_SRC: &str = "/var/cache/gatewayd-ci/speech/flite-2.2";

/// Flite's library sources by directory (as its Makefiles list them, with the portable file and
/// mmap variants and the null audio driver; without `cst_error.c`, see the top).
const LIBRARY: &[(&str, &[&str])] = &[
    ("src/audio", &["auclient.c", "auserver.c", "audio.c", "au_streaming.c", "au_none.c"]),
    (
        "src/cg",
        &[
            "cst_cg.c",
            "cst_mlsa.c",
            "cst_mlpg.c",
            "cst_vc.c",
            "cst_cg_load_voice.c",
            "cst_cg_dump_voice.c",
            "cst_cg_map.c",
            "cst_spamf0.c",
        ],
    ),
    ("src/hrg", &["cst_utterance.c", "cst_relation.c", "cst_item.c", "cst_ffeature.c", "cst_rel_io.c"]),
    ("src/lexicon", &["cst_lexicon.c", "cst_lts.c", "cst_lts_rewrites.c"]),
    ("src/regex", &["cst_regex.c", "regexp.c", "regsub.c"]),
    (
        "src/speech",
        &[
            "cst_wave.c",
            "cst_wave_io.c",
            "cst_track.c",
            "cst_track_io.c",
            "cst_wave_utils.c",
            "cst_lpcres.c",
            "rateconv.c",
            "g721.c",
            "g72x.c",
            "g723_24.c",
            "g723_40.c",
        ],
    ),
    ("src/stats", &["cst_cart.c", "cst_viterbi.c", "cst_ss.c"]),
    (
        "src/synth",
        &[
            "cst_synth.c",
            "cst_utt_utils.c",
            "cst_voice.c",
            "cst_phoneset.c",
            "cst_ffeatures.c",
            "cst_ssml.c",
            "flite.c",
        ],
    ),
    (
        "src/utils",
        &[
            "cst_alloc.c",
            "cst_string.c",
            "cst_wchar.c",
            "cst_tokenstream.c",
            "cst_val.c",
            "cst_features.c",
            "cst_endian.c",
            "cst_socket.c",
            "cst_val_const.c",
            "cst_val_user.c",
            "cst_args.c",
            "cst_url.c",
            "cst_mmap_none.c",
            "cst_file_stdio.c",
        ],
    ),
    ("src/wavesynth", &["cst_units.c", "cst_clunits.c", "cst_diphone.c", "cst_sigpr.c", "cst_sts.c", "cst_reflpc.c"]),
    (
        "lang/usenglish",
        &[
            "us_int_accent_cart.c",
            "us_int_tone_cart.c",
            "us_f0_model.c",
            "us_dur_stats.c",
            "us_durz_cart.c",
            "us_f0lr.c",
            "us_phoneset.c",
            "us_ffeatures.c",
            "us_phrasing_cart.c",
            "us_gpos.c",
            "us_text.c",
            "us_expand.c",
            "us_nums_cart.c",
            "us_aswd.c",
            "usenglish.c",
            "us_pos_cart.c",
        ],
    ),
    (
        "lang/cmulex",
        &["cmu_lts_rules.c", "cmu_lts_model.c", "cmu_lex.c", "cmu_lex_entries.c", "cmu_lex_data.c", "cmu_postlex.c"],
    ),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/shim.c");
    for var in ["FLITE_SRC", "WASI_SYSROOT", "CC_wasm32_wasip2", "AR_wasm32_wasip2"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let src = PathBuf::from(env::var("FLITE_SRC").unwrap_or_else(|_| DEFAULT_SRC.into()));
    if !src.join("src/synth/flite.c").is_file() || !src.join("include/flite.h").is_file() {
        panic!(
            "\n\nFlite 2.2 sources not found at {} (FLITE_SRC).\n\
             Run scripts/speech/flite.sh to fetch and unpack them (and dump the voice),\n\
             or set FLITE_SRC to an unpacked flite-2.2 tree.\n\n",
            src.display()
        );
    }
    println!("cargo:rerun-if-changed={}", src.join("include/flite.h").display());

    let mut build = cc::Build::new();
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        configure_wasm(&mut build);
    } else {
        build.opt_level(2);
    }
    build
        .include(src.join("include"))
        .include(src.join("lang/usenglish"))
        .include(src.join("lang/cmulex"))
        .define("CST_AUDIO_NONE", None)
        .define("CST_NO_SOCKETS", None)
        .define("DIE_ON_ERROR", None)
        // Flite's own code; its warnings are not ours to fix.
        .warnings(false)
        .flag_if_supported("-w")
        .file("csrc/shim.c");
    for (dir, files) in LIBRARY {
        let dir = src.join(dir);
        // Private headers (`cst_cg_map.h`, `native_audio.h`, `cst_regex_defs.h`) are included
        // as `"x.h"` next to the source, which the compiler finds by itself.
        for file in *files {
            build.file(dir.join(file));
        }
    }
    build.compile("flite");
}

/// clang-16 for `wasm32-wasi` with wasi-libc's headers only (never the host's `/usr/include`):
/// a sysroot from `WASI_SYSROOT` or `/usr/share/wasi-sysroot` when there is one, else Debian's
/// `wasi-libc` layout (`/usr/include/wasm32-wasi`).
fn configure_wasm(build: &mut cc::Build) {
    let clang = env::var("CC_wasm32_wasip2").unwrap_or_else(|_| "clang-16".into());
    build.compiler(&clang).no_default_flags(true);
    build.archiver(archiver());
    // Big stdio buffers for voice files (csrc/shim.c, `gw_fopen`).
    build.define("fopen", "gw_fopen").define("fclose", "gw_fclose");
    for flag in ["--target=wasm32-wasi", "-O2", "-ffunction-sections", "-fdata-sections", "-fno-common"] {
        build.flag(flag);
    }
    let sysroot = env::var("WASI_SYSROOT").map(PathBuf::from).ok().or_else(|| {
        let p = PathBuf::from("/usr/share/wasi-sysroot");
        p.join("include").is_dir().then_some(p)
    });
    match sysroot {
        Some(root) => {
            build.flag(format!("--sysroot={}", root.display()));
        }
        None if Path::new("/usr/include/wasm32-wasi/stdio.h").is_file() => {
            build.flag("-nostdlibinc").flag("-isystem").flag("/usr/include/wasm32-wasi");
        }
        None => panic!(
            "\n\nNo wasi-libc headers: set WASI_SYSROOT, or install Debian's wasi-libc and clang-16\n\
             (scripts/speech/toolchain.sh).\n\n"
        ),
    }
}

/// An `ar` that writes a symbol index wasm-ld understands: `AR_wasm32_wasip2`, else the first of
/// `llvm-ar-16`, `llvm-ar` and `llvm-ar-14` on `PATH` (GNU ar cannot index Wasm objects).
fn archiver() -> PathBuf {
    if let Ok(ar) = env::var("AR_wasm32_wasip2") {
        return ar.into();
    }
    let path = env::var_os("PATH").unwrap_or_default();
    for name in ["llvm-ar-16", "llvm-ar", "llvm-ar-14"] {
        for dir in env::split_paths(&path) {
            if dir.join(name).is_file() {
                return dir.join(name);
            }
        }
    }
    panic!(
        "\n\nNo llvm-ar for the wasm32 archive: run scripts/speech/toolchain.sh (installs llvm-16),\n\
         or set AR_wasm32_wasip2.\n\n"
    )
}
