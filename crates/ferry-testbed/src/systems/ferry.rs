//! `ferry`: the real `ferry` binary, a scheduler on its own host, a seed on host 0 (or on a
//! host of its own with `--seed-link`), a daemon per host, and `ferry get` on every host (or
//! `skopeo` pulling the image through the host's mirror).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::net::SCHED_IP;
use crate::proc::{busy_fraction, cpu_ticks, spawn_in, wait, Proc};
use crate::scenario::{ready_line, since, HostResult, Run, SystemResult};
use crate::systems::direct::futures_join;

struct Daemon {
    node: String,
    proc: Proc,
    socket: String,
}

fn ferry(r: &Run, args: &[&str]) -> Vec<String> {
    std::iter::once(r.ferry_bin.display().to_string()).chain(args.iter().map(|s| s.to_string())).collect()
}

fn start_daemon(r: &Run, node: &str, seed: bool) -> Result<Daemon> {
    let n = r.net.node(node);
    let dir = r.work.join("ferry").join(node);
    let socket = dir.join("ferry.sock").display().to_string();
    let mut args = ferry(
        r,
        &[
            "daemon",
            "--host-id",
            node,
            "--data-dir",
            &dir.display().to_string(),
            "--socket",
            &socket,
            "--scheduler",
            &format!("{SCHED_IP}:8002"),
            "--advertise-ip",
            &n.ip.to_string(),
            "--piece-port",
            "4005",
        ],
    );
    if r.image.is_some() {
        let upstream = format!("http://{}:{}", crate::net::ORIGIN_IP, crate::image::REGISTRY_PORT);
        args.extend(["--mirror-upstream".into(), upstream]);
    }
    if seed {
        args.push("--seed".into());
        if let Some(ps) = &r.piece_size {
            args.extend(["--piece-size".into(), ps.clone()]);
        }
        if let Some(rate) = &r.seed_upload_rate {
            args.extend(["--upload-rate".into(), rate.clone()]);
        }
    }
    let mut proc = spawn_in(&n.ns, &args, Stdio::piped(), &r.log(&format!("ferry-{node}")))?;
    ready_line(&mut proc, node)?;
    Ok(Daemon { node: node.into(), proc, socket })
}

