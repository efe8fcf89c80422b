//! The benchmark suite (see `suite/`).
//!
//! - `cargo bench --bench primitives [-- --runs N --ops-c1 N --ops-c64 N --out FILE]`: starts a
//!   private redis-server (no persistence), runs the suite and writes BENCHMARKS.md.
//! - `cargo bench --bench primitives -- --cost-only [--only JOB] [--runs N]`: only the server-cost
//!   table, printed (the loop for tuning a script's cost).
//! - `cargo test` runs this binary too (`test = true` in Cargo.toml), without `--bench`: a smoke
//!   run of every case with a few operations, checking that the report is complete. Figures are
//!   not asserted there: speed is measured by `cargo bench`, never in tests.

mod suite;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    // cargo bench passes --bench; cargo test does not.
    let full = std::env::args().any(|a| a == "--bench");
    let config = if full {
        suite::Config {
            runs: arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(5),
            ops_c1: arg("--ops-c1").and_then(|v| v.parse().ok()).unwrap_or(3_000),
            ops_c64: arg("--ops-c64").and_then(|v| v.parse().ok()).unwrap_or(20_000),
        }
    } else {
        suite::Config { runs: 1, ops_c1: 200, ops_c64: 128 }
    };
    let server = harness::Server::start();
    if full && std::env::args().any(|a| a == "--cost-only") {
        // Only the server-cost table, on stdout (BENCHMARKS.md untouched): the loop for tuning a
        // script. `--only TEXT` keeps the jobs whose name contains TEXT.
        let (rounds, n, limit) = (arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(7), 2000, 1000);
        let rows = suite::cost::run(&server.client(), rounds, n, limit, arg("--only").as_deref());
        print!("{}", suite::cost::markdown(&rows, rounds, n, limit));
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = runtime.block_on(suite::run(&server.client(), config));
    if full {
        let out =
            arg("--out").unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md").into());
        let md = report.to_markdown();
        print!("{md}");
        std::fs::write(&out, md).unwrap();
        eprintln!("wrote {out}");
    } else {
        smoke(&report);
        println!("benchmark smoke run: {} cases, report complete", suite::cases().len());
    }
}

/// What the smoke run checks: every case ran, for each variant, and the report renders it.
fn smoke(report: &suite::Report) {
    assert_eq!(report.rows.len(), suite::cases().len() * 2);
    assert!(report.rows.iter().all(|r| r.ours[0].ops_per_sec > 0.0 && r.raw[0].ops_per_sec > 0.0));
    assert!(report.batch[0].0 > 0.0 && report.batch[0].1 > 0.0);
    let md = report.to_markdown();
    for case in suite::cases() {
        assert!(md.contains(case.name), "{} missing from the report", case.name);
    }
    assert!(md.contains("## Memory") && md.contains("GCRA, limit 100"));
    // Each primitive's server cost was measured (the script ran).
    assert!(report.server_cost.iter().all(|(_, usec)| *usec > 0.0), "{:?}", report.server_cost);
    #[cfg(feature = "tower")]
    assert!(md.contains("## Tower layer") && !md.contains("NaN"), "the tower layer section");
}
