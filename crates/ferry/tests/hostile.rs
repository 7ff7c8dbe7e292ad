//! Hostile and unlucky inputs against real processes: malformed scheduler messages, a
//! slow-loris on a piece port, a seed whose disk fills, a peer that read the origin and
//! left. Each time, the cluster goes on serving everyone else.

mod common;

use std::time::Duration;

use common::{download, Setup, Spec};
use ferry::exit;
use ferry_proto::scheduler::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::{peer_message, FinishedPiece, Host, PeerMessage, PiecesFinished, Register, TaskInfo};

fn host(id: &str) -> Host {
    Host { id: id.into(), ip: "127.0.0.1".into(), piece_port: 9, ..Default::default() }
}

fn register(task: u8, info: Option<TaskInfo>, held: Vec<u32>, held_digests: Vec<Vec<u8>>) -> PeerMessage {
    let reg = Register {
        task_id: vec![task; 32],
        host: Some(host("hostile")),
        url: "http://127.0.0.1:1/x".into(),
        info,
        held,
        held_digests,
        ..Default::default()
    };
    PeerMessage { message: Some(peer_message::Message::Register(reg)) }
}

/// Sends `msgs` on one announce stream and returns how the scheduler answered.
async fn announce(addr: &str, msgs: Vec<PeerMessage>) -> Result<(), tonic::Status> {
    let mut c = SchedulerClient::connect(format!("http://{addr}")).await.unwrap();
    let mut resp = c.announce_peer(futures::stream::iter(msgs)).await?.into_inner();
    // Read until the scheduler ends the stream or a short quiet period passes.
    loop {
        match tokio::time::timeout(Duration::from_millis(500), resp.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(s)) => return Err(s),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_scheduler_messages_do_not_stop_it() {
    let s = Setup::start(Spec { peers: 2, ..Default::default() }).await;
    let addr = s.cluster.schedulers[0].clone();
    let info = |len, ps| Some(TaskInfo { content_length: len, piece_size: ps, ..Default::default() });
    let refused = [
        vec![register(1, info(1000, 0), vec![], vec![])],
        vec![register(2, info(0, 16384), vec![0], vec![])],
        vec![register(3, info(20_000, 16384), vec![7], vec![])],
        vec![register(4, info(20_000, 16384), vec![0, 1], vec![vec![0; 32]])],
        vec![register(5, info(u64::MAX, 16384), vec![], vec![])],
        vec![PeerMessage {
            message: Some(peer_message::Message::Register(Register { task_id: vec![1; 3], ..Default::default() })),
        }],
    ];
    for (i, msgs) in refused.into_iter().enumerate() {
        let r = announce(&addr, msgs).await;
        assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::InvalidArgument), "case {i}");
    }
    // Mid-stream: a valid registration, then garbage; the scheduler ends that stream.
    let later = vec![
        register(6, None, vec![], vec![]),
        PeerMessage {
            message: Some(peer_message::Message::TaskInfo(TaskInfo {
                content_length: 5,
                piece_size: 0,
                ..Default::default()
            })),
        },
        PeerMessage {
            message: Some(peer_message::Message::Pieces(PiecesFinished {
                pieces: vec![FinishedPiece { index: u32::MAX, length: u32::MAX, ..Default::default() }],
            })),
        },
    ];
    let r = announce(&addr, later).await;
    assert_eq!(r.err().map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    // A normal download through the same scheduler still works.
    s.download_verified(&s.peers, "f.bin").await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_frames_cost_a_piece_port_little_memory() {
    use tokio::io::AsyncWriteExt;
    let s = Setup::start(Spec { peers: 3, ..Default::default() }).await;
    let target = &s.peers[0];
    let pid = s.cluster.pid(&target.name).unwrap();
    let addr: std::net::SocketAddr = target.piece_addr.parse().unwrap();
    let before = rss_kib(pid);
    // 500 connections from 20 loopback addresses, each announcing a 1 MiB Hello and
    // sending 3 bytes of it. Hosts at 127.0.0.1 (the real peers) are not among them.
    let mut held = vec![];
    for i in 0..500u32 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::from(([127, 0, 1, (i % 20) as u8 + 2], 0))).unwrap();
        let Ok(mut c) = sock.connect(addr).await else { continue };
        let mut head = (1024 * 1024u32).to_be_bytes().to_vec();
        head.truncate(3);
        let _ = c.write_all(&head).await;
        held.push(c);
    }
    // Other peers download through the daemon under attack while the connections are held.
    s.download_verified(&s.peers, "f.bin").await;
    let after = rss_kib(pid);
    eprintln!("{} connections held; daemon RSS {before} KiB -> {after} KiB", held.len());
    assert!(held.len() >= 450, "the attack did not get its connections in: {}", held.len());
    assert!(after < before + 16 * 1024, "RSS grew from {before} KiB to {after} KiB under 500 half-sent frames");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_whose_disk_fills_reports_storage_full_to_waiting_peers() {
    let mut s = Setup::start(Spec { peers: 0, seed: false, files: &[("f.bin", 4 << 20)], ..Default::default() }).await;
    let data = s.cluster.daemon_info("seed").data_dir;
    let Some(_unmount) = common::small_tmpfs(&data) else { return };
    s.cluster.start_daemon("seed", true, &["--piece-size", common::PIECE]).await.unwrap();
    let peer = s.cluster.start_daemon("peer", false, &[]).await.unwrap();
    s.wait_hosts(2).await;
    let out = s.out("full");
    let o = common::ferry_get(&peer.socket, &s.origin.url("f.bin"), &out, &[]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(exit::DISK_FULL as i32), "{err}");
    assert!(err.contains("No space left"), "{err}");
    assert!(!out.exists());
    s.cluster.kill("seed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_seed_a_peer_that_left_does_not_keep_the_origin_permission() {
    let mut s = Setup::start(Spec { peers: 2, seed: false, ..Default::default() }).await;
    let (a, b) = (s.peers[0].clone(), s.peers[1].clone());
    let url = s.origin.url("f.bin");
    download(&a, &url, &s.out("a")).await.unwrap();
    s.cluster.kill(&a.name).await;
    let got = tokio::time::timeout(Duration::from_secs(10), download(&b, &url, &s.out("b"))).await;
    assert!(matches!(got, Ok(Ok(()))), "b did not get the file within 10 s: {got:?}");
    assert!(s.verify("f.bin", &s.out("b")));
}

/// A daemon started under the common soft limit of 1,024 open files lifts it to the hard
/// limit: each connection and each cached task holds a descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_lifts_its_open_file_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on this test's own process (nextest runs each test alone).
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if lim.rlim_max <= 1024 {
        eprintln!("skipping: the hard limit is {} here", lim.rlim_max);
        return;
    }
    let low = libc::rlimit { rlim_cur: 1024, rlim_max: lim.rlim_max };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    let s = Setup::start(Spec { peers: 1, ..Default::default() }).await;
    let pid = s.cluster.pid("peer-0").expect("running");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(soft, lim.rlim_max, "{line}");
}
