//! Servers that misbehave on purpose, for fault tests: one that answers every command with
//! garbage, one that accepts and never answers (a black hole), one that closes every connection
//! at once, and an address where nothing listens.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a [`FakeServer`] does with each connection.
#[derive(Debug, Clone)]
enum Mode {
    /// Reads commands and answers each with these bytes.
    Reply(Vec<u8>),
    /// Reads and never answers.
    Silent,
    /// Closes the connection as soon as it is accepted.
    Close,
}

/// A fake server on a free loopback port. Stops accepting when dropped.
pub struct FakeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    commands: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    /// Answers every command with a reply that is not valid RESP.
    pub fn garbage() -> FakeServer {
        FakeServer::start(Mode::Reply(b"!garbage\x00\xff\r\n".to_vec()))
    }

    /// Answers every command with the integer 42: valid RESP, wrong shape for almost every call.
    pub fn wrong_shape() -> FakeServer {
        FakeServer::start(Mode::Reply(b":42\r\n".to_vec()))
    }

    /// Answers every command with these raw bytes.
    pub fn replying(bytes: &[u8]) -> FakeServer {
        FakeServer::start(Mode::Reply(bytes.to_vec()))
    }

    /// Accepts connections, reads everything, never answers (a paused or partitioned server).
    pub fn black_hole() -> FakeServer {
        FakeServer::start(Mode::Silent)
    }

    /// Accepts connections and closes each at once.
    pub fn closing() -> FakeServer {
        FakeServer::start(Mode::Close)
    }

    fn start(mode: Mode) -> FakeServer {
        let listener = loop {
            let port = crate::next_free_port();
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                break l;
            }
        };
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let commands = Arc::new(AtomicU64::new(0));
        let (stop2, commands2) = (stop.clone(), commands.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        match &mode {
                            Mode::Close => drop(stream),
                            Mode::Silent => {
                                // Keep it open and drain it, so the client's writes never block.
                                let mut s = stream.try_clone().expect("clone stream");
                                held.push(stream);
                                let c = commands2.clone();
                                std::thread::spawn(move || drain(&mut s, &c));
                            }
                            Mode::Reply(bytes) => {
                                let (bytes, c) = (bytes.clone(), commands2.clone());
                                std::thread::spawn(move || answer(stream, &bytes, &c));
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeServer { port, stop, commands, thread: Some(thread) }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A client for this address that sends nothing when connecting (see [`quiet_client`]), so
    /// a connection to a black hole or a garbage server is established and the calls under
    /// test meet the fault, not the handshake.
    pub fn client(&self) -> redis::Client {
        quiet_client(&self.url())
    }

    /// Commands received so far (over every connection).
    pub fn commands(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client that sends no command when it connects (redis-rs otherwise pipelines
/// `CLIENT SETINFO`): connecting then only opens the socket, and the server's command counts
/// measure the calls under test only.
pub fn quiet_client(url: &str) -> redis::Client {
    let info = redis::Client::open(url).expect("client").get_connection_info().clone();
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    redis::Client::open(info.set_redis_settings(settings)).expect("client")
}

/// A loopback URL where nothing listens (a server that is down).
pub fn dead_url() -> String {
    loop {
        let port = crate::next_free_port();
        // Bound and released: free now, and nothing of ours will listen there.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return format!("redis://127.0.0.1:{port}/");
        }
    }
}

fn drain(stream: &mut TcpStream, commands: &AtomicU64) {
    let mut reader = BufReader::new(stream);
    while read_command(&mut reader).is_some() {
        commands.fetch_add(1, Ordering::Relaxed);
    }
}

fn answer(stream: TcpStream, bytes: &[u8], commands: &AtomicU64) {
    let mut writer = stream.try_clone().expect("clone stream");
    let mut reader = BufReader::new(stream);
    while read_command(&mut reader).is_some() {
        commands.fetch_add(1, Ordering::Relaxed);
        if writer.write_all(bytes).is_err() {
            return;
        }
    }
}

/// Reads one RESP command (`*N` then N bulk strings, or an inline line); `None` at EOF.
fn read_command(reader: &mut impl BufRead) -> Option<()> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let Some(n) = line.trim_end().strip_prefix('*') else { return Some(()) };
    let n: usize = n.parse().ok()?;
    for _ in 0..n {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let len: usize = line.trim_end().strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0; len + 2];
        reader.read_exact(&mut buf).ok()?;
    }
    Some(())
}
