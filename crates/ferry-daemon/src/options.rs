//! Daemon settings. The binary fills these from flags and environment.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferry_types::HostId;

#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub host_id: HostId,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// Address other peers reach this daemon's piece server on; `None` takes the address
    /// of the interface that routes to the scheduler (see [`crate::advertise`]).
    pub advertise_ip: Option<IpAddr>,
    pub listen_ip: IpAddr,
    /// 0 picks a free port.
    pub piece_port: u16,
    /// `host:port` of every scheduler.
    pub schedulers: Vec<String>,
    /// The managers' gRPC addresses (replicas, tried in turn): they name the schedulers (by
    /// this host's cluster), and the set follows their changes. `--scheduler`s, if given
    /// too, serve until one answers.
    pub managers: Vec<String>,
    /// How often to ask the manager; `None`: as often as it says.
    pub manager_refresh: Option<Duration>,
    /// This host's name, as schedulers and the manager show it (and cluster scopes match it).
    pub hostname: String,
    pub idc: String,
    /// `country|region|city|...`, matched by cluster scopes by prefix.
    pub location: String,
    pub seed: bool,
    pub zone: String,
    pub rack: String,
    pub upload_slots: u32,
    /// Requests kept in flight per parent.
    pub pieces_in_flight: usize,
    /// Overrides the piece size a fetch from origin chooses.
    pub piece_size: Option<u32>,
    /// A piece request older than this marks its parent slow.
    pub piece_timeout: Duration,
    /// Without progress for this long, a peer asks the scheduler for leave to read the origin.
    pub back_to_source_after: Duration,
    pub origin_retries: u32,
    /// A seed's origin read stops after this long with no child connected and no local
    /// request while no scheduler answers (with one, the scheduler says when to stop).
    pub unwanted_read_timeout: Duration,
    /// How the cache is kept within bounds (see [`crate::gc`]).
    pub gc: crate::gc::GcPolicy,
    /// Below this many parents, ask the scheduler for more every `parent_refresh`.
    pub want_parents: usize,
    pub parent_refresh: Duration,
    /// A piece that only a seed parent shows (its first receiver died, or is slow to pass it
    /// on) is asked of the seed by index after this long, times a per-piece factor in
    /// [1, 3) so that not every child asks at once.
    pub seed_grace: Duration,
    /// Test hook: serve corrupted bytes.
    #[cfg(feature = "fault-injection")]
    pub corrupt_uploads: bool,
    /// Extra CA certificates (PEM) trusted for HTTPS origins, besides the system's.
    pub ca_certs: Vec<PathBuf>,
    /// HTTPS origin hosts (`host` or `host:port`) whose certificate is not verified.
    pub insecure_origins: Vec<String>,
    /// Make every request prove its access to the origin before it gets bytes, even for
    /// tasks first read without credentials.
    pub always_authorize: bool,
    /// The OCI registry mirror; `None`: not served.
    pub mirror: Option<crate::mirror::MirrorOptions>,
    /// Bytes per second this daemon serves to children, over every connection; `None`: no cap.
    pub upload_limit: Option<std::sync::Arc<ferry_transport::RateLimit>>,
    /// Bytes per second this daemon takes in from parents and origins together.
    pub download_limit: Option<std::sync::Arc<ferry_transport::RateLimit>>,
    /// Settings (credentials, endpoints) for object-store origins.
    pub object_store: ferry_backend::object::ObjectStoreConfig,
    /// Where Prometheus metrics (`/metrics`) are served; `None`: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where liveness and readiness (`/livez`, `/readyz`) are served; `None`: not served.
    pub health_listen: Option<std::net::SocketAddr>,
    /// Cluster membership: the join token this daemon trades for its certificate with the
    /// schedulers; `None`: membership off (plain TCP to schedulers and peers, warned).
    pub join_token: Option<ferry_membership::JoinToken>,
}

impl DaemonOptions {
    pub fn new(data_dir: PathBuf, schedulers: Vec<String>) -> Self {
        Self {
            host_id: HostId::random(),
            socket: data_dir.join("ferry.sock"),
            data_dir,
            advertise_ip: None,
            listen_ip: IpAddr::from([0, 0, 0, 0]),
            piece_port: 4005,
            schedulers,
            managers: vec![],
            manager_refresh: None,
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            idc: String::new(),
            location: String::new(),
            seed: false,
            zone: String::new(),
            rack: String::new(),
            upload_slots: 32,
            pieces_in_flight: ferry_policy::PIECES_IN_FLIGHT,
            piece_size: None,
            piece_timeout: Duration::from_secs(15),
            back_to_source_after: Duration::from_secs(20),
            origin_retries: 5,
            unwanted_read_timeout: Duration::from_secs(30),
            gc: crate::gc::GcPolicy::default(),
            want_parents: 4,
            parent_refresh: Duration::from_secs(1),
            seed_grace: Duration::from_secs(1),
            #[cfg(feature = "fault-injection")]
            corrupt_uploads: false,
            ca_certs: vec![],
            insecure_origins: vec![],
            always_authorize: false,
            mirror: None,
            upload_limit: None,
            download_limit: None,
            object_store: Default::default(),
            metrics_listen: None,
            health_listen: None,
            join_token: None,
        }
    }
}
