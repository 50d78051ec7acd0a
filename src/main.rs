//! The `shortener` binary: take inherited sockets, load `.env`, start logging, parse the command
//! line, dispatch.

use std::process::ExitCode;

use clap::Parser;
use shortener::{cli, telemetry};

/// mimalloc instead of the system allocator: allocation and free were 7–17% of the CPU of a
/// redirect or a create in the load-test profiles (glibc's arenas, cross-thread frees).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before any thread exists: it takes the socket-activation variables out of the environment.
    let inherited = shortener::net::listen::take_inherited();
    let dotenv = dotenvy::dotenv();
    telemetry::init();
    let inherited = match inherited {
        Ok(sockets) => sockets,
        Err(e) => {
            tracing::error!(error = %e, "inherited sockets (LISTEN_FDS) are unusable");
            eprintln!("shortener: inherited sockets (LISTEN_FDS) are unusable: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = &dotenv {
        if !e.not_found() {
            tracing::error!(error = %e, ".env could not be read");
            return ExitCode::FAILURE;
        }
    }
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shortener: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli, inherited)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("shortener: {e}");
            ExitCode::FAILURE
        }
    }
}
