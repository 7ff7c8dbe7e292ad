//! What a daemon can send a scheduler, decoded from arbitrary bytes and checked by the
//! scheduler's validators: any input ends in a value or an `InvalidArgument`, never a panic.
#![no_main]

use ferry_proto::scheduler::{peer_message, HostMessage, PeerMessage};
use ferry_scheduler::validate;
use ferry_types::PieceLayout;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = HostMessage::decode(data) {
        let _ = validate::host(h.host.as_ref());
    }
    let Ok(m) = PeerMessage::decode(data) else { return };
    // A layout the scheduler might already know, to check held pieces against.
    let known = PieceLayout::new(10 << 20, 1 << 20).ok();
    match m.message {
        Some(peer_message::Message::Register(r)) => {
            let _ = validate::register(&r, |_| None);
            if let Ok(v) = validate::register(&r, |_| known) {
                let layout = v.meta.as_ref().map(|m| m.layout).or(known).expect("a layout");
                assert!(v.held.iter().all(|(i, _)| i.get() < layout.piece_count()));
            }
        }
        Some(peer_message::Message::TaskInfo(info)) => {
            if let Ok(meta) = validate::task_info(&info) {
                let _ = validate::pieces(Some(meta.layout), &[]);
            }
        }
        Some(peer_message::Message::Pieces(p)) => {
            let _ = validate::pieces(None, &p.pieces);
            if let Ok(ok) = validate::pieces(known, &p.pieces) {
                assert!(ok.len() <= p.pieces.len());
            }
        }
        _ => {}
    }
});
