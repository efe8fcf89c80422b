//! `cargo bench --bench primitives [-- --runs N --ops-c1 N --ops-c64 N --out FILE]`: starts a
//! private redis-server (no persistence), runs the suite and writes BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "suite/mod.rs"]
mod suite;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let config = suite::Config {
        runs: arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(5),
        ops_c1: arg("--ops-c1").and_then(|v| v.parse().ok()).unwrap_or(3_000),
        ops_c64: arg("--ops-c64").and_then(|v| v.parse().ok()).unwrap_or(20_000),
    };
    let out = arg("--out").unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md").into());
    let server = common::Server::start();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = runtime.block_on(suite::run(&server.client(), config));
    let md = report.to_markdown();
    print!("{md}");
    std::fs::write(&out, md).unwrap();
    eprintln!("wrote {out}");
}
