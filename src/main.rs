//! The `pennine` command: parse the command line, start tracing, run.

fn main() -> std::process::ExitCode {
    pennine::cli::main()
}
