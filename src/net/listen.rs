//! Listening sockets inherited the systemd way (socket activation, sd_listen_fds(3)).
//!
//! A process started with `LISTEN_PID` equal to its own pid and `LISTEN_FDS=N` owns the
//! listening sockets at file descriptors 3 to 3 + N − 1; `LISTEN_FDNAMES`, when set, names them
//! (colon-separated, one name per descriptor). That is what systemd hands a service whose
//! `.socket` unit holds the socket, and what any launcher can hand several processes at once:
//! each serves the same socket, and the kernel gives each accepted connection to one of them.
//! Because the socket outlives the processes, a restart loses no connection: while no process
//! accepts, new connections wait in the socket's backlog.
//!
//! [`take_inherited`] must run before the process starts any thread: it removes the three
//! variables from the environment (as `sd_listen_fds(1)` does), so that nothing the process
//! starts later mistakes them for its own, and the environment may only be changed while the
//! process has a single thread. The descriptors are validated and wrapped by `listenfd` (the
//! conversion from a raw descriptor is `unsafe`, which this crate forbids in its own code);
//! the variables are read here, to the letter of sd_listen_fds(3).

use std::{env, fmt, io, net::TcpListener};

/// An inherited listening socket and its name (`LISTEN_FDNAMES`; `unknown` when none was given,
/// as systemd calls an unnamed one).
pub struct Inherited {
    /// The socket, in blocking mode as inherited.
    pub listener: TcpListener,
    /// Its name.
    pub name: String,
}

impl fmt::Debug for Inherited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|e| e.to_string());
        write!(f, "{}={}", self.name, addr)
    }
}

/// What the environment says, before any descriptor is touched.
#[derive(Debug, PartialEq, Eq)]
struct Passed {
    count: usize,
    names: Vec<String>,
}

/// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` as sd_listen_fds(3) does: no sockets
/// unless `LISTEN_PID` is this process, `LISTEN_FDS` a count, and `LISTEN_FDNAMES` (if set) one
/// name per socket.
fn parse(pid: Option<&str>, fds: Option<&str>, names: Option<&str>, own_pid: u32) -> Result<Option<Passed>, String> {
    let Some(pid) = pid else { return Ok(None) };
    let pid: u32 = pid.trim().parse().map_err(|_| format!("LISTEN_PID={pid:?} is not a process id"))?;
    if pid != own_pid {
        // Meant for another process (the one that started us, say): not ours.
        return Ok(None);
    }
    let Some(fds) = fds else { return Ok(None) };
    let count: usize = fds.trim().parse().map_err(|_| format!("LISTEN_FDS={fds:?} is not a count"))?;
    let names = match names {
        None => vec!["unknown".to_string(); count],
        Some(n) => {
            let names: Vec<String> = n.split(':').map(str::to_string).collect();
            if names.len() != count {
                return Err(format!("LISTEN_FDNAMES names {} sockets but LISTEN_FDS={count}", names.len()));
            }
            names
        }
    };
    Ok((count > 0).then_some(Passed { count, names }))
}

/// The listening sockets this process inherited, in descriptor order (none when it was started
/// without any); an error when the variables are malformed or a descriptor is not a listening
/// TCP socket. Removes the variables from the environment. Call it before starting any thread.
pub fn take_inherited() -> io::Result<Vec<Inherited>> {
    let var = |k: &str| env::var(k).ok();
    let parsed = parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    let mut sockets = Vec::new();
    if let Ok(Some(passed)) = &parsed {
        // listenfd reads the same two variables (and removes them); they were checked above.
        // Its own extension, a first descriptor other than 3, is not sd_listen_fds(3)'s.
        env::remove_var("LISTEN_FDS_FIRST_FD");
        let mut fds = listenfd::ListenFd::from_env();
        for (i, name) in passed.names.iter().enumerate().take(passed.count) {
            let listener = fds
                .take_tcp_listener(i)
                .map_err(|e| io::Error::new(e.kind(), format!("inherited socket {i} ({name}), fd {}: {e}", 3 + i)))?
                .ok_or_else(|| io::Error::other(format!("inherited socket {i} ({name}) is missing")))?;
            sockets.push(Inherited { listener, name: name.clone() });
        }
    }
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        env::remove_var(k);
    }
    parsed.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(sockets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_ours_only_with_our_pid() {
        assert_eq!(parse(None, Some("1"), None, 7), Ok(None));
        assert_eq!(parse(Some("8"), Some("1"), None, 7), Ok(None));
        assert_eq!(parse(Some("7"), None, None, 7), Ok(None));
        assert_eq!(parse(Some("7"), Some("0"), None, 7), Ok(None));
        assert_eq!(
            parse(Some("7"), Some("2"), None, 7),
            Ok(Some(Passed { count: 2, names: vec!["unknown".into(); 2] }))
        );
    }

    #[test]
    fn names_must_match_the_count() {
        assert_eq!(
            parse(Some("7"), Some("2"), Some("http:admin"), 7),
            Ok(Some(Passed { count: 2, names: vec!["http".into(), "admin".into()] }))
        );
        assert!(parse(Some("7"), Some("2"), Some("http"), 7).is_err());
        assert!(parse(Some("7"), Some("x"), None, 7).is_err());
        assert!(parse(Some("me"), Some("1"), None, 7).is_err());
    }
}
