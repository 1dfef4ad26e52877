/// jemalloc: lower fragmentation than glibc malloc with many long-lived connections
/// interleaved with short-lived handshake buffers (figures in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    gatewayd::cli::main()
}
