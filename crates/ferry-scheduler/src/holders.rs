//! Who holds a task, and files imported into the cluster (`ferry cache`): seeds told to
//! replicate one from the hosts that hold it, and every holder told to drop one.
//!
//! An imported file has no origin. Its importer registers it like any finished task; a
//! replica is a seed that downloads it from peers like any other peer would (verifying the
//! whole-file digest that names it) and pins it for the import's TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ferry_policy::PeerState;
use ferry_proto::scheduler::{
    host_command, DropTaskOrder, DropTaskResponse, Holder, HostCommand, ReplicateRequest, ReplicateTask,
    TaskHoldersResponse,
};
use ferry_types::{FileDigest, HostId, TaskId, TaskIdInput};
use tonic::Status;

use crate::state::{lock, HostEntry, State, TaskEntry};

/// How long a replication waits when the request names no timeout.
const DEFAULT_REPLICATE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often a replication looks at the books while it waits.
const REPLICATE_POLL: Duration = Duration::from_millis(50);

pub fn task_id(bytes: &[u8]) -> Result<TaskId, Status> {
    TaskId::from_slice(bytes).ok_or_else(|| Status::invalid_argument("task_id must be 32 bytes"))
}

/// Every host the scheduler knows to hold some of the task (none: an empty answer).
pub fn holders(state: &Mutex<State>, task: &TaskId) -> TaskHoldersResponse {
    let st = lock(state);
    let Some(t) = st.tasks.get(task) else { return TaskHoldersResponse::default() };
    let layout = t.layout();
    let mut holders = holder_list(t, &st.hosts);
    holders.sort_by(|a, b| a.host_id.cmp(&b.host_id));
    TaskHoldersResponse {
        content_length: layout.map_or(0, |l| l.content_length()),
        piece_count: layout.map_or(0, |l| l.piece_count()),
        holders,
    }
}

fn holder_list(t: &TaskEntry, hosts: &HashMap<HostId, HostEntry>) -> Vec<Holder> {
    t.peers
        .iter()
        .filter(|(_, p)| p.pieces_held > 0 || p.state == PeerState::Succeeded)
        .map(|(id, p)| Holder {
            host_id: id.to_string(),
            seed: hosts.get(id).map_or(p.host.seed, |h| h.host.seed),
            pieces_held: p.pieces_held,
            complete: p.state == PeerState::Succeeded,
            pinned_until: p.pinned_until,
            ip: hosts.get(id).map_or_else(|| p.host.ip.clone(), |h| h.host.ip.clone()),
            hostname: hosts.get(id).map_or_else(|| p.host.hostname.clone(), |h| h.host.hostname.clone()),
        })
        .collect()
}

/// Tells every host holding the task to drop it; returns the hosts told.
pub fn drop_task(state: &Mutex<State>, task: &TaskId) -> DropTaskResponse {
    let st = lock(state);
    let Some(t) = st.tasks.get(task) else { return DropTaskResponse::default() };
    let mut told = vec![];
    for id in t.peers.keys() {
        let Some(h) = st.hosts.get(id) else { continue };
        let order = host_command::Command::Drop(DropTaskOrder { task_id: task.0.to_vec() });
        if h.tx.send(Ok(HostCommand { command: Some(order) })).is_ok() {
            told.push(id.to_string());
        }
    }
    told.sort();
    tracing::info!(task = ?task, hosts = told.len(), "told every holder to drop the task");
    DropTaskResponse { hosts: told }
}

/// A checked replication request.
#[derive(Debug)]
struct Replication {
    task: TaskId,
    digest: FileDigest,
    replicas: usize,
    ttl_seconds: u64,
    timeout: Duration,
    requester: String,
}