async fn wait_hosts(n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        match ferry_proto::scheduler::scheduler_client::SchedulerClient::connect(format!("http://{SCHED_IP}:8002"))
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => bail!("scheduler unreachable: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    loop {
        let s = c.stats(ferry_proto::scheduler::StatsRequest {}).await?.into_inner();
        if s.hosts as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} ferry hosts joined the scheduler", s.hosts);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A daemon's counters, read from its local API (a Unix socket on the shared filesystem,
/// reachable from the root namespace).
async fn stats(socket: &str) -> ferry_proto::daemon::StatsResponse {
    let Ok(mut c) = ferry_daemon::local::connect(std::path::Path::new(socket)).await else { return Default::default() };
    c.stats(ferry_proto::daemon::StatsRequest {}).await.map(|s| s.into_inner()).unwrap_or_default()
}

type Timeline = Vec<(f64, u64, u64)>;

/// Every `every` until `stop`: per daemon, bytes held of the (one) task and bytes uploaded.
async fn sample(
    daemons: Vec<(String, String)>,
    t0: Instant,
    every: Option<Duration>,
    stop: tokio_util::sync::CancellationToken,
) -> std::collections::HashMap<String, Timeline> {
    let Some(every) = every else { return Default::default() };
    let mut clients = vec![];
    for (node, socket) in daemons {
        if let Ok(c) = ferry_daemon::local::connect(std::path::Path::new(&socket)).await {
            clients.push((node, c));
        }
    }
    let mut out: std::collections::HashMap<String, Timeline> = Default::default();
    let mut tick = tokio::time::interval(every);
    while !stop.is_cancelled() {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        for (node, c) in &mut clients {
            let Ok(s) = c.stats(ferry_proto::daemon::StatsRequest {}).await else { continue };
            let s = s.into_inner();
            let held =
                s.tasks.iter().map(|t| t.content_length * t.pieces_held as u64 / t.pieces_total.max(1) as u64).sum();
            out.entry(node.clone()).or_default().push((since(t0, Instant::now()), held, s.bytes_uploaded));
        }
    }
    out
}

/// What a host runs to fetch the workload through its daemon.
fn get_args(r: &Run, d: &Daemon, out: &std::path::Path) -> Vec<String> {
    let out_s = out.display().to_string();
    let link: &[&str] = if r.link_outputs { &["--link"] } else { &[] };
    match (&r.image, &r.model) {
        (Some(_), _) => crate::image::pull_args("127.0.0.1:4001", out),
        (_, Some(_)) => {
            let repo = format!("hf://{}", crate::model::REPO);
            let endpoint = crate::model::endpoint();
            let get = ["get", "-r", &repo, "--hf-endpoint", &endpoint, "-O", &out_s, "--socket", &d.socket];
            ferry(r, &[&get[..], &["--json", "--quiet"], link].concat())
        }
        _ => {
            let get = ["get", &r.url(), "-O", &out_s, "--socket", &d.socket, "--json", "--quiet"];
            ferry(r, &[&get[..], link].concat())
        }
    }
}

/// The scheduler on its own host, a daemon per host (the seed on host 0, or on its own
/// host with `--seed-link`), all joined.
async fn start_cluster(r: &Run) -> Result<(Proc, Vec<Daemon>)> {
    let sched_ns = r.net.node("sched").ns.clone();
    let mut sched = spawn_in(
        &sched_ns,
        &ferry(r, &["scheduler", "--listen", &format!("{SCHED_IP}:8002")]),
        Stdio::piped(),
        &r.log("ferry-scheduler"),
    )?;
    ready_line(&mut sched, "scheduler")?;
    let mut daemons = vec![];
    if r.seed_link {
        daemons.push(start_daemon(r, "seed", true)?);
    }
    for (i, h) in r.hosts.iter().enumerate() {
        daemons.push(start_daemon(r, h, i == 0 && !r.seed_link)?);
    }
    wait_hosts(daemons.len()).await?;
    Ok((sched, daemons))
}

/// Reads each daemon's counters into its host's result (the seed's own host gets one of
/// its own), stops the daemons and adds their CPU time.
async fn stop_daemons(
    r: &Run,
    daemons: Vec<Daemon>,
    hosts: &mut Vec<HostResult>,
    timelines: &mut std::collections::HashMap<String, Timeline>,
) {
    for d in &daemons {
        let st = stats(&d.socket).await;
        let up = st.bytes_uploaded;
        if let Some(h) = hosts.iter_mut().find(|h| h.host == d.node) {
            h.bytes_uploaded = up;
            if r.image.is_some() || r.model.is_some() {
                // skopeo and `get -r` report no total of sources: the daemon's counters do.
                (h.bytes_from_origin, h.bytes_from_peers) = (st.bytes_from_origin, st.bytes_from_peers);
            }
        } else {
            let seed = HostResult {
                host: d.node.clone(),
                completed: true,
                verified: true,
                bytes_uploaded: up,
                timeline: timelines.remove(&d.node).unwrap_or_default(),
                ..Default::default()
            };
            hosts.push(seed);
        }
        d.proc.signal(libc::SIGTERM);
    }
    for d in daemons {
        let e = wait(d.proc.pid()).await;
        if let Some(h) = hosts.iter_mut().find(|h| h.host == d.node) {
            h.cpu_seconds += e.cpu_seconds;
        }
    }
}

pub async fn run(r: &Run) -> Result<SystemResult> {
    let origin = r.start_origin()?;
    let (sched, daemons) = start_cluster(r).await?;

    let kill_count = ((r.hosts.len() as f64) * r.kill_fraction).floor() as usize;
    // Never the seed's host: killing the only origin reader tests nothing about the swarm.
    let victims: Vec<String> =
        r.hosts.iter().rev().take(kill_count.min(r.hosts.len().saturating_sub(1))).cloned().collect();

    let before = cpu_ticks();
    let t0 = Instant::now();
    let mut jobs = vec![];
    for (i, h) in r.hosts.iter().enumerate() {
        let d = daemons.iter().find(|d| &d.node == h).expect("daemon per host");
        let out = r.work.join("ferry").join(format!("{h}.out"));
        let args = get_args(r, d, &out);
        let (ns, delay, log, host) =
            (r.net.node(h).ns.clone(), r.arrival(i), r.log(&format!("ferry-get-{h}")), h.clone());
        jobs.push(async move {
            tokio::time::sleep(delay).await;
            let started = since(t0, Instant::now());
            let mut p = spawn_in(&ns, &args, Stdio::piped(), &log)?;
            let mut stdout = p.child.stdout.take().context("stdout")?;
            let e = wait(p.pid()).await;
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut s)?;
            anyhow::Ok((host, started, e, out, s))
        });
    }
    let joined = tokio::spawn(futures_join(jobs));
    let stop_sampling = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn(sample(
        daemons.iter().map(|d| (d.node.clone(), d.socket.clone())).collect(),
        t0,
        r.timeline_every,
        stop_sampling.clone(),
    ));
    if !victims.is_empty() {
        tokio::time::sleep(Duration::from_secs_f64(r.bound_s * 0.4)).await;
        for d in daemons.iter().filter(|d| victims.contains(&d.node)) {
            d.proc.signal(libc::SIGKILL);
        }
    }
    let results = joined.await?;
    let busy = busy_fraction(before, cpu_ticks());
    stop_sampling.cancel();
    let mut timelines = sampler.await?;

    let mut hosts = vec![];
    for res in results {
        let (host, start_s, e, out, json) = res?;
        let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_default();
        hosts.push(HostResult {
            completed: e.success,
            verified: e.success && r.verify_output(&out),
            killed: victims.contains(&host),
            start_s,
            seconds: e.success.then(|| since(t0, e.at) - start_s),
            bytes_from_origin: v["bytes_from_origin"].as_u64().unwrap_or(0),
            bytes_from_peers: v["bytes_from_peers"].as_u64().unwrap_or(0),
            cpu_seconds: e.cpu_seconds,
            timeline: timelines.remove(&host).unwrap_or_default(),
            host,
            ..Default::default()
        });
        r.remove_output(&out);
    }
    stop_daemons(r, daemons, &mut hosts, &mut timelines).await;
    // The caches: room for the next system's outputs.
    let _ = std::fs::remove_dir_all(r.work.join("ferry"));
    sched.signal(libc::SIGTERM);
    wait(sched.pid()).await;
    let served = origin.stop();
    // The separate seed host is not one of the H hosts: it is kept for CPU, not for makespan.
    let (helpers, hosts): (Vec<HostResult>, Vec<HostResult>) = hosts.into_iter().partition(|h| h.host == "seed");
    let mut res = r.finish("ferry", hosts, served, r.origin_counted_by(), busy);
    res.cpu_seconds_total += helpers.iter().map(|h| h.cpu_seconds).sum::<f64>();
    res.helpers = helpers;
    Ok(res)
}
