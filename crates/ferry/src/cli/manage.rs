//! Flags of the commands that talk to a manager: `ferry token|cluster|task` and
//! `ferry preheat`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{parse_duration, TaskIdentityArgs, DEFAULT_SOCKET};

/// How a command reaches the manager's REST API.
#[derive(Args, Debug, Clone)]
pub struct ManagerClientArgs {
    /// The manager's REST API, e.g. http://manager:8080.
    #[arg(long, env = "FERRY_MANAGER_URL")]
    pub manager_url: Option<String>,
    /// A token (personal access or session) for the manager.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the token.
    #[arg(long, env = "FERRY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Sign in as this user instead of using a token (with --password-file).
    #[arg(long, env = "FERRY_USER")]
    pub user: Option<String>,
    /// A file holding the user's password.
    #[arg(long, env = "FERRY_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Print the manager's JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// The task's length and how many hosts hold it whole.
    Stat(TaskArgs),
    /// Every host holding the task whole.
    Holders(TaskArgs),
    /// Drop the task from every host that holds it.
    Rm(TaskArgs),
}

#[derive(Args, Debug)]
pub struct TaskArgs {
    /// A URL (as downloaded, with --tag/--application/--filter-query-param), a digest
    /// (`sha256:...`) or a task id (64 hex).
    pub task: String,
    #[command(flatten)]
    pub identity: TaskIdentityArgs,
    /// Only these clusters (repeatable) [default: every cluster with a live scheduler].
    #[arg(long = "cluster")]
    pub clusters: Vec<i64>,
    #[command(flatten)]
    pub manager: ManagerClientArgs,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Every cluster with its scopes.
    List(ManagerClientArgs),
    /// One cluster with its schedulers and seeds.
    Show {
        id: i64,
        #[command(flatten)]
        manager: ManagerClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a personal access token; prints its secret, shown this once.
    Create {
        /// What the token is for (e.g. `harbor`).
        #[arg(long)]
        name: String,
        /// Scopes: job, cluster, task, user, token; repeat or separate with commas.
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Lifetime (e.g. 90d, 12h).
        #[arg(long, default_value = "90d", value_parser = parse_duration)]
        expires: Duration,
        #[command(flatten)]
        manager: ManagerClientArgs,
    },
    /// Your personal access tokens (root: everyone's), without their secrets.
    List(ManagerClientArgs),
    /// Revoke a token by id.
    Revoke {
        id: i64,
        #[command(flatten)]
        manager: ManagerClientArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum PreheatCommand {
    /// Every blob of a container image (one platform) into the cluster: through the local
    /// daemon, or with --manager-url through the manager onto the scope's hosts.
    Image(PreheatImageArgs),
    /// Files (URLs) onto the scope's hosts, through the manager.
    File(PreheatFileArgs),
}

/// Where a preheat through the manager goes.
#[derive(Args, Debug)]
pub struct PreheatTarget {
    /// single_seed_peer, all_seed_peers or all_peers.
    #[arg(long, default_value = "single_seed_peer")]
    pub scope: String,
    /// Only these clusters (repeatable) [default: every cluster with a live scheduler].
    #[arg(long = "cluster")]
    pub clusters: Vec<i64>,
    /// Give up after this long.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Return once the job is created, printing its id.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Args, Debug)]
pub struct PreheatFileArgs {
    /// The files' URLs.
    #[arg(required = true)]
    pub urls: Vec<String>,
    /// Header for the origin, "Name: value"; repeatable.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    #[command(flatten)]
    pub identity: TaskIdentityArgs,
    /// The file's digest (`sha256:...`), with one URL.
    #[arg(long)]
    pub digest: Option<String>,
    #[command(flatten)]
    pub target: PreheatTarget,
    #[command(flatten)]
    pub manager: ManagerClientArgs,
}

#[derive(Args, Debug)]
pub struct PreheatImageArgs {
    /// `registry/repository:tag` or `...@sha256:...` (`ubuntu:22.04` means Docker Hub).
    pub reference: String,
    /// `os/architecture[/variant]` of the manifest to take from an index.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    /// Reach the registry over plain HTTP.
    #[arg(long)]
    pub insecure: bool,
    /// Header for the registry, "Name: value" (e.g. an `Authorization`); repeatable.
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// The local daemon's API socket.
    #[arg(long, default_value = DEFAULT_SOCKET, env = "FERRY_SOCKET")]
    pub socket: PathBuf,
    #[command(flatten)]
    pub target: PreheatTarget,
    #[command(flatten)]
    pub manager: ManagerClientArgs,
}