fn check(req: &ReplicateRequest) -> Result<Replication, Status> {
    let task = task_id(&req.task_id)?;
    let digest: FileDigest =
        req.digest.parse().map_err(|e: ferry_types::ParseError| Status::invalid_argument(e.to_string()))?;
    if TaskId::derive(&TaskIdInput { digest: Some(&digest), ..Default::default() }) != task {
        return Err(Status::invalid_argument(format!("digest {digest} does not name the task")));
    }
    let timeout = match req.timeout_millis {
        0 => DEFAULT_REPLICATE_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    Ok(Replication {
        task,
        digest,
        replicas: req.replicas as usize,
        ttl_seconds: req.ttl_seconds,
        timeout,
        requester: req.host_id.clone(),
    })
}

/// Has `replicas` seeds (not the requester) fetch the task from the hosts holding it and pin
/// it, and waits until they hold it whole. Seeds already holding it count, and are told to
/// pin it too.
pub async fn replicate(state: &Mutex<State>, req: &ReplicateRequest) -> Result<Vec<Holder>, Status> {
    let r = check(req)?;
    let targets = order_replicas(state, &r)?;
    let deadline = tokio::time::Instant::now() + r.timeout;
    loop {
        {
            let st = lock(state);
            let t = st.tasks.get(&r.task).ok_or_else(|| Status::aborted("the task was dropped while it replicated"))?;
            let done = |id: &HostId| t.peers.get(id).is_some_and(|p| p.state == PeerState::Succeeded);
            if targets.iter().all(done) {
                let mut holders = holder_list(t, &st.hosts);
                holders.retain(|h| targets.iter().any(|id| id.as_str() == h.host_id));
                tracing::info!(task = ?r.task, replicas = holders.len(), "replicated");
                return Ok(holders);
            }
            if let Some(gone) = targets.iter().find(|id| !st.hosts.contains_key(*id)) {
                return Err(Status::aborted(format!("seed {gone} left before it held the task; import again")));
            }
            if let Some(failed) =
                targets.iter().find(|id| t.peers.get(*id).is_some_and(|p| p.state == PeerState::Failed))
            {
                return Err(Status::aborted(format!("seed {failed} failed to fetch the task; see its log")));
            }
            if tokio::time::Instant::now() >= deadline {
                let held = targets.iter().filter(|id| done(id)).count();
                return Err(Status::deadline_exceeded(format!(
                    "{held} of {} replicas hold the task after {:?}",
                    targets.len(),
                    r.timeout
                )));
            }
        }
        tokio::time::sleep(REPLICATE_POLL).await;
    }
}

/// Picks the seeds and sends each its order: those already holding the task first, then the
/// least busy; a refusal when the cluster has too few.
fn order_replicas(state: &Mutex<State>, r: &Replication) -> Result<Vec<HostId>, Status> {
    let st = lock(state);
    let t = st.tasks.get(&r.task).ok_or_else(|| no_holder(&r.digest))?;
    if !t.peers.values().any(|p| p.state == PeerState::Succeeded) {
        return Err(no_holder(&r.digest));
    }
    let holds = |id: &HostId| t.peers.get(id).is_some_and(|p| p.state == PeerState::Succeeded);
    let mut seeds: Vec<(&HostId, &HostEntry)> =
        st.hosts.iter().filter(|(id, h)| h.host.seed && id.as_str() != r.requester).collect();
    if seeds.len() < r.replicas {
        return Err(Status::failed_precondition(format!(
            "{} replicas asked, but the cluster has {} seed(s) besides this host; start more seeds \
             (`ferry daemon --seed`) or ask for fewer replicas",
            r.replicas,
            seeds.len()
        )));
    }
    seeds.sort_by_key(|(id, h)| (!holds(id), h.host.uploads_active, (*id).clone()));
    seeds.truncate(r.replicas);
    for (id, h) in &seeds {
        let order =
            ReplicateTask { task_id: r.task.0.to_vec(), digest: r.digest.to_string(), ttl_seconds: r.ttl_seconds };
        tracing::info!(task = ?r.task, seed = %id, "asking seed to replicate the task");
        let _ = h.tx.send(Ok(HostCommand { command: Some(host_command::Command::Replicate(order)) }));
    }
    Ok(seeds.into_iter().map(|(id, _)| id.clone()).collect())
}

fn no_holder(digest: &FileDigest) -> Status {
    Status::failed_precondition(format!("no host holds {digest} yet: the importer must register it first"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::TaskEntry;
    use ferry_proto::scheduler::Host;
    use tokio::sync::mpsc;

    /// A seed's id and the orders its host session receives.
    type Orders = (String, mpsc::UnboundedReceiver<Result<HostCommand, Status>>);

    fn host(id: &str, seed: bool) -> Host {
        Host { id: id.into(), ip: "127.0.0.1".into(), piece_port: 1, seed, ..Default::default() }
    }

    /// A task held whole by `holders`, and seeds `seeds` with host sessions; returns the
    /// state, the request, and each seed's order channel.
    fn setup(holders: &[(&str, bool)], seeds: &[&str]) -> (Mutex<State>, ReplicateRequest, Vec<Orders>) {
        let digest: FileDigest = format!("sha256:{}", "11".repeat(32)).parse().unwrap();
        let task = TaskId::derive(&TaskIdInput { digest: Some(&digest), ..Default::default() });
        let mut st = State::default();
        let mut t = TaskEntry::new(1, std::time::Instant::now());
        for (id, seed) in holders {
            let request =
                ferry_types::OriginRequest::new(ferry_types::cache_url(&digest), vec![], Some(digest.clone()), vec![])
                    .unwrap();
            t.insert_peer(HostId::new(*id).unwrap(), crate::state::parked_peer(host(id, *seed), request));
        }
        st.tasks.insert(task, t);
        let mut rxs = vec![];
        for id in seeds {
            let (tx, rx) = mpsc::unbounded_channel();
            st.hosts.insert(HostId::new(*id).unwrap(), HostEntry::new(host(id, true), tx, 0));
            rxs.push((id.to_string(), rx));
        }
        let req = ReplicateRequest {
            task_id: task.0.to_vec(),
            digest: digest.to_string(),
            replicas: 1,
            ttl_seconds: 60,
            timeout_millis: 1000,
            host_id: "importer".into(),
        };
        (Mutex::new(st), req, rxs)
    }

    fn ordered(rxs: &mut [Orders]) -> Vec<String> {
        rxs.iter_mut()
            .filter_map(|(id, rx)| {
                let cmd = rx.try_recv().ok()?.ok()?.command;
                matches!(cmd, Some(host_command::Command::Replicate(_))).then(|| id.clone())
            })
            .collect()
    }

    #[test]
    fn a_seed_that_holds_the_task_already_is_picked_first() {
        let (st, req, mut rxs) = setup(&[("importer", false), ("s2", true)], &["s1", "s2", "s3"]);
        let picked = order_replicas(&st, &check(&req).unwrap()).unwrap();
        assert_eq!(picked, [HostId::new("s2").unwrap()]);
        assert_eq!(ordered(&mut rxs), ["s2"], "told to pin it");
    }

    #[test]
    fn too_few_seeds_and_no_holder_are_refused_before_any_order() {
        let (st, mut req, mut rxs) = setup(&[("importer", false)], &["s1", "importer"]);
        req.replicas = 2;
        let e = order_replicas(&st, &check(&req).unwrap()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("1 seed(s) besides this host"), "{}", e.message());
        let (st, req, _) = setup(&[], &["s1"]);
        assert_eq!(order_replicas(&st, &check(&req).unwrap()).unwrap_err().code(), tonic::Code::FailedPrecondition);
        assert!(ordered(&mut rxs).is_empty());
    }

    #[test]
    fn a_digest_that_does_not_name_the_task_is_refused() {
        let (_, mut req, _) = setup(&[], &[]);
        req.digest = format!("sha256:{}", "22".repeat(32));
        assert_eq!(check(&req).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
