//! The `pennine` command: parse the command line, start tracing, run.

// The ingest path allocates many small JSON nodes; mimalloc measured faster
// than glibc malloc on it (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pennine::cli::main()
}
