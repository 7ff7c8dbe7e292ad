//! The piece-frame decoder on arbitrary bytes: never a panic, never a length trusted past
//! its kind's limit, and every control frame it accepts encodes back to the same bytes.
#![no_main]

use ferry_proto::frame::{decode_buf, encode, encode_piece_head, Decoded, Kind, HEAD_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((decoded, used))) = decode_buf(rest) {
        assert!(used >= HEAD_LEN && used <= rest.len());
        let mut again = bytes::BytesMut::new();
        match decoded {
            Decoded::Control(f) => encode(&f, &mut again),
            Decoded::Piece(head, body) => {
                assert_eq!(body.len(), head.len as usize);
                assert!(head.len as u64 <= Kind::Piece.max_body() as u64);
                encode_piece_head(head, &mut again);
                again.extend_from_slice(body);
            }
        }
        assert_eq!(&again[..], &rest[..used], "a decoded frame re-encodes to its bytes");
        rest = &rest[used..];
    }
});
