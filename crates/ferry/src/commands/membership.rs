//! `ferry membership`: the cluster's own CA and join token, for membership without a manager.

use ferry_membership::ca::JOIN_TOKEN;
use ferry_membership::ClusterCa;

use crate::cli::MembershipCommand;
use crate::{exit, Exit};

pub fn run(c: MembershipCommand) -> Result<(), Exit> {
    match c {
        MembershipCommand::Init { dir } => {
            let (_, token) = ClusterCa::create(&dir).map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
            println!("cluster CA and join token {} written to {}", token.id, dir.display());
            println!("schedulers: ferry scheduler --cluster-ca {}", dir.display());
            println!("daemons:    ferry daemon --join-token-file {}", dir.join(JOIN_TOKEN).display());
            Ok(())
        }
        MembershipCommand::RotateToken { dir } => {
            let token = ClusterCa::rotate_token(&dir).map_err(|e| Exit::new(exit::USAGE, e.to_string()))?;
            println!("join token {} written to {}; the old one no longer joins or renews", token.id, dir.display());
            Ok(())
        }
    }
}
