use super::*;
use crate::schedule::STARVING_PARENTS;
use ferry_proto::scheduler::{Failed, Finished, FinishedPiece, Host, PiecesFinished, TaskInfo};
use tokio::sync::mpsc::UnboundedReceiver;

type Rx = UnboundedReceiver<Box<Result<PeerCommand, Status>>>;

fn join(svc: &SchedulerService, id: &str, from_origin: bool) -> Rx {
    join_with(svc, id, from_origin, "http://origin/f").1
}

fn join_with(svc: &SchedulerService, id: &str, from_origin: bool, url: &str) -> (u64, Rx) {
    let host = Host { id: id.into(), ip: "127.0.0.1".into(), piece_port: 1, upload_slots: 8, ..Default::default() };
    let reg = Register { task_id: vec![7; 32], host: Some(host), url: url.into(), from_origin, ..Default::default() };
    let (tx, rx) = mpsc::unbounded_channel();
    let (_, _, session) = svc.register(&reg, tx).unwrap();
    (session, rx)
}

fn commands(rx: &mut Rx) -> Vec<peer_command::Command> {
    let mut out = vec![];
    while let Ok(Ok(c)) = rx.try_recv().map(|b| *b) {
        out.extend(c.command);
    }
    out
}

fn got_back_to_source(rx: &mut Rx) -> bool {
    commands(rx).iter().any(|c| matches!(c, peer_command::Command::BackToSource(_)))
}

#[test]
fn a_parked_peer_stays_a_parent_until_its_host_drops_the_task() {
    let svc = SchedulerService::new(SchedulerOptions::default());
    let (task, a) = (TaskId([7; 32]), HostId::new("a").unwrap());
    let (session, _rx) = join_with(&svc, "a", false, "http://origin/f");
    let host = svc.lock().tasks[&task].peers[&a].host.clone();
    let (htx, _hrx) = mpsc::unbounded_channel();
    svc.lock().hosts.insert(a.clone(), HostEntry::new(host, htx, 1));
    let park = || svc.on_message(&task, &a, peer_message::Message::Park(ferry_proto::scheduler::Park {}));
    assert!(park().is_err(), "only a finished peer may park");
    svc.on_message(&task, &a, peer_message::Message::Finished(Finished {})).unwrap();
    park().unwrap();
    svc.unregister(&task, &a, session);
    let holds = |svc: &SchedulerService| svc.lock().tasks.get(&task).is_some_and(|t| t.peers.contains_key(&a));
    assert!(holds(&svc), "a parked peer's closed stream keeps it as a parent");
    assert!(svc.lock().hosts[&a].parked.contains(&task));
    svc.unpark(&a, [task]);
    assert!(!holds(&svc), "dropped: no longer a parent");
    assert!(svc.lock().hosts[&a].parked.is_empty());
}

#[test]
fn an_unparked_peer_whose_stream_ends_leaves() {
    let svc = SchedulerService::new(SchedulerOptions::default());
    let (task, a) = (TaskId([7; 32]), HostId::new("a").unwrap());
    let (session, _rx) = join_with(&svc, "a", false, "http://origin/f");
    svc.on_message(&task, &a, peer_message::Message::Finished(Finished {})).unwrap();
    // No host session here: Park is accepted but cannot hold the peer.
    svc.on_message(&task, &a, peer_message::Message::Park(ferry_proto::scheduler::Park {})).unwrap();
    svc.unregister(&task, &a, session);
    assert!(!svc.lock().tasks.get(&task).is_some_and(|t| t.peers.contains_key(&a)));
}

#[test]
fn a_departed_peer_gives_its_back_to_source_grant_back() {
    // No seed: the first peer reads the origin, finishes and leaves. The next peer must
    // get the grant, not wait for a seed that does not exist.
    let svc = SchedulerService::new(SchedulerOptions::default());
    let (session, mut a) = join_with(&svc, "a", false, "http://origin/f");
    assert!(got_back_to_source(&mut a));
    svc.unregister(&TaskId([7; 32]), &HostId::new("a").unwrap(), session);
    let mut b = join(&svc, "b", false);
    assert!(got_back_to_source(&mut b), "b waits for a grant the departed a still holds");
}

