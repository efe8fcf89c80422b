//! `rediss://` through the `tls` feature: a private redis-server with a TLS port and a test CA,
//! the primitives called over a verified TLS connection.
#![cfg(feature = "tls")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Server;
use redis_primitives::ratelimit::{RateLimiter, SlidingWindow};
use redis_primitives::script;

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl").current_dir(dir).args(args).output().is_ok_and(|o| o.status.success());
    assert!(ok, "openssl {args:?} failed; the TLS test needs openssl (`apt-get install openssl`)");
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
}

#[tokio::test]
async fn primitives_work_over_rediss() {
    let dir = std::env::temp_dir().join(format!("rp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certs(&dir);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let server = Server::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &path("server.pem"),
        "--tls-key-file",
        &path("server.key"),
        "--tls-ca-cert-file",
        &path("ca.pem"),
        "--tls-auth-clients",
        "no",
    ]);

    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(dir.join("ca.pem")).unwrap()),
    };
    let client = redis::Client::build_with_tls(format!("rediss://127.0.0.1:{tls_port}/"), certs).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    assert_eq!(script::preload_async(&mut con).await.unwrap(), script::bundle().len());
    let limiter = RateLimiter::new("tls", SlidingWindow::new(1, Duration::from_secs(60)).unwrap()).unwrap();
    assert!(limiter.check(&mut con, "u", 1).await.unwrap().allowed);
    assert!(!limiter.check(&mut con, "u", 1).await.unwrap().allowed);
    // The plain port saw the same state: it is one server.
    let card: i64 = server.cmd(&["LLEN", &limiter.key("u").unwrap()]);
    assert_eq!(card, 1);

    // Without the CA, the server's certificate is refused.
    let untrusted = redis::Client::open(format!("rediss://127.0.0.1:{tls_port}/")).unwrap();
    assert!(untrusted.get_multiplexed_async_connection().await.is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
