//! Talking to the local daemon over its Unix socket.

use std::path::{Path, PathBuf};

use ferry_proto::daemon::daemon_client::DaemonClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// Connects to the daemon's local API; the error says how to start a daemon.
pub async fn connect(socket: &Path) -> Result<DaemonClient<Channel>, String> {
    let path: PathBuf = socket.to_owned();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|_| {
            format!(
                "no daemon is listening on {}; start one with `ferry daemon --scheduler HOST:8002` \
                 (or pass --socket)",
                socket.display()
            )
        })?;
    Ok(DaemonClient::new(channel).max_decoding_message_size(64 << 20))
}
