//! Runs the benchmark suite's code path for a few operations, so it cannot rot. Figures are not
//! asserted: speed is measured by `cargo bench`, not in tests.

mod common;
#[path = "../benches/suite/mod.rs"]
mod suite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmark_runs_every_case_and_renders_its_report() {
    let server = common::Server::start();
    let report = suite::run(&server.client(), suite::Config { runs: 1, ops_c1: 200, ops_c64: 128 }).await;
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
}
