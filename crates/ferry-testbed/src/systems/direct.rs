//! `direct`: every host downloads the file from the origin with curl (or pulls the image from
//! the registry with skopeo).

use std::process::Stdio;
use std::time::Instant;

use anyhow::Result;

use crate::image;
use crate::net::ORIGIN_IP;
use crate::proc::{busy_fraction, cpu_ticks, spawn_in, wait};
use crate::scenario::{since, HostResult, Run, SystemResult};

pub async fn run(r: &Run) -> Result<SystemResult> {
    let origin = r.start_origin()?;
    let dir = r.work.join("direct");
    std::fs::create_dir_all(&dir)?;
    let before = cpu_ticks();
    let t0 = Instant::now();
    let mut jobs = vec![];
    for (i, h) in r.hosts.iter().enumerate() {
        let ns = r.net.node(h).ns.clone();
        let out = dir.join(h);
        let args = match (&r.image, &r.model) {
            (Some(_), _) => image::pull_args(&format!("{ORIGIN_IP}:{}", image::REGISTRY_PORT), &out),
            (_, Some(m)) => crate::model::direct_args(m, &out),
            _ => vec!["curl".into(), "-sS".into(), "-o".into(), out.display().to_string(), r.url()],
        };
        let delay = r.arrival(i);
        let log = r.log(&format!("direct-{h}"));
        let host = h.clone();
        jobs.push(async move {
            tokio::time::sleep(delay).await;
            let started = since(t0, Instant::now());
            let p = spawn_in(&ns, &args, Stdio::null(), &log)?;
            let e = wait(p.pid()).await;
            anyhow::Ok((host, started, e, out))
        });
    }
    let mut hosts = vec![];
    for res in futures_join(jobs).await {
        let (host, start_s, e, out) = res?;
        let verified = e.success && r.verify_output(&out);
        hosts.push(HostResult {
            host,
            completed: e.success,
            verified,
            start_s,
            seconds: e.success.then(|| since(t0, e.at) - start_s),
            bytes_from_origin: if e.success { r.size } else { 0 },
            cpu_seconds: e.cpu_seconds,
            ..Default::default()
        });
        r.remove_output(&out);
    }
    let busy = busy_fraction(before, cpu_ticks());
    let served = origin.stop();
    Ok(r.finish("direct", hosts, served, r.origin_counted_by(), busy))
}

/// Joins futures without pulling in another crate.
pub async fn futures_join<F>(fs: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = vec![];
    for h in handles {
        out.push(h.await.expect("job does not panic"));
    }
    out
}
