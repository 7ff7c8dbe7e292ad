//! This host's cluster membership: it trades the join token for a member certificate with
//! the first scheduler that takes it (seeds as seeds, others as peers), keeps it renewed,
//! and hands the TLS configurations to the piece server, the parent dialer and the
//! scheduler sessions. Without a token, membership is off, and the daemon says so once.

use std::sync::Arc;
use std::time::Duration;

use ferry_membership::creds::ClientAuth;
use ferry_membership::join::{Renewal, Source};
use ferry_membership::{Member, MembershipError, Role};
use tokio_util::sync::CancellationToken;

use crate::{DaemonError, DaemonOptions};

/// What the rest of the daemon needs of membership; all `None` when it is off.
pub struct Membership {
    pub client: Option<Arc<rustls::ClientConfig>>,
    pub server: Option<Arc<rustls::ServerConfig>>,
    pub renewal: Option<Renewal>,
}

/// Joins with `opts.join_token` at the schedulers, trying again every second until one
/// issues a certificate (schedulers may start after the daemon). `None` when cancelled first.
pub async fn join(opts: &DaemonOptions, cancel: &CancellationToken) -> Result<Option<Membership>, DaemonError> {
    let Some(token) = opts.join_token.clone() else {
        tracing::warn!(
            "cluster membership is off: any process that reaches this daemon's piece port can read the tasks it \
             holds, and any host can pose as it to the schedulers (use --join-token-file)"
        );
        return Ok(Some(Membership { client: None, server: None, renewal: None }));
    };
    if opts.schedulers.is_empty() {
        return Err(DaemonError::NoScheduler(
            "--join-token-file needs --scheduler: joining through the manager is not supported yet".into(),
        ));
    }
    let member = Member::new(opts.host_id.clone(), if opts.seed { Role::Seed } else { Role::Peer });
    let mut warned = false;
    let creds = loop {
        match ferry_membership::join::join(&opts.schedulers, &token, member.clone()).await {
            Ok(c) => break c,
            Err(e @ (MembershipError::PinMismatch | MembershipError::TokenRefused)) => return Err(e.into()),
            Err(e) if !warned => {
                tracing::warn!(error = %e, "could not join the cluster yet; trying again every second");
                warned = true;
            }
            Err(e) => tracing::debug!(error = %e, "join"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    tracing::info!(%member, token = %token.id, "joined the cluster");
    let source = Source::Token { addrs: opts.schedulers.clone(), token };
    Ok(Some(Membership {
        client: Some(creds.client_config()?),
        server: Some(creds.server_config(ClientAuth::Required)?),
        renewal: Some(Renewal { creds, source }),
    }))
}