#[test]
fn an_origin_failure_fails_only_peers_with_the_same_request() {
    let svc = SchedulerService::new(SchedulerOptions::default());
    let task = TaskId([7; 32]);
    let (_, mut wrong) = join_with(&svc, "wrong", false, "http://origin/f?v=wrong");
    assert!(got_back_to_source(&mut wrong));
    let (_, mut same) = join_with(&svc, "same", false, "http://origin/f?v=wrong");
    let (_, mut right) = join_with(&svc, "right", false, "http://origin/f?v=right");
    commands(&mut same);
    commands(&mut right);
    let failure = Failure { code: FailureCode::OriginStatus as i32, http_status: 404, message: "404".into() };
    svc.on_message(
        &task,
        &HostId::new("wrong").unwrap(),
        peer_message::Message::Failed(Failed { failure: Some(failure) }),
    )
    .unwrap();
    let yours = |rx: &mut Rx| {
        commands(rx).into_iter().find_map(|c| match c {
            peer_command::Command::TaskFailed(f) => Some(f.yours),
            _ => None,
        })
    };
    assert_eq!(yours(&mut same), Some(true), "same request: fails with it");
    assert_eq!(yours(&mut right), Some(false), "another request: starts over with its own");
}

#[test]
fn a_seed_reading_for_nobody_is_told_to_stop() {
    let svc = SchedulerService::new(SchedulerOptions::default());
    let (htx, mut hrx) = mpsc::unbounded_channel();
    let seed_host = Host { id: "seed".into(), ip: "127.0.0.1".into(), piece_port: 1, seed: true, ..Default::default() };
    svc.lock().hosts.insert(HostId::new("seed").unwrap(), HostEntry::new(seed_host, htx, 0));
    let (session, _a) = join_with(&svc, "a", false, "http://origin/f");
    let fetch = hrx.try_recv().unwrap().unwrap();
    assert!(matches!(fetch.command, Some(host_command::Command::Fetch(_))));
    let _seed = join(&svc, "seed", true);
    svc.unregister(&TaskId([7; 32]), &HostId::new("a").unwrap(), session);
    let cancel = hrx.try_recv().expect("a cancel order").unwrap();
    assert!(matches!(cancel.command, Some(host_command::Command::Cancel(_))));
}

#[test]
fn malformed_messages_are_refused_and_scheduling_goes_on() {
    let svc = SchedulerService::new(SchedulerOptions::default());
    let task = TaskId([7; 32]);
    let _seed = join(&svc, "seed", true);
    let a = HostId::new("a").unwrap();
    let _a = join(&svc, "a", false);
    let bad = [
        peer_message::Message::TaskInfo(TaskInfo { content_length: 100, piece_size: 0, ..Default::default() }),
        peer_message::Message::TaskInfo(TaskInfo { content_length: u64::MAX, piece_size: 16384, ..Default::default() }),
        peer_message::Message::Pieces(PiecesFinished {
            pieces: vec![FinishedPiece { index: 0, ..Default::default() }],
        }),
    ];
    for m in bad {
        assert!(svc.on_message(&task, &a, m).is_err());
    }
    let ok = TaskInfo { content_length: 20_000, piece_size: 16384, ..Default::default() };
    svc.on_message(&task, &a, peer_message::Message::TaskInfo(ok)).unwrap();
    let beyond = FinishedPiece { index: 2, length: 1, ..Default::default() };
    assert!(svc.on_message(&task, &a, peer_message::Message::Pieces(PiecesFinished { pieces: vec![beyond] })).is_err());
    let mut b = join(&svc, "b", false);
    assert!(parents(&mut b).is_some(), "a normal peer is still scheduled");
}

/// Parent ids in every `Parents` command received so far; `None` if the peer was only
/// told to wait.
fn parents(rx: &mut Rx) -> Option<Vec<String>> {
    let mut out: Option<Vec<String>> = None;
    while let Ok(Ok(c)) = rx.try_recv().map(|b| *b) {
        if let Some(peer_command::Command::Parents(p)) = c.command {
            out.get_or_insert_default().extend(p.parents.into_iter().map(|p| p.host_id));
        }
    }
    out.map(|mut v| {
        v.sort();
        v
    })
}

#[test]
fn a_new_peer_is_offered_back_to_its_parents() {
    let svc = SchedulerService::new(SchedulerOptions::default());
    let _seed = join(&svc, "seed", true);
    let mut a = join(&svc, "a", false);
    assert_eq!(parents(&mut a).unwrap(), ["seed"]);
    let mut b = join(&svc, "b", false);
    assert_eq!(parents(&mut b).unwrap(), ["a", "seed"]);
    assert_eq!(parents(&mut a).unwrap(), ["b"], "a learns of b, which came later");
}

#[test]
fn dag_mode_offers_nothing_back() {
    let rank = RankOptions { avoid_cycles: true, ..Default::default() };
    let svc = SchedulerService::new(SchedulerOptions { rank, ..Default::default() });
    let _seed = join(&svc, "seed", true);
    let mut a = join(&svc, "a", false);
    parents(&mut a);
    let _b = join(&svc, "b", false);
    assert_eq!(parents(&mut a), None);
}

