//! Flags of every subcommand.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_types::ByteSize;

mod manage;
pub use manage::*;

pub const DEFAULT_SOCKET: &str = "/run/ferry/daemon.sock";

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FERRY_GIT_COMMIT"), ")"),
    about = "Peer-to-peer distribution of files, images and model weights"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a scheduler: tells peers whom to pull pieces from.
    Scheduler(SchedulerArgs),
    /// Run a daemon (one per host): downloads, stores and serves pieces.
    Daemon(Box<DaemonArgs>),
    /// Run the manager: clusters and scopes, users and tokens, preheat jobs (REST and gRPC),
    /// on an embedded SQLite file or PostgreSQL.
    Manager(ManagerArgs),
    /// Download a URL, an object, a hub repository or an OCI artifact through the local daemon.
    Get(Box<GetArgs>),
    /// Start a whole cluster on loopback, download one file on every peer, report, clean up.
    Demo(DemoArgs),
    /// Point a container runtime (containerd, CRI-O/Podman/skopeo, Docker) at the local
    /// daemon's registry mirror.
    #[command(subcommand)]
    Init(InitCommand),
    /// Fetch content into the cluster ahead of time, writing no output.
    #[command(subcommand)]
    Preheat(PreheatCommand),
    /// Files put into the cluster from a host (a checkpoint, a dataset shard), kept by seeds
    /// and fetched anywhere by their digest.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Which hosts hold a task, or drop it everywhere (through the manager).
    #[command(subcommand)]
    Task(TaskCommand),
    /// The manager's scheduler clusters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Personal access tokens for the manager's API (Harbor's preheat, scripts).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The cluster's own CA and join token, for running with membership and no manager.
    #[command(subcommand)]
    Membership(MembershipCommand),
}

