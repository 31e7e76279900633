//! The `ragd` command line: flag parsing and the commands that are not the server.
//!
//! Every command is a thin shell over the library crates; output meant for scripts (`--json`) is
//! one JSON document on stdout, human output and progress go to stderr/stdout as noted per command.

mod ask;
mod backend;
mod bench;
mod bench_load;
mod bench_search;
mod client;
mod collections;
mod commands;
mod flags;
mod output;
mod publish;
mod remote;
mod retrieval;
mod serve;

pub use commands::{Cli, main_with_args};
