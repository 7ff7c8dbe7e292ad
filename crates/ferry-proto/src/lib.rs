//! Wire formats: the gRPC control plane (generated from `proto/`) and the data-plane frame
//! codec that peers use to move pieces.

pub mod codec;
pub mod frame;

// Generated code: message enums are as large as their largest message.
#[allow(clippy::large_enum_variant)]
pub mod scheduler {
    tonic::include_proto!("ferry.scheduler.v1");
}

pub mod daemon {
    tonic::include_proto!("ferry.daemon.v1");
}

pub mod manager {
    tonic::include_proto!("ferry.manager.v1");
}

pub mod membership {
    tonic::include_proto!("ferry.membership.v1");
}
