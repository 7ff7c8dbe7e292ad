//! The protobuf codec every gRPC service here uses: tonic's prost codec with small initial
//! buffers.
//!
//! Ferry keeps one long-lived stream per task per daemon (`AnnouncePeer`), so a daemon
//! holding thousands of finished tasks holds thousands of streams on both ends. tonic's
//! default gives each stream an 8 KiB encode buffer and an 8 KiB decode buffer up front;
//! nearly every message on these streams is under a few hundred bytes, and a larger one
//! (the digest list of a big task) grows the buffer when it comes. Measured with
//! `crates/ferry/tests/memory.rs`: see the README.

use tonic::codec::{BufferSettings, Codec, ProstCodec};

/// Initial buffer per stream and direction. Not a cap: a buffer grows to the message.
const BUFFER: usize = 512;
/// Encoded bytes gathered before a stream yields them to the transport (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone, Default)]
pub struct LeanCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }
}