#[derive(Subcommand, Debug)]
pub enum MembershipCommand {
    /// Make a cluster CA and a join token in DIR (`ca.crt`, `ca.key`, `join.token`). Point
    /// schedulers at DIR (`--cluster-ca`) and every daemon at DIR/join.token
    /// (`--join-token-file`); the key and the token are secrets.
    Init {
        #[arg(long, default_value = "/etc/ferry/membership")]
        dir: PathBuf,
    },
    /// Replace DIR/join.token with a new token: hosts holding the old one can no longer join
    /// or renew (schedulers re-read it within 10 s). Give the new file to the daemons.
    RotateToken {
        #[arg(long, default_value = "/etc/ferry/membership")]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Put a local file into the cluster under its sha256 and wait until --replicas seeds
    /// hold it; prints the digest. This host may go away afterwards.
    Import(CacheImportArgs),
    /// Fetch an imported file (or any content the cluster holds by digest) through P2P.
    Export(CacheExportArgs),
    /// Which hosts hold a digest, and until when they keep it.
    Stat(CacheDigestArgs),
    /// Drop a digest from every host that holds it.
    Rm(CacheDigestArgs),
}

#[derive(Args, Debug)]
pub struct CacheImportArgs {
    /// The file to import.
    pub file: PathBuf,
    /// Seeds that must hold the file before the import returns (0: this host only).
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// How long this host and the replicas keep the file whatever their cache collectors
    /// would do (then it is ordinary cache).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Give up waiting for the replicas after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print one JSON object with the result (or with the error).
    #[arg(long)]
    pub json: bool,
    /// The local daemon's API socket.
    #[arg(long, default_value = DEFAULT_SOCKET, env = "FERRY_SOCKET")]
    pub socket: PathBuf,
}

#[derive(Args, Debug)]
pub struct CacheExportArgs {
    /// The digest `ferry cache import` printed, sha256:<hex>.
    pub digest: String,
    /// Where to write the file.
    #[arg(short = 'O', long)]
    pub output: PathBuf,
    /// Give up after this long (e.g. 90s, 10m); no limit when not given.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print one JSON object with the result (or with the error).
    #[arg(long)]
    pub json: bool,
    /// The local daemon's API socket.
    #[arg(long, default_value = DEFAULT_SOCKET, env = "FERRY_SOCKET")]
    pub socket: PathBuf,
}

#[derive(Args, Debug)]
pub struct CacheDigestArgs {
    /// sha256:<hex>.
    pub digest: String,
    /// Print one JSON object with the result (or with the error).
    #[arg(long)]
    pub json: bool,
    /// The local daemon's API socket.
    #[arg(long, default_value = DEFAULT_SOCKET, env = "FERRY_SOCKET")]
    pub socket: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum InitCommand {
    /// Write containerd's hosts.toml for each registry (the mirror first, the registry as
    /// fallback) and set `config_path` in its config if missing (backing the file up).
    Containerd(ContainerdInitArgs),
    /// Write a registries.conf.d drop-in (CRI-O, Podman, skopeo) with the mirror for each registry.
    Crio(CrioInitArgs),
    /// Add the mirror to Docker's daemon.json `registry-mirrors` (Docker Hub only).
    Docker(DockerInitArgs),
}

#[derive(Args, Debug)]
pub struct InitCommon {
    /// The local daemon's registry mirror.
    #[arg(long, default_value = "http://127.0.0.1:4001")]
    pub mirror: String,
    /// Print what would be written instead of writing it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct ContainerdInitArgs {
    #[command(flatten)]
    pub common: InitCommon,
    /// containerd's config file.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    pub config: PathBuf,
    /// Directory of hosts.toml files, when the config names none [default: /etc/containerd/certs.d].
    #[arg(long)]
    pub hosts_dir: Option<PathBuf>,
    /// Registries to mirror: a host (docker.io, ghcr.io; reached over HTTPS) or a URL
    /// (http://registry.local:5000); repeat or separate with commas.
    #[arg(long = "registry", value_delimiter = ',', default_value = "docker.io")]
    pub registries: Vec<String>,
    /// Also write `_default/hosts.toml`: every other registry through the mirror too.
    #[arg(long)]
    pub default: bool,
    /// Check containerd's effective configuration (`containerd config dump`), the files and
    /// the mirror, say what is wrong, and write nothing.
    #[arg(long)]
    pub check: bool,
}

#[derive(Args, Debug)]
pub struct CrioInitArgs {
    #[command(flatten)]
    pub common: InitCommon,
    /// The registries.conf.d directory the drop-in goes to.
    #[arg(long, default_value = "/etc/containers/registries.conf.d")]
    pub dir: PathBuf,
    /// Registries to mirror (host[:port]); repeat or separate with commas. The mirror serves
    /// its configured upstream for these (CRI-O does not say which registry it mirrors).
    #[arg(long = "registry", value_delimiter = ',', default_value = "docker.io")]
    pub registries: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DockerInitArgs {
    #[command(flatten)]
    pub common: InitCommon,
    /// Docker's daemon.json.
    #[arg(long, default_value = "/etc/docker/daemon.json")]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct SchedulerArgs {
    /// Address the scheduler's gRPC service listens on (port 0 picks one).
    #[arg(long, default_value = "0.0.0.0:8002", env = "FERRY_SCHEDULER_LISTEN")]
    pub listen: SocketAddr,
    /// Ordinary peers per task that may read the origin when no seed can.
    #[arg(long, default_value_t = 1, env = "FERRY_BACK_TO_SOURCE_LIMIT")]
    pub back_to_source_limit: u32,
    /// Parents a peer pulls from at most.
    #[arg(long, default_value_t = 16, env = "FERRY_MAX_PARENTS")]
    pub max_parents: usize,
    /// Children a seed feeds per task. A seed hands each piece to one child, so more children
    /// do not cost it more upload.
    #[arg(long, default_value_t = 16, env = "FERRY_SEED_MAX_CHILDREN")]
    pub seed_max_children: u32,
    /// Children an ordinary peer feeds per task.
    #[arg(long, default_value_t = 16, env = "FERRY_PEER_MAX_CHILDREN")]
    pub peer_max_children: u32,
    /// Keep each task's download graph acyclic (Dragonfly's DAG): peers never trade both
    /// ways. Off by default: in a mesh every peer passes on what it got first.
    #[arg(long, env = "FERRY_AVOID_CYCLES")]
    pub avoid_cycles: bool,
    /// A new peer takes only parents with a free child slot, never the place of an edge
    /// between two peers (the mesh then grows in generations; for comparison).
    #[arg(long, env = "FERRY_NO_SPLICE")]
    pub no_splice: bool,
    /// Origin reads at once per origin host (`host[:port]`) over all tasks of this scheduler:
    /// seeds reading for a task and peers sent back to source. Over it, peers wait; nothing
    /// reads the origin anyway. 0: no cap.
    #[arg(long, default_value_t = 0, env = "FERRY_ORIGIN_CONCURRENCY")]
    pub origin_concurrency: u32,
    /// Where Prometheus metrics (`/metrics`) and health (`/livez`, `/readyz`) are served,
    /// IP:PORT, or `off`.
    #[arg(long, default_value = "0.0.0.0:8000", env = "FERRY_SCHEDULER_METRICS_LISTEN")]
    pub metrics_listen: String,
    /// The manager's gRPC address, HOST:PORT (several: replicas, tried in turn): the
    /// scheduler keeps alive with it as a member of --cluster-id and takes that cluster's
    /// settings from it.
    #[arg(long = "manager", value_delimiter = ',', env = "FERRY_MANAGER")]
    pub managers: Vec<String>,
    /// The manager's cluster this scheduler serves.
    #[arg(long, default_value_t = 1, env = "FERRY_CLUSTER_ID")]
    pub cluster_id: u64,
    /// Address daemons reach this scheduler at, as told to the manager [default: the
    /// listen address, or the interface that routes to the manager].
    #[arg(long, env = "FERRY_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,
    /// The cluster CA's directory (made by `ferry membership init`): the scheduler then
    /// serves only members (mutual TLS) and issues certificates to hosts that bring the join
    /// token. Without it, anyone who reaches the port can join (warned at start).
    #[arg(long, env = "FERRY_CLUSTER_CA")]
    pub cluster_ca: Option<PathBuf>,
    /// How long the certificates issued to hosts are valid; they renew at half. A revoked
    /// join token stops a host's renewals, so this bounds how long a revoked host stays in.
    #[arg(long, default_value = "1h", value_parser = parse_duration, env = "FERRY_CERT_LIFETIME")]
    pub cert_lifetime: Duration,
    /// Export traces over OTLP/HTTP to this collector (e.g. http://otel-collector:4318).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// A TOML file of settings: its keys are this command's long flag names
    /// (`cache-ttl = "24h"`, `scheduler = ["a:8002"]`, `seed = true`); flags and their
    /// environment variables override it.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Args, Debug)]
pub struct ManagerArgs {
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB` [default: sqlite in --data-dir].
    #[arg(long, env = "FERRY_MANAGER_DATABASE")]
    pub database: Option<String>,
    /// Where the default SQLite database lives.
    #[arg(long, default_value = "/var/lib/ferry-manager", env = "FERRY_MANAGER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address of the REST API (and `/healthy`).
    #[arg(long, default_value = "0.0.0.0:8080", env = "FERRY_MANAGER_LISTEN")]
    pub listen: SocketAddr,
    /// Address of the gRPC service for schedulers and daemons.
    #[arg(long, default_value = "0.0.0.0:65003", env = "FERRY_MANAGER_GRPC_LISTEN")]
    pub grpc_listen: SocketAddr,
    /// Where Prometheus metrics (`/metrics`) are served, IP:PORT, or `off`.
    #[arg(long, default_value = "off", env = "FERRY_MANAGER_METRICS_LISTEN")]
    pub metrics_listen: String,
    /// The `root` user's password, used when the database has no user yet; without it a
    /// password is generated and printed once.
    #[arg(long, env = "FERRY_MANAGER_ROOT_PASSWORD")]
    pub root_password: Option<String>,
    /// How often schedulers and seeds keep alive (silent three times that: inactive).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    /// Jobs this manager runs at once.
    #[arg(long, default_value_t = 8)]
    pub job_workers: usize,
    /// How long a running job's lease lasts unrenewed: a dead manager's jobs are taken over
    /// by another after this.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub job_lease: Duration,
    /// A PEM file of CA certificates to trust for registries, besides the system's.
    #[arg(long = "ca-cert", value_delimiter = ',')]
    pub ca_certs: Vec<PathBuf>,
    /// Export traces over OTLP/HTTP to this collector (e.g. http://otel-collector:4318).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// A TOML file of settings: its keys are this command's long flag names; flags and
    /// their environment variables override it.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Where pieces and the task database live.
    #[arg(long, default_value = "/var/lib/ferry", env = "FERRY_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Local API socket for `ferry get`.
    #[arg(long, default_value = DEFAULT_SOCKET, env = "FERRY_SOCKET")]
    pub socket: PathBuf,
    /// Scheduler address(es), HOST:PORT; repeat or separate with commas.
    #[arg(long = "scheduler", required_unless_present = "managers", value_delimiter = ',', env = "FERRY_SCHEDULERS")]
    pub schedulers: Vec<String>,
    /// The manager's gRPC address, HOST:PORT (several: replicas, tried in turn): it names
    /// this host's schedulers (by the scopes of its clusters) and the daemon follows its
    /// changes.
    #[arg(long = "manager", value_delimiter = ',', env = "FERRY_MANAGER")]
    pub managers: Vec<String>,
    /// How often to ask the manager for schedulers [default: as often as it says].
    #[arg(long, value_parser = parse_duration)]
    pub manager_refresh: Option<Duration>,
    /// This host's name as the manager and schedulers show it [default: the system's].
    #[arg(long, env = "FERRY_HOSTNAME")]
    pub hostname: Option<String>,
    /// IDC of this host, for the manager's cluster scopes.
    #[arg(long, default_value = "")]
    pub idc: String,
    /// Location of this host (`country|region|city|...`), for the manager's cluster scopes.
    #[arg(long, default_value = "")]
    pub location: String,
    /// Fetch from origin when a scheduler asks, and serve first.
    #[arg(long)]
    pub seed: bool,
    /// Stable id of this host; random when not given.
    #[arg(long, env = "FERRY_HOST_ID")]
    pub host_id: Option<String>,
    /// Address the piece server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_ip: IpAddr,
    /// Address other peers use to reach this host [default: the address of the interface
    /// that routes to the scheduler].
    #[arg(long, env = "FERRY_ADVERTISE_IP")]
    pub advertise_ip: Option<IpAddr>,
    /// Piece server port (0 picks one).
    #[arg(long, default_value_t = 4005)]
    pub piece_port: u16,
    /// Zone (or data centre) of this host: the scheduler prefers parents in the same one.
    #[arg(long, default_value = "")]
    pub zone: String,
    /// Rack of this host: the scheduler prefers parents in the same one.
    #[arg(long, default_value = "")]
    pub rack: String,
    /// Children this host serves at once, over all tasks.
    #[arg(long, default_value_t = 32)]
    pub upload_slots: u32,
    /// Most bytes per second this host serves to other peers, over all connections (e.g.
    /// 100MiB); no cap when not given.
    #[arg(long, env = "FERRY_UPLOAD_RATE")]
    pub upload_rate: Option<ByteSize>,
    /// Most bytes per second this host takes in from peers and origins together.
    #[arg(long, env = "FERRY_DOWNLOAD_RATE")]
    pub download_rate: Option<ByteSize>,
    /// Requests in flight per parent.
    #[arg(long, default_value_t = ferry_policy::PIECES_IN_FLIGHT, env = "FERRY_PIECES_IN_FLIGHT")]
    pub pieces_in_flight: usize,
    /// Piece size for tasks this daemon reads from origin (power of two, e.g. 4MiB).
    #[arg(long)]
    pub piece_size: Option<ByteSize>,
    /// Ask to read the origin after this long without progress.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub back_to_source_after: Duration,
    /// Drop a parent whose piece takes longer than this.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub piece_timeout: Duration,
    /// Retries of a failing origin read (5xx, reset) before the download fails.
    #[arg(long, default_value_t = 5)]
    pub origin_retries: u32,
    /// While no scheduler answers, a seed stops reading the origin for a task after this long
    /// with nobody to serve (no child connected, no local request).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub unwanted_read_timeout: Duration,
    /// Most bytes the cache may hold (e.g. 50GiB); least recently used tasks go first.
    #[arg(long, env = "FERRY_CACHE_QUOTA")]
    pub cache_quota: Option<ByteSize>,
    /// A task nobody asked for within this long leaves the cache.
    #[arg(long, default_value = "24h", value_parser = parse_duration, env = "FERRY_CACHE_TTL")]
    pub cache_ttl: Duration,
    /// When the data directory's filesystem is fuller than this percentage, least recently
    /// used tasks leave the cache until it is below --disk-low-watermark.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub disk_high_watermark: u8,
    /// See --disk-high-watermark.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub disk_low_watermark: u8,
    /// How often the cache collector runs (it also runs before each new task).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub gc_interval: Duration,
    /// Test hook: corrupt every piece this daemon uploads (only in builds with the
    /// `fault-injection` feature, which the tests turn on and releases do not).
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true)]
    pub corrupt_uploads: bool,
    /// A PEM file of CA certificates to trust for HTTPS origins, besides the system's
    /// (`SSL_CERT_FILE` is honoured too); repeatable.
    #[arg(long = "ca-cert", env = "FERRY_CA_CERT", value_delimiter = ',')]
    pub ca_certs: Vec<PathBuf>,
    /// An HTTPS origin host (`host` or `host:port`) whose certificate is NOT verified: the
    /// explicit opt-out, logged as a warning at start and on every read. Repeatable.
    /// (Object stores: their own `AWS_ALLOW_INVALID_CERTIFICATES` and the like.)
    #[arg(long = "insecure-origin", value_delimiter = ',')]
    pub insecure_origins: Vec<String>,
    /// Make every request prove its access to the origin (one small request) before it is
    /// handed bytes, also for tasks first read without credentials.
    #[arg(long, env = "FERRY_ALWAYS_AUTHORIZE")]
    pub always_authorize: bool,
    /// Where the OCI registry mirror listens, IP:PORT (port 0 picks one), or `off`.
    #[arg(long, default_value = "127.0.0.1:4001", env = "FERRY_MIRROR_LISTEN")]
    pub mirror_listen: String,
    /// The registry the mirror serves when a request names none (`X-Ferry-Registry`
    /// header, containerd's `ns=`).
    #[arg(long, default_value = "https://registry-1.docker.io", env = "FERRY_MIRROR_UPSTREAM")]
    pub mirror_upstream: String,
    /// Registry host[:port] the mirror reaches over plain HTTP when a request names it by
    /// host; repeat or separate with commas.
    #[arg(long = "mirror-insecure", value_delimiter = ',')]
    pub mirror_insecure: Vec<String>,
    /// A registry that takes longer than this to answer, or a download by digest without
    /// progress for this long, gets the client a 504.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub mirror_timeout: Duration,
    /// Registry credentials the mirror shows when a client brings none: a docker
    /// `config.json` (`{"auths": {"host": {"auth": "<base64 user:pass>"}}}`).
    #[arg(long, env = "FERRY_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,
    /// Registry host[:port] anyone may read: its cached blobs are served without asking
    /// the registry about each client. Repeat or separate with commas.
    #[arg(long = "mirror-public", value_delimiter = ',')]
    pub mirror_public: Vec<String>,
    /// Serve as an HTTP(S) proxy too, on the mirror's port, for this host: `host` (any port)
    /// or `host:port`; its HTTPS is intercepted with the proxy's CA. Any host not given is
    /// refused (403). Repeat or separate with commas.
    #[arg(long = "proxy-host", value_delimiter = ',', env = "FERRY_PROXY_HOSTS")]
    pub proxy_hosts: Vec<String>,
    /// A regex on the full URL: a GET or HEAD that matches goes through P2P, every other
    /// request is forwarded untouched. Repeatable; default: registry blobs by digest.
    #[arg(long = "proxy-rule")]
    pub proxy_rules: Vec<String>,
    /// The proxy's CA certificate (PEM); with --proxy-ca-key. Default: one generated once
    /// into the data dir (`proxy-ca.crt`), which clients must trust.
    #[arg(long, requires = "proxy_ca_key")]
    pub proxy_ca_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --proxy-ca-cert.
    #[arg(long, requires = "proxy_ca_cert")]
    pub proxy_ca_key: Option<std::path::PathBuf>,
    /// Where Prometheus metrics (`/metrics`) are served, IP:PORT, or `off`.
    #[arg(long, default_value = "0.0.0.0:4002", env = "FERRY_METRICS_LISTEN")]
    pub metrics_listen: String,
    /// Where liveness and readiness (`/livez`, `/readyz`) are served, IP:PORT, or `off`.
    #[arg(long, default_value = "0.0.0.0:4003", env = "FERRY_HEALTH_LISTEN")]
    pub health_listen: String,
    /// S3 credentials and endpoint for s3:// origins (the usual `AWS_*` variables work too).
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    pub s3_access_key_id: Option<String>,
    /// See --s3-access-key-id.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// See --s3-access-key-id.
    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    pub s3_session_token: Option<String>,
    /// S3 region.
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,
    /// An S3-compatible endpoint (MinIO, Ceph, moto), e.g. http://minio:9000.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    /// Azure storage account for azblob:// origins (the usual `AZURE_*` variables work too).
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT_NAME")]
    pub azure_storage_account: Option<String>,
    /// See --azure-storage-account.
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT_KEY", hide_env_values = true)]
    pub azure_storage_access_key: Option<String>,
    /// A GCP service account key (JSON) for gs:// origins (`GOOGLE_*` variables work too).
    #[arg(long, env = "GOOGLE_SERVICE_ACCOUNT_KEY", hide_env_values = true)]
    pub gcs_service_account_key: Option<String>,
    /// The cluster's join token file (`ferry membership init` writes it): the daemon trades
    /// it with a scheduler for a member certificate, renews it by itself, and then speaks only
    /// mutual TLS with schedulers and peers. Without it, membership is off (warned at start).
    #[arg(long, env = "FERRY_JOIN_TOKEN_FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Export traces over OTLP/HTTP to this collector (e.g. http://otel-collector:4318).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// A TOML file of settings: its keys are this command's long flag names
    /// (`cache-ttl = "24h"`, `scheduler = ["a:8002"]`, `seed = true`); flags and their
    /// environment variables override it.
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// What to download: an http(s):// URL; an object `s3://bucket/key`, `gs://...`,
    /// `azblob://container/key` (a prefix with -r); a hub repository
    /// `hf://[models/|datasets/|spaces/]owner/repo[/path]` or `modelscope://owner/repo[/path]`
    /// (one file; a directory with -r);
    /// or an OCI artifact `oci://registry/repository[:tag|@digest]` (a directory).
    pub url: String,
    /// Where to write the file (with -r: the directory to write the files into).
    #[arg(short = 'O', long)]
    pub output: PathBuf,
    /// Fetch every file of a repository (or of a directory in it) or every object under a
    /// prefix, each as its own task.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// The hub revision (branch, tag or commit); resolved once to its commit id
    /// [default: main for hf://, master for modelscope://].
    #[arg(long)]
    pub revision: Option<String>,
    /// The hub's token (sent to the hub only, never to a host it redirects to).
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,
    /// The hub's endpoint.
    #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
    pub hf_endpoint: String,
    /// ModelScope's token (sent to its API only).
    #[arg(long, env = "MODELSCOPE_API_TOKEN", hide_env_values = true)]
    pub modelscope_token: Option<String>,
    /// ModelScope's endpoint.
    #[arg(long, env = "MODELSCOPE_ENDPOINT", default_value = "https://www.modelscope.cn")]
    pub modelscope_endpoint: String,
    /// With -r: fetch only files whose path (in the repository) matches; `*` and `?`,
    /// repeatable.
    #[arg(long)]
    pub include: Vec<String>,
    /// With -r: skip files whose path matches; repeatable.
    #[arg(long)]
    pub exclude: Vec<String>,
    /// With -r: files fetched at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// With -r: refuse when more files than this match (no cap by default).
    #[arg(long)]
    pub max_files: Option<usize>,
    /// oci://: the platform to take from an index, os/arch.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// oci://: reach the registry over plain HTTP.
    #[arg(long)]
    pub insecure_registry: bool,
    /// oci://: registry credentials, a docker `config.json` with `auths`.
    #[arg(long, env = "FERRY_REGISTRY_AUTH")]
    pub registry_auth: Option<PathBuf>,
    /// Extra request header for the origin, "Name: value".
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Expected whole-file digest, sha256:<hex>, sha512:<hex> or gitsha1:<hex> (git's blob id).
    #[arg(long)]
    pub digest: Option<String>,
    #[command(flatten)]
    pub identity: TaskIdentityArgs,
    /// Give up after this long (e.g. 90s, 10m); no limit when not given.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// The local daemon's API socket.
    #[arg(long, default_value = DEFAULT_SOCKET, env = "FERRY_SOCKET")]
    pub socket: PathBuf,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print one JSON object with the result (or with the error).
    #[arg(long)]
    pub json: bool,
    /// Hard-link the output to the daemon's cache instead of copying it (same filesystem;
    /// the shared file is made read-only).
    #[arg(long)]
    pub link: bool,
}

/// What besides the URL makes a task's identity (`ferry get`, `ferry task`, `ferry preheat
/// file`): requests that differ in any of these never share a task.
#[derive(Args, Debug, Default)]
pub struct TaskIdentityArgs {
    /// Part of the task's identity: requests with other tags never share the task.
    #[arg(long, default_value = "")]
    pub tag: String,
    /// Part of the task's identity, like --tag: the application asking.
    #[arg(long, default_value = "")]
    pub application: String,
    /// Query parameter that does not change the content (e.g. a signature); repeatable.
    #[arg(long = "filter-query-param")]
    pub filter_query_params: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Ordinary peers (a seed peer comes on top).
    #[arg(long, default_value_t = 8)]
    pub peers: usize,
    /// Size of the file every peer downloads.
    #[arg(long, default_value = "256MiB")]
    pub size: ByteSize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Piece size passed to the seed.
    #[arg(long)]
    pub piece_size: Option<ByteSize>,
    /// Land outputs as read-only hard links to the cache (`ferry get --link`) instead of
    /// copies: shows the transfer alone, without the copy each host makes.
    #[arg(long)]
    pub link: bool,
}

/// `500ms`, `30s`, `10m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 30s, 10m, 500ms or 90d"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return Err(format!("`{s}` is not a duration like 30s, 10m, 500ms or 90d")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_duration("90d").unwrap(), Duration::from_secs(90 * 86400));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_help_text() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let mut missing = vec![];
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
                let id = arg.get_id().as_str();
                if arg.get_help().is_none() && !matches!(id, "help" | "version") {
                    missing.push(format!("{} --{id}", sub.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "flags without help text: {missing:?}");
    }
}
