//! Servers and helpers for the bridge tests.
//!
//! The happy-path tests use the NATS server at `SWITCHBOARD_NATS_URL`
//! (default `nats://127.0.0.1:4222`, JetStream on), each under a subject
//! prefix of its own. Fault tests start their own `nats-server` (the binary
//! at `NATS_SERVER_BIN`, default `nats-server` on the `PATH`) on a free port.
//!
//! With `SWITCHBOARD_REQUIRE_NATS=1` (as CI sets) a missing server or
//! binary fails the tests; without it they are skipped with a message.

#![allow(dead_code, unreachable_pub)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn required() -> bool {
    std::env::var("SWITCHBOARD_REQUIRE_NATS").is_ok_and(|v| v == "1")
}

fn unavailable<T>(what: String) -> Option<T> {
    if required() {
        panic!("{what} (SWITCHBOARD_REQUIRE_NATS=1: the bridge tests must run)");
    }
    eprintln!(
        "SKIPPED: {what}. Start one with `nats-server -js` (or set SWITCHBOARD_NATS_URL); \
         set SWITCHBOARD_REQUIRE_NATS=1 to make this a failure."
    );
    None
}

/// The shared server's URL, or `None` (after saying why) when it does not
/// answer and the tests are not required.
pub fn shared_server() -> Option<String> {
    let url =
        std::env::var("SWITCHBOARD_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let addr = url.trim_start_matches("nats://").to_owned();
    let reachable = addr
        .parse()
        .ok()
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    if reachable {
        Some(url)
    } else {
        unavailable(format!("no NATS server answers at {url}"))
    }
}

/// A subject prefix no other test (or earlier run) uses.
pub fn unique_prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!(
        "sbtest.{test}.p{}x{}x{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A nats-server of the test's own, on a free port, with JetStream in a
/// temporary directory that survives restarts.
pub struct PrivateServer {
    child: Option<Child>,
    pub port: u16,
    store: tempfile::TempDir,
    bin: PathBuf,
    config: Option<PathBuf>,
}

impl PrivateServer {
    pub fn start() -> Option<PrivateServer> {
        PrivateServer::start_with(None)
    }

    /// A private server reading `config` (nats-server's configuration
    /// format) besides the usual flags: authorisation, permissions.
    pub fn with_config(config: &str) -> Option<PrivateServer> {
        PrivateServer::start_with(Some(config))
    }

    fn start_with(config: Option<&str>) -> Option<PrivateServer> {
        let bin = PathBuf::from(
            std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into()),
        );
        if Command::new(&bin).arg("--version").output().is_err() {
            return unavailable(format!("`{}` cannot be run", bin.display()));
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("port").port()
        };
        let store = tempfile::tempdir().expect("temp dir");
        let config = config.map(|text| {
            let path = store.path().join("server.conf");
            std::fs::write(&path, text).expect("config written");
            path
        });
        let mut server = PrivateServer { child: None, port, store, bin, config };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new(&self.bin);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `done` until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// Publishes one message through a bare protocol connection, with
/// `header_block` sent as it is (which a client library would refuse to
/// build), then waits for the server's PONG: once it came back, the server
/// has routed the message. `user` logs in when given.
pub fn raw_publish(
    port: u16,
    user: Option<(&str, &str)>,
    subject: &str,
    header_block: &[u8],
    payload: &[u8],
) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?; // INFO
    let auth = user.map(|(u, p)| format!(r#","user":"{u}","pass":"{p}""#)).unwrap_or_default();
    let mut out = stream;
    // Log in first, and hear what the server says to that: a refused login
    // ends here, with the server's error.
    write!(
        out,
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1{auth}}}\r\nPING\r\n"
    )?;
    out.flush()?;
    let said = until_pong(&mut reader)?;
    if !said.is_empty() {
        return Ok(said);
    }
    let total = header_block.len() + payload.len();
    write!(out, "HPUB {subject} {} {total}\r\n", header_block.len())?;
    out.write_all(header_block)?;
    out.write_all(payload)?;
    out.write_all(b"\r\nPING\r\n")?;
    out.flush()?;
    until_pong(&mut reader)
}

/// Reads the server's lines up to its PONG (or the end of the connection),
/// and returns what it said besides PINGs and OKs.
fn until_pong(reader: &mut impl std::io::BufRead) -> std::io::Result<String> {
    let mut said = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.starts_with("PONG") {
            return Ok(said);
        }
        if !line.starts_with("PING") && !line.starts_with("+OK") {
            said.push_str(&line);
        }
    }
}
