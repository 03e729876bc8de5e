//! The harness works: every workload on every backend for a moment (no timing is asserted;
//! speed is measured in release builds, see docs/performance.md).

use std::process::Command;

#[test]
fn every_workload_runs_on_every_backend() {
    let out = Command::new(env!("CARGO_BIN_EXE_kernel-bench"))
        .args(["--smoke", "--backend", "all"])
        .output()
        .expect("run kernel-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for backend in ["## memory", "## postgres", "## redis"] {
        assert!(stdout.contains(backend), "{backend} missing:\n{stdout}");
    }
    for workload in [
        "| get |",
        "| put |",
        "| put_if_version |",
        "| append |",
        "| append10 |",
    ] {
        assert_eq!(
            stdout.matches(workload).count(),
            6,
            "{workload}: 3 backends x 2 concurrency levels:\n{stdout}"
        );
    }
}
