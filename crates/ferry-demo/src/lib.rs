//! What `ferry demo`, the multi-process tests and the testbed share, kept out of the product
//! binary's crate:
//!
//! - [`origin`]: an HTTP origin serving in-memory files, with routes that misbehave on purpose
//!   (private, gzip, shifted ranges, content that changes) and a byte counter;
//! - [`cluster`]: schedulers and daemons as real processes of a given `ferry` binary, each
//!   with its own directory, killed and removed when dropped;
//! - [`data`]: deterministic file contents;
//! - [`registry`]: a real registry (`docker-registry`) as a child process; [`oci`]: image
//!   layouts to push to it; [`token`]: a token issuer for registries behind bearer tokens.
//! - [`hub`]: a model hub speaking the Hugging Face and ModelScope APIs ([`modelscope`]);
//!   [`tls`]: a throwaway CA and HTTPS for the servers here.

pub mod cluster;
pub mod data;
pub mod hub;
pub mod modelscope;
pub mod oci;
pub mod origin;
pub mod registry;
pub mod tls;
pub mod token;
