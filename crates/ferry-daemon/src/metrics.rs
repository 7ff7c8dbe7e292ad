//! The daemon's Prometheus metrics (`ferry_daemon_*`) and readiness.
//!
//! Most values are the counters the local API's `Stats` reports too, read at scrape time by a
//! collector, so the two never disagree. Bytes are counted once each, where they land: a
//! piece from a parent or the origin when it is verified, a cache hit when a request is
//! answered from what this host held.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferry_proto::scheduler::FailureCode;
use ferry_telemetry::{encode_counter, encode_gauge, Readiness, Registry, Unit, NO_LABELS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::counters::{Counters, FAILURE_CODES};
use crate::ctx::Ctx;

/// The registry `/metrics` serves.
pub fn registry(ctx: &Arc<Ctx>) -> Registry {
    let mut r = Registry::with_prefix("ferry_daemon");
    r.register_with_unit(
        "piece_download",
        "Time to fetch one piece from a parent, from request to verified",
        Unit::Seconds,
        ctx.env.counters.piece_seconds.clone(),
    );
    r.register_collector(Box::new(DaemonCollector(ctx.clone())));
    r
}

/// Ready when a scheduler session is up and the data directory takes writes.
pub fn readiness(ctx: &Arc<Ctx>) -> Readiness {
    let ctx = ctx.clone();
    Arc::new(move || {
        if !ctx.schedulers.any_live() {
            return Some("no scheduler session is up".to_owned());
        }
        let probe = ctx.env.opts.data_dir.join(".ready-probe");
        match std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe)) {
            Ok(()) => None,
            Err(e) => Some(format!("the data directory {} takes no writes: {e}", ctx.env.opts.data_dir.display())),
        }
    })
}

struct DaemonCollector(Arc<Ctx>);

impl std::fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DaemonCollector")
    }
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    Counters::get(c)
}

impl Collector for DaemonCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let ctx = &self.0;
        let c = &ctx.env.counters;
        let bytes = Some(&Unit::Bytes);
        let by_source = [
            ([("source", "origin")], get(&c.bytes_from_origin)),
            ([("source", "peer")], get(&c.bytes_from_peers)),
            ([("source", "cache")], get(&c.bytes_from_cache)),
        ];
        encode_counter(&mut enc, "downloaded", "Bytes this host's requests got, by source", bytes, &by_source)?;
        let received = [(NO_LABELS, get(&c.bytes_received_from_peers))];
        let help = "Piece bytes parents sent this host, kept or not (duplicates, pieces that failed verification)";
        encode_counter(&mut enc, "peer_received", help, bytes, &received)?;
        let uploaded = [(NO_LABELS, ctx.server_stats.bytes_uploaded.load(Ordering::Relaxed))];
        encode_counter(&mut enc, "uploaded", "Bytes this host served to other peers", bytes, &uploaded)?;
        let pieces = [
            ([("source", "origin")], get(&c.pieces_from_origin)),
            ([("source", "peer")], get(&c.pieces_from_peers)),
            ([("source", "resumed")], get(&c.pieces_resumed)),
        ];
        encode_counter(&mut enc, "pieces", "Pieces verified and stored, by source", None, &pieces)?;
        let rejected = [(NO_LABELS, get(&c.pieces_rejected))];
        encode_counter(&mut enc, "pieces_rejected", "Pieces that failed verification", None, &rejected)?;
        let bts = [(NO_LABELS, get(&c.back_to_source))];
        encode_counter(&mut enc, "back_to_source", "Origin reads this host started", None, &bts)?;
        let failures: Vec<([(&str, &str); 1], u64)> = (1..FAILURE_CODES)
            .filter_map(|i| {
                let code = FailureCode::try_from(i as i32).ok()?;
                Some(([("kind", failure_kind(code))], get(&c.failures[i])))
            })
            .collect();
        encode_counter(&mut enc, "task_failures", "Tasks that failed on this host, by kind", None, &failures)?;
        let mirror = [
            ([("outcome", "p2p")], get(&c.mirror_p2p)),
            ([("outcome", "passed_through")], get(&c.mirror_passed_through)),
            ([("outcome", "failed")], get(&c.mirror_failed)),
        ];
        let help = "Registry mirror and proxy requests: served through P2P, passed through to the registry, failed";
        encode_counter(&mut enc, "proxy_requests", help, None, &mirror)?;
        let gc = &ctx.env.gc;
        let removed = [(NO_LABELS, gc.removed_tasks.load(Ordering::Relaxed))];
        encode_counter(&mut enc, "gc_removed_tasks", "Tasks the cache collector removed", None, &removed)?;
        let removed = [(NO_LABELS, gc.removed_bytes.load(Ordering::Relaxed))];
        encode_counter(&mut enc, "gc_removed", "Bytes the cache collector freed", bytes, &removed)?;
        self.encode_gauges(&mut enc)
    }
}

impl DaemonCollector {
    fn encode_gauges(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let ctx = &self.0;
        let (mut running, mut complete) = (0i64, 0i64);
        for h in ctx.env.registry.all() {
            match h.succeeded() {
                true => complete += 1,
                false if !h.failed() => running += 1,
                false => {}
            }
        }
        let tasks = [([("state", "running")], running), ([("state", "complete")], complete)];
        encode_gauge(enc, "tasks", "Tasks this host holds or fetches, by state", None, &tasks)?;
        let active = [(NO_LABELS, ctx.server_stats.connections_active.load(Ordering::Relaxed) as i64)];
        encode_gauge(enc, "upload_connections", "Children connected to this host's piece server", None, &active)?;
        let live = [(NO_LABELS, ctx.schedulers.live_count() as i64)];
        encode_gauge(enc, "scheduler_sessions", "Schedulers this host has a session with", None, &live)
    }
}

fn failure_kind(code: FailureCode) -> &'static str {
    match code {
        FailureCode::Unspecified => "unspecified",
        FailureCode::OriginStatus => "origin_status",
        FailureCode::OriginUnreachable => "origin_unreachable",
        FailureCode::OriginChanged => "origin_changed",
        FailureCode::Unauthorized => "unauthorized",
        FailureCode::DigestMismatch => "digest_mismatch",
        FailureCode::StorageFull => "storage_full",
        FailureCode::Timeout => "timeout",
        FailureCode::Cancelled => "cancelled",
        FailureCode::NoScheduler => "no_scheduler",
        FailureCode::OriginBadResponse => "origin_bad_response",
        FailureCode::Internal => "internal",
    }
}
