//! One decision on the scheduler's books as `ferry-testbed load` fills them: 10,000 hosts
//! with sessions, and a task of 64 pieces held by 100 finished, parked peers. Each iteration
//! registers a new peer (validation, books, the ranked parents sent down its stream) and
//! ends its stream again, so the books stay the same size.

use criterion::{criterion_group, criterion_main, Criterion};
use ferry_proto::scheduler::{peer_message, Finished, FinishedPiece, Host, Park, PiecesFinished, Register, TaskInfo};
use ferry_scheduler::{SchedulerOptions, SchedulerService};
use ferry_types::TaskId;
use tokio::sync::mpsc;

const HOSTS: usize = 10_000;
const HOLDERS: usize = 100;
const PIECES: u32 = 64;
const PIECE: u32 = 4 << 20;
const TASK: TaskId = TaskId([9; 32]);

fn host(i: usize) -> Host {
    Host {
        id: format!("load-{i}"),
        ip: format!("127.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, (i & 255).max(1)),
        piece_port: 4000,
        upload_slots: 16,
        ..Default::default()
    }
}

fn register(i: usize, held: bool) -> Register {
    let mut reg = Register {
        task_id: TASK.0.to_vec(),
        host: Some(host(i)),
        url: "http://origin.test/model.bin".into(),
        piece_size: PIECE,
        ..Default::default()
    };
    if held {
        reg.held = (0..PIECES).collect();
        reg.held_digests = (0..PIECES).map(|i| blake3::hash(&i.to_be_bytes()).as_bytes().to_vec()).collect();
        reg.info = Some(TaskInfo {
            content_length: u64::from(PIECES) * u64::from(PIECE),
            piece_size: PIECE,
            ..Default::default()
        });
    }
    reg
}

/// The books of the load test: every host joined, the task held by `HOLDERS` parked peers.
/// (A parked peer's commands go nowhere: its own receiver can go.)
fn books() -> SchedulerService {
    let svc = SchedulerService::new(SchedulerOptions::default());
    svc.seed_rng(1);
    for i in 0..HOSTS {
        let (tx, _rx) = mpsc::unbounded_channel();
        svc.join_host(Some(&host(i)), tx).unwrap();
    }
    for i in 0..HOLDERS {
        let (tx, _rx) = mpsc::unbounded_channel();
        let (task, peer, _) = svc.register(&register(i, i == 0), tx).unwrap();
        if i > 0 {
            let pieces = (0..PIECES)
                .map(|index| FinishedPiece {
                    index,
                    parent: "load-0".into(),
                    length: PIECE,
                    cost_micros: 80_000,
                    ..Default::default()
                })
                .collect();
            svc.on_message(&task, &peer, peer_message::Message::Pieces(PiecesFinished { pieces })).unwrap();
            svc.on_message(&task, &peer, peer_message::Message::Finished(Finished {})).unwrap();
        }
        svc.on_message(&task, &peer, peer_message::Message::Park(Park {})).unwrap();
    }
    svc
}

fn bench(c: &mut Criterion) {
    let svc = books();
    let mut next = HOLDERS;
    c.bench_function("register_decide_unregister_10k_hosts", |b| {
        b.iter(|| {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let (task, peer, session) = svc.register(&register(next, false), tx).unwrap();
            let mut parents = 0;
            while let Ok(cmd) = rx.try_recv() {
                if let Ok(ferry_proto::scheduler::PeerCommand {
                    command: Some(ferry_proto::scheduler::peer_command::Command::Parents(p)),
                }) = *cmd
                {
                    parents += p.parents.len();
                }
            }
            assert!(parents > 0);
            svc.unregister(&task, &peer, session);
            next = HOLDERS + (next + 1 - HOLDERS) % (HOSTS - HOLDERS);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
