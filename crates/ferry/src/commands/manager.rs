//! `ferry manager`.

use tokio_util::sync::CancellationToken;

use crate::cli::ManagerArgs;
use crate::{exit, Exit};

pub async fn run(a: ManagerArgs) -> Result<(), Exit> {
    let usage = |m: String| Exit::new(exit::USAGE, m);
    let database = match a.database {
        Some(d) => d,
        None => {
            std::fs::create_dir_all(&a.data_dir)
                .map_err(|e| usage(format!("--data-dir {}: {e}", a.data_dir.display())))?;
            format!("sqlite://{}?mode=rwc", a.data_dir.join("manager.db").display())
        }
    };
    let metrics_listen =
        ferry_telemetry::parse_listen(&a.metrics_listen).map_err(|e| usage(format!("--metrics-listen {e}")))?;
    let opts = ferry_manager::ManagerOptions {
        database,
        rest_listen: a.listen,
        grpc_listen: a.grpc_listen,
        metrics_listen,
        root_password: a.root_password,
        keepalive_interval: a.keepalive_interval,
        job_workers: a.job_workers,
        job_lease: a.job_lease,
        ca_certs: a.ca_certs,
    };
    let cancel = CancellationToken::new();
    let m = ferry_manager::start(opts, cancel.clone()).await.map_err(|e| {
        let code = match e {
            ferry_manager::ManagerError::BadRequest(_) => exit::USAGE,
            _ => exit::FAILURE,
        };
        Exit::new(code, e.to_string())
    })?;
    if let Some(p) = &m.generated_root_password {
        eprintln!(
            "ferry manager: created user `root` with password {p} (shown once; set --root-password or \
             FERRY_MANAGER_ROOT_PASSWORD_FILE to choose it)"
        );
    }
    let line = serde_json::json!({
        "ready": "manager",
        "addr": m.rest_addr.to_string(),
        "grpc": m.grpc_addr.to_string(),
        "metrics": m.metrics_addr.map(|a| a.to_string()),
    });
    println!("{line}");
    crate::shutdown_signal().await;
    cancel.cancel();
    let _ = m.done.await;
    Ok(())
}
