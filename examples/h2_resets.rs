//! What resetting HTTP/2 streams costs the service. Opens one HTTP/2 connection (prior knowledge)
//! to a running `shortener serve`, opens `N` streams on it and resets each, and prints how many
//! it opened before the server's GOAWAY (if one came), how long that took, and the CPU time the
//! server process spent meanwhile (utime + stime from `/proc/PID/stat`).
//!
//! Usage: `h2_resets ADDR PID [N] [MODE] [PATH]`, N default 10000, PATH default `/health`.
//! MODE:
//! - `rapid` (default): each stream's RST_STREAM right behind its HEADERS, no waiting;
//! - `quick`: each RST_STREAM 0.3 ms after its HEADERS (about when a lookup that goes to Redis
//!   is still pending);
//! - `spaced`: each RST_STREAM 2 ms after its HEADERS (by then a lookup has answered, unless
//!   what it waits on is stalled);
//! - `answered`: no resets: N plain requests 2 ms apart, every answer read (what the same
//!   streams cost as ordinary requests).
//!
//! One line of `key=value` results goes to stdout; errors to stderr. `loadtest/h2_resets.sh`
//! starts a release build and runs every mode, and `spaced` once more with Redis stalled.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use axum::http::{Method, Request};
use tokio::net::TcpStream;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Rapid,
    Quick,
    Spaced,
    Answered,
}

/// utime + stime of `pid`, in milliseconds.
fn cpu_ms(pid: u32, tick_ms: f64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the server's /proc/PID/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 * tick_ms
}

fn tick_ms() -> f64 {
    let out = std::process::Command::new("getconf").arg("CLK_TCK").output().expect("getconf");
    let hz: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("CLK_TCK");
    1000.0 / hz
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: h2_resets ADDR PID [N] [rapid|quick|spaced|answered] [PATH]");
        return ExitCode::FAILURE;
    }
    let (addr, pid) = (args[1].clone(), args[2].parse::<u32>().expect("PID"));
    let n: u64 = args.get(3).map_or(10_000, |s| s.parse().expect("N"));
    let mode = match args.get(4).map_or("rapid", String::as_str) {
        "rapid" => Mode::Rapid,
        "quick" => Mode::Quick,
        "spaced" => Mode::Spaced,
        "answered" => Mode::Answered,
        other => {
            eprintln!("unknown mode {other}");
            return ExitCode::FAILURE;
        }
    };
    let path = args.get(5).cloned().unwrap_or_else(|| "/health".into());
    let tick = tick_ms();

    let tcp = TcpStream::connect(&addr).await.expect("connect");
    tcp.set_nodelay(true).unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let cpu_before = cpu_ms(pid, tick);
    let started = Instant::now();
    let mut opened = 0u64;
    let mut goaway = None;
    while opened < n {
        let sent = match send.clone().ready().await {
            Ok(mut ready) => {
                let req = Request::builder().method(Method::GET).uri(format!("http://t{path}")).body(()).unwrap();
                ready.send_request(req, true)
            }
            Err(e) => Err(e),
        };
        let (answer, mut stream) = match sent {
            Ok(s) => s,
            Err(e) => {
                goaway = Some(e);
                break;
            }
        };
        opened += 1;
        match mode {
            Mode::Rapid => stream.send_reset(h2::Reason::CANCEL),
            Mode::Quick => {
                // Finer than a timer: spin (the connection's own task runs on another thread).
                let at = Instant::now() + Duration::from_micros(300);
                while Instant::now() < at {
                    std::hint::spin_loop();
                }
                stream.send_reset(h2::Reason::CANCEL);
            }
            Mode::Spaced => {
                tokio::time::sleep(Duration::from_millis(2)).await;
                stream.send_reset(h2::Reason::CANCEL);
            }
            Mode::Answered => {
                tokio::time::sleep(Duration::from_millis(2)).await;
                answer.await.expect("an answer");
            }
        }
    }
    let elapsed = started.elapsed();
    // Let the server finish what it was given, then see whether it closed the connection.
    drop(send);
    let closed = tokio::time::timeout(Duration::from_secs(2), conn).await;
    let cpu = cpu_ms(pid, tick) - cpu_before;
    let goaway = match goaway.as_ref().map(|e| e.reason()) {
        Some(Some(reason)) => format!("{reason:?}"),
        Some(None) => "error-without-reason".into(),
        None => "none".into(),
    };
    let closed = match closed {
        Ok(Ok(Ok(()))) => "ok".to_string(),
        Ok(Ok(Err(e))) => format!("{:?}", e.to_string()),
        Ok(Err(e)) => format!("{:?}", e.to_string()),
        Err(_) => "still-open".into(),
    };
    println!(
        "mode={} streams={opened} goaway={goaway} elapsed_ms={} server_cpu_ms={cpu:.0} connection_end={closed}",
        args.get(4).map_or("rapid", String::as_str),
        elapsed.as_millis(),
    );
    ExitCode::SUCCESS
}
