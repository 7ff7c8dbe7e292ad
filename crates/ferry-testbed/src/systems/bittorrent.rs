//! `bittorrent`: aria2c seeding from the origin host, opentracker on the scheduler's host,
//! aria2c on every host (Debian packages `aria2`, `opentracker`, `mktorrent`). 1 MiB pieces.
//!
//! Completion per host comes from aria2's `--on-bt-download-complete` hook (run when the download is
//! done, before seeding), which writes a
//! timestamp file); every leecher keeps seeding until all hosts are done. Origin bytes are
//! the origin interface's transmitted bytes, so they include TCP/IP and BitTorrent overhead
//! (a few percent).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::net::SCHED_IP;
use crate::proc::{busy_fraction, cpu_ticks, spawn_in, wait, Proc};
use crate::scenario::{since, HostResult, Run, SystemResult};

fn aria(dir: &std::path::Path, torrent: &std::path::Path, extra: &[String]) -> Vec<String> {
    let mut v: Vec<String> = [
        "aria2c",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--seed-ratio=0.0",
        "--seed-time=100000",
        "--file-allocation=none",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--listen-port=6881",
        "--bt-max-peers=55",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("--dir={}", dir.display()));
    v.extend(extra.iter().cloned());
    v.push(torrent.display().to_string());
    v
}

pub async fn run(r: &Run) -> Result<SystemResult> {
    let dir = r.work.join("bt");
    let seed_dir = dir.join("origin");
    std::fs::create_dir_all(&seed_dir)?;
    std::fs::copy(&r.data, seed_dir.join("data.bin")).context("copy data for the seeder")?;
    let torrent = dir.join("data.torrent");
    let st = Command::new("mktorrent")
        .args(["-a", &format!("http://{SCHED_IP}:6969/announce"), "-l", "20", "-o"])
        .arg(&torrent)
        .arg(seed_dir.join("data.bin"))
        .stdout(Stdio::null())
        .status()
        .context("mktorrent (apt-get install mktorrent)")?;
    if !st.success() {
        bail!("mktorrent failed");
    }
    let show = Command::new("aria2c").arg("-S").arg(&torrent).output().context("aria2c (apt-get install aria2)")?;
    let info_hash = String::from_utf8_lossy(&show.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Info Hash: ").map(|h| h.trim().to_owned()))
        .context("aria2c -S printed no info hash")?;
    std::fs::write(dir.join("whitelist"), format!("{info_hash}\n"))?;

    let tracker = spawn_in(
        &r.net.node("sched").ns,
        // opentracker refuses to run as root: it drops to `nobody` and chroots into `dir`,
        // so the whitelist is named relative to it.
        &[
            "opentracker",
            "-i",
            &SCHED_IP.to_string(),
            "-p",
            "6969",
            "-P",
            "6969",
            "-w",
            "whitelist",
            "-u",
            "nobody",
            "-d",
            &dir.display().to_string(),
        ]
        .map(String::from),
        Stdio::null(),
        &r.log("bt-tracker"),
    )?;
    let seeder = spawn_in(
        &r.net.node("origin").ns,
        &aria(&seed_dir, &torrent, &["--check-integrity=true".into(), "--bt-seed-unverified=true".into()]),
        Stdio::null(),
        &r.log("bt-seeder"),
    )?;
    let tx0 = r.net.tx_bytes("origin");

    let hook = dir.join("done.sh");
    std::fs::write(&hook, "#!/bin/sh\ndate +%s.%N > \"$FTB_DONE\"\n")?;
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let before = cpu_ticks();
    let t0 = Instant::now();
    let wall0 = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    let mut leechers: Vec<(String, Proc, f64)> = vec![];
    let mut order: Vec<(Duration, usize)> = (0..r.hosts.len()).map(|i| (r.arrival(i), i)).collect();
    order.sort();
    for (delay, i) in order {
        let h = &r.hosts[i];
        tokio::time::sleep_until((t0 + delay).into()).await;
        let hdir = dir.join(h);
        std::fs::create_dir_all(&hdir)?;
        let done = dir.join(format!("{h}.done"));
        let args = aria(&hdir, &torrent, &[format!("--on-bt-download-complete={}", hook.display())]);
        let mut cmd = vec!["env".to_string(), format!("FTB_DONE={}", done.display())];
        cmd.extend(args);
        let p = spawn_in(&r.net.node(h).ns, &cmd, Stdio::null(), &r.log(&format!("bt-{h}")))?;
        leechers.push((h.clone(), p, since(t0, Instant::now())));
    }
    // Bounded: a run that does not finish in 20 bound-times (at least 5 minutes) is reported incomplete.
    let limit = Duration::from_secs_f64((r.bound_s * 20.0).max(300.0));
    loop {
        let all = r.hosts.iter().all(|h| dir.join(format!("{h}.done")).exists());
        if all || t0.elapsed() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy = busy_fraction(before, cpu_ticks());
    let origin_bytes = r.net.tx_bytes("origin").saturating_sub(tx0);
    let mut hosts = vec![];
    for (h, p, start_s) in leechers {
        p.signal(libc::SIGKILL);
        let e = wait(p.pid()).await;
        let done_at =
            std::fs::read_to_string(dir.join(format!("{h}.done"))).ok().and_then(|s| s.trim().parse::<f64>().ok());
        let out = dir.join(&h).join("data.bin");
        let verified = done_at.is_some() && r.verify(&out);
        hosts.push(HostResult {
            completed: done_at.is_some(),
            verified,
            start_s,
            seconds: done_at.map(|t| t - wall0 - start_s),
            cpu_seconds: e.cpu_seconds,
            host: h.clone(),
            ..Default::default()
        });
        let _ = std::fs::remove_dir_all(dir.join(&h));
    }
    for p in [seeder, tracker] {
        p.signal(libc::SIGKILL);
        wait(p.pid()).await;
    }
    Ok(r.finish("bittorrent", hosts, origin_bytes, "origin interface tx bytes (incl. TCP/IP + BT overhead)", busy))
}