#[test]
fn a_late_peer_gets_parents_over_the_child_limits_rather_than_none() {
    let rank = RankOptions { seed_max_children: 1, peer_max_children: 1, ..Default::default() };
    let svc = SchedulerService::new(SchedulerOptions { rank, ..Default::default() });
    let _seed = join(&svc, "seed", true);
    let _a = join(&svc, "a", false);
    let _b = join(&svc, "b", false);
    // seed feeds a, a feeds b, b feeds a: every child slot is taken.
    let mut c = join(&svc, "c", false);
    let got = parents(&mut c).expect("parents, not a wait");
    assert!(!got.is_empty() && got.len() <= STARVING_PARENTS, "{got:?}");
}

#[test]
fn late_peers_splice_into_mutual_edges_and_every_degree_and_view_holds() {
    let rank = RankOptions { max_parents: 4, peer_max_children: 4, ..Default::default() };
    let svc = SchedulerService::new(SchedulerOptions { rank, ..Default::default() });
    let task = TaskId([7; 32]);
    // "seed" reads the origin (an ordinary peer's limits); the others splice into the mesh.
    let names: Vec<String> = (0..40).map(|i| format!("p{i:02}")).collect();
    let mut rxs = vec![join(&svc, "seed", true)];
    rxs.extend(names.iter().map(|n| join(&svc, n, false)));
    // What each peer believes its parents are: `Parents` adds, `DropParents` removes.
    let mut drops = 0;
    for (i, rx) in rxs.iter_mut().enumerate().skip(1) {
        let mut view = std::collections::BTreeSet::new();
        for c in commands(rx) {
            match c {
                peer_command::Command::Parents(p) => view.extend(p.parents.into_iter().map(|p| p.host_id)),
                peer_command::Command::DropParents(d) => {
                    drops += 1;
                    d.host_id.iter().for_each(|h| assert!(view.remove(h), "dropped {h}, never given"));
                }
                _ => {}
            }
        }
        let st = svc.lock();
        let dag = &st.tasks[&task].dag;
        let me = HostId::new(names[i - 1].clone()).unwrap();
        let truth: std::collections::BTreeSet<String> = dag.parents_of(&me).map(|h| h.to_string()).collect();
        assert_eq!(view, truth, "{me}'s parents as told and as scheduled");
        assert!((1..=4).contains(&truth.len()), "{me}: {truth:?}");
        assert!(dag.children_of(&me) <= 4, "{me} over its child limit");
    }
    assert!(svc.lock().tasks[&task].dag.children_of(&HostId::new("seed").unwrap()) <= 4);
    assert!(drops > 0, "forty peers at four parents each must splice");
}

#[test]
fn a_capped_origin_is_read_once_at_a_time_over_tasks_and_a_restart() {
    let opts = SchedulerOptions { origin_concurrency: Some(1), ..Default::default() };
    let svc = SchedulerService::new(opts);
    svc.lock().started = None; // No settling: this is the scheduler after it.
    let reg = |id: &str, task: u8, reading: bool| {
        let host = Host { id: id.into(), ip: "127.0.0.1".into(), piece_port: 1, upload_slots: 8, ..Default::default() };
        let url = format!("http://origin/f{task}");
        let r =
            Register { task_id: vec![task; 32], host: Some(host), url, reading_origin: reading, ..Default::default() };
        let (tx, rx) = mpsc::unbounded_channel();
        svc.register(&r, tx).unwrap();
        rx
    };
    // `a` was reading task 1 when the last scheduler died; `b` wants task 2 of the same origin.
    let _a = reg("a", 1, true);
    let mut b = reg("b", 2, false);
    assert!(!got_back_to_source(&mut b), "the origin is busy with a's read");
    let a = HostId::new("a").unwrap();
    svc.on_message(&TaskId([1; 32]), &a, peer_message::Message::Finished(Finished {})).unwrap();
    assert!(got_back_to_source(&mut b), "a's read ended: b's turn");
    // A finished peer is never granted a read, even when it was left marked waiting.
    svc.lock().tasks.get_mut(&TaskId([1; 32])).unwrap().peers.get_mut(&a).unwrap().waiting = true;
    svc.on_message(&TaskId([2; 32]), &HostId::new("b").unwrap(), peer_message::Message::Finished(Finished {})).unwrap();
    assert_eq!(svc.lock().origin_reads("origin"), 0, "no read left counted");
}
