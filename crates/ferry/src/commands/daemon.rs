//! `ferry daemon`: flags -> options -> validate -> run.

use std::time::Duration;

use ferry_daemon::mirror::proxy::ProxyOptions;
use ferry_daemon::DaemonOptions;
use ferry_types::{HostId, PieceLayout};
use tokio_util::sync::CancellationToken;

use crate::cli::DaemonArgs;
use crate::{exit, Exit};

fn options(a: DaemonArgs) -> Result<DaemonOptions, Exit> {
    let usage = |m: String| Exit::new(exit::USAGE, m);
    let proxy = proxy_options(&a).map_err(usage)?;
    let credentials = match &a.registry_auth {
        Some(p) => Some(ferry_backend::registry_auth::RegistryCredentials::load(p).map_err(usage)?),
        None => None,
    };
    let object_store = object_store_config(&a);
    let mut o = DaemonOptions::new(a.data_dir, a.schedulers);
    o.object_store = object_store;
    o.host_id = match a.host_id {
        Some(h) => HostId::new(h).map_err(|e| usage(e.to_string()))?,
        None => HostId::random(),
    };
    o.socket = a.socket;
    o.join_token = match &a.join_token_file {
        Some(p) => Some(ferry_membership::JoinToken::read(p).map_err(|e| usage(format!("--join-token-file: {e}")))?),
        None => None,
    };
    o.managers = a.managers;
    o.manager_refresh = a.manager_refresh;
    if let Some(h) = a.hostname {
        o.hostname = h;
    }
    o.idc = a.idc;
    o.location = a.location;
    o.seed = a.seed;
    o.listen_ip = a.listen_ip;
    o.advertise_ip = a.advertise_ip;
    o.piece_port = a.piece_port;
    o.zone = a.zone;
    o.rack = a.rack;
    o.upload_slots = a.upload_slots;
    o.upload_limit = a.upload_rate.map(|r| std::sync::Arc::new(ferry_transport::RateLimit::new(r.0)));
    o.download_limit = a.download_rate.map(|r| std::sync::Arc::new(ferry_transport::RateLimit::new(r.0)));
    o.pieces_in_flight = a.pieces_in_flight.max(1);
    o.back_to_source_after = a.back_to_source_after;
    o.piece_timeout = a.piece_timeout;
    #[cfg(feature = "fault-injection")]
    {
        o.corrupt_uploads = a.corrupt_uploads;
    }
    o.origin_retries = a.origin_retries;
    o.unwanted_read_timeout = a.unwanted_read_timeout;
    if a.disk_low_watermark > a.disk_high_watermark {
        return Err(usage(format!(
            "--disk-low-watermark {} is above --disk-high-watermark {}; the low mark must be the lower",
            a.disk_low_watermark, a.disk_high_watermark
        )));
    }
    o.gc = ferry_daemon::gc::GcPolicy {
        quota: a.cache_quota.map(|q| q.0),
        ttl: a.cache_ttl,
        high_watermark: a.disk_high_watermark as f64 / 100.0,
        low_watermark: a.disk_low_watermark as f64 / 100.0,
        interval: a.gc_interval.max(Duration::from_millis(100)),
    };
    o.ca_certs = a.ca_certs;
    o.insecure_origins = a.insecure_origins;
    o.always_authorize = a.always_authorize;
    o.mirror = mirror_options(&a.mirror_listen, &a.mirror_upstream, a.mirror_insecure.clone()).map_err(usage)?;
    if let Some(m) = o.mirror.as_mut() {
        m.timeout = a.mirror_timeout;
        m.proxy = proxy;
        m.credentials = credentials;
        m.public = a.mirror_public.clone();
    }
    o.metrics_listen =
        ferry_telemetry::parse_listen(&a.metrics_listen).map_err(|e| usage(format!("--metrics-listen {e}")))?;
    o.health_listen =
        ferry_telemetry::parse_listen(&a.health_listen).map_err(|e| usage(format!("--health-listen {e}")))?;
    if let Some(ps) = a.piece_size {
        let ps32 = u32::try_from(ps.0).map_err(|_| usage(format!("--piece-size {ps} is too large")))?;
        PieceLayout::new(0, ps32).map_err(|e| usage(format!("--piece-size: {e}")))?;
        o.piece_size = Some(ps32);
    }
    Ok(o)
}

/// Object-store settings given as flags (or in the config file), by `object_store`'s names.
fn object_store_config(a: &DaemonArgs) -> ferry_backend::object::ObjectStoreConfig {
    let pairs = |v: &[(&str, &Option<String>)]| -> Vec<(String, String)> {
        v.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone()))).collect()
    };
    ferry_backend::object::ObjectStoreConfig {
        s3: pairs(&[
            ("aws_access_key_id", &a.s3_access_key_id),
            ("aws_secret_access_key", &a.s3_secret_access_key),
            ("aws_session_token", &a.s3_session_token),
            ("aws_region", &a.s3_region),
            ("aws_endpoint", &a.s3_endpoint),
        ]),
        azure: pairs(&[
            ("azure_storage_account_name", &a.azure_storage_account),
            ("azure_storage_account_key", &a.azure_storage_access_key),
        ]),
        gcs: pairs(&[("google_service_account_key", &a.gcs_service_account_key)]),
    }
}

fn mirror_options(
    listen: &str,
    upstream: &str,
    insecure: Vec<String>,
) -> Result<Option<ferry_daemon::mirror::MirrorOptions>, String> {
    if listen == "off" {
        return Ok(None);
    }
    let listen =
        listen.parse().map_err(|_| format!("--mirror-listen `{listen}` is not IP:PORT (or `off` for no mirror)"))?;
    let upstream = url::Url::parse(upstream)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| {
            format!("--mirror-upstream `{upstream}` is not an http(s) URL, e.g. https://registry-1.docker.io")
        })?;
    Ok(Some(ferry_daemon::mirror::MirrorOptions { listen, upstream, insecure, ..Default::default() }))
}

fn proxy_options(a: &DaemonArgs) -> Result<Option<ProxyOptions>, String> {
    let hosts: Vec<String> = a.proxy_hosts.iter().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()).collect();
    if hosts.is_empty() {
        return Ok(None);
    }
    if a.mirror_listen == "off" {
        return Err("--proxy-host needs the mirror's port: the proxy serves there (drop --mirror-listen off)".into());
    }
    let mut o = ProxyOptions::new(hosts);
    if !a.proxy_rules.is_empty() {
        o.rules = a
            .proxy_rules
            .iter()
            .map(|r| regex::Regex::new(r).map_err(|e| format!("--proxy-rule `{r}` is not a valid regex: {e}")))
            .collect::<Result<_, _>>()?;
    }
    o.ca = a.proxy_ca_cert.clone().zip(a.proxy_ca_key.clone());
    Ok(Some(o))
}

pub async fn run(a: DaemonArgs) -> Result<(), Exit> {
    let opts = options(a)?;
    let cancel = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(ferry_daemon::run(opts.clone(), cancel.clone(), Some(ready_tx)));
    if let Ok(ready) = ready_rx.await {
        crate::announce_daemon_ready(&ready);
    }
    let stop = cancel.clone();
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        stop.cancel();
    });
    match daemon.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Exit::new(exit::FAILURE, e.to_string())),
        Err(e) => Err(Exit::new(exit::FAILURE, format!("daemon crashed: {e}"))),
    }
}
