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
        "get",
        "put",
        "put_if_version",
        "append",
        "append10",
        "lock",
        "rate_limit",
        "put_many",
        "put_many_vs_single",
        "list",
        "query",
        "read_stream",
        "read_all",
    ] {
        let cell = format!("| {workload} |");
        assert_eq!(
            stdout.matches(&cell).count(),
            6,
            "{workload}: 3 backends x 2 concurrency levels:\n{stdout}"
        );
    }
    // A delay, measured once per backend.
    assert_eq!(stdout.matches("| subscription |").count(), 3, "{stdout}");
}

/// `--json` writes every row it prints.
#[test]
fn json_output_holds_the_rows() {
    let dir = std::env::temp_dir().join(format!("kernel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("rows.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kernel-bench"))
        .args([
            "--smoke",
            "--backend",
            "memory",
            "--workloads",
            "get,subscription",
        ])
        .arg("--json")
        .arg(&path)
        .output()
        .expect("run kernel-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("the JSON file");
    let rows: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let rows = rows.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 3, "get at 1 and 2, one subscription: {text}");
    for field in [
        "backend",
        "workload",
        "concurrency",
        "kernel_ops",
        "raw_ops",
        "ratio",
        "p50_us",
        "p99_us",
    ] {
        assert!(rows[0].get(field).is_some(), "{field} missing: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
