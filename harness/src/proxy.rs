//! A TCP proxy in front of a real server whose behaviour can be switched mid-run, for fault
//! tests of calls made on connections that were healthy when they were opened (a guard keeps
//! the connection it was acquired on): pass everything, go silent, answer garbage, close every
//! connection, or lose the replies to chosen commands (they run on the server; their replies
//! never arrive, and the client's connection is closed, as when a network drops mid-call).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a [`Proxy`] does with traffic from now on (also on connections already open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards both ways.
    Pass,
    /// Reads every command and forwards nothing (a paused or partitioned server).
    Silent,
    /// Answers every read from the client with bytes that are not valid RESP.
    Garbage,
    /// Closes every connection, and each new one at once.
    Close,
}

struct Shared {
    mode: Mutex<ProxyMode>,
    /// Lose the reply to the next `n` commands containing these bytes.
    lose: Mutex<Option<(Vec<u8>, u64)>>,
    lost: AtomicU64,
    stop: AtomicBool,
    clients: Mutex<Vec<TcpStream>>,
}

/// A proxy on a free loopback port in front of `127.0.0.1:<upstream>`. Stops when dropped.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy to the server listening on `upstream`, in [`ProxyMode::Pass`].
    pub fn start(upstream: u16) -> Proxy {
        let listener = loop {
            if let Ok(l) = TcpListener::bind(("127.0.0.1", crate::next_free_port())) {
                break l;
            }
        };
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking listener");
        let shared = Arc::new(Shared {
            mode: Mutex::new(ProxyMode::Pass),
            lose: Mutex::new(None),
            lost: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            clients: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => connect(&s, client, upstream),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Proxy { port, shared, thread: Some(thread) }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A client for the proxy.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// Switches what the proxy does, for open connections too.
    pub fn set_mode(&self, mode: ProxyMode) {
        *self.shared.mode.lock().unwrap() = mode;
        if mode == ProxyMode::Close {
            for c in self.shared.clients.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// The next `times` commands whose bytes contain `pattern` (e.g. a script's SHA1) reach the
    /// server, but their replies are dropped and their client connection closed.
    pub fn lose_replies_to(&self, pattern: &[u8], times: u64) {
        *self.shared.lose.lock().unwrap() = Some((pattern.to_vec(), times));
    }

    /// Replies dropped so far.
    pub fn lost(&self) -> u64 {
        self.shared.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.set_mode(ProxyMode::Close);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mode(s: &Shared) -> ProxyMode {
    *s.mode.lock().unwrap()
}

fn connect(s: &Arc<Shared>, client: TcpStream, upstream: u16) {
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    if mode(s) == ProxyMode::Close {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
    if let Ok(c) = client.try_clone() {
        s.clients.lock().unwrap().push(c);
    }
    // Set when a command whose reply must be lost went upstream: its reply closes the client.
    let cut = Arc::new(AtomicBool::new(false));
    let (sa, cut_a) = (s.clone(), cut.clone());
    std::thread::spawn(move || client_to_server(&sa, client, server, &cut_a));
    let sb = s.clone();
    std::thread::spawn(move || server_to_client(&sb, s2, c2, &cut));
}

fn client_to_server(s: &Shared, mut client: TcpStream, mut server: TcpStream, cut: &AtomicBool) {
    let _ = client.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    while !s.stop.load(Ordering::Relaxed) {
        let n = match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue;
            }
            Err(_) => break,
        };
        let chunk = &buf[..n];
        match mode(s) {
            ProxyMode::Close => break,
            ProxyMode::Silent => continue,
            ProxyMode::Garbage => {
                if client.write_all(b"!garbage\x00\xff\r\n").is_err() {
                    break;
                }
                continue;
            }
            ProxyMode::Pass => {}
        }
        if let Some((pattern, left)) = s.lose.lock().unwrap().as_mut()
            && *left > 0
            && chunk.windows(pattern.len()).any(|w| w == pattern.as_slice())
        {
            *left -= 1;
            cut.store(true, Ordering::SeqCst);
        }
        if server.write_all(chunk).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

fn server_to_client(s: &Shared, mut server: TcpStream, mut client: TcpStream, cut: &AtomicBool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            // The command ran (this is its reply, or one before it): drop it and the connection.
            s.lost.fetch_add(1, Ordering::Relaxed);
            break;
        }
        match mode(s) {
            ProxyMode::Pass => {
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            ProxyMode::Close => break,
            ProxyMode::Silent | ProxyMode::Garbage => {}
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}
