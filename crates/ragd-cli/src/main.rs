//! The `ragd` binary: parses flags and hands over to the library.

fn main() -> std::process::ExitCode {
    ragd_cli::main_with_args(std::env::args_os())
}
