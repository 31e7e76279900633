//! The `ragd` binary: parses flags and hands over to the library.

// Model passes allocate and free multi-megabyte activations many times per token; the system
// allocator returns them to the OS and pays page faults to get them back (17% of prefill time
// measured with perf). mimalloc keeps them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ragd_cli::main_with_args(std::env::args_os())
}
