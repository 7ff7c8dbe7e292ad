//! The piece server and client over real loopback TCP: bitfield, pipelined pieces, `Have`
//! for pieces finished later, rejects for what is not held and for unknown tasks.

use std::sync::Arc;
use std::time::Duration;

use ferry_storage::{PieceStore, Store, TaskFile, TaskRecord};
use ferry_transport::{
    connect, serve, Availability, ParentEvent, ServerOptions, ServerStats, TaskLookup, TransportError,
};
use ferry_types::{PieceDigest, TaskId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TASK: TaskId = TaskId([9; 32]);
const PIECE: u32 = 16 * 1024;

struct One(Arc<TaskFile>, Arc<Availability>);

impl TaskLookup for One {
    fn lookup(&self, task: &TaskId) -> Option<(Arc<TaskFile>, Arc<Availability>)> {
        (*task == TASK).then(|| (self.0.clone(), self.1.clone()))
    }
}

#[tokio::test]
async fn serves_pipelined_pieces_haves_and_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let len = 3 * PIECE as u64 + 100;
    let (file, _) = store
        .open_task(TASK, &TaskRecord { url: "x".into(), content_length: len, piece_size: PIECE, ..Default::default() })
        .unwrap();
    let avail = Arc::new(Availability::new(file.layout().piece_count(), false));
    let piece = |i: u32| -> Vec<u8> {
        let idx = file.layout().index(i).unwrap();
        (0..file.layout().len(idx)).map(|b| (b ^ i) as u8).collect()
    };
    for i in [0, 3] {
        file.write_piece(file.layout().index(i).unwrap(), &piece(i)).unwrap();
        avail.insert(i, PieceDigest::of(&piece(i)).0);
    }
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let stats = Arc::new(ServerStats::default());
    let lookup = Arc::new(One(file.clone(), avail.clone()));
    tokio::spawn(serve(l, lookup, ServerOptions::default(), stats.clone(), cancel.clone()));

    let (bits, mut rd, mut wr) = connect(addr, TASK, PIECE, Duration::from_secs(5), None, None).await.unwrap();
    assert_eq!(bits, vec![true, false, false, true]);
    // Pipelined: three requests before reading anything; answers come in order.
    for i in [0, 1, 3] {
        wr.request(i).await.unwrap();
    }
    let mut got = vec![];
    while got.len() < 3 {
        match rd.next().await.unwrap().unwrap() {
            ParentEvent::Piece { index, bytes, claimed } => {
                assert_eq!(PieceDigest::of(&bytes), PieceDigest::of(&piece(index)));
                assert_eq!(
                    claimed,
                    Some(PieceDigest::of(&bytes).0),
                    "the parent's recorded digest travels with the piece"
                );
                got.push(index);
            }
            ParentEvent::Reject { index, .. } => got.push(100 + index),
            ParentEvent::Have(_) => {}
        }
    }
    assert_eq!(got, vec![0, 101, 3]);
    assert_eq!(stats.bytes_uploaded.load(std::sync::atomic::Ordering::Relaxed), PIECE as u64 + 100);

    // A piece finished later is announced, then served.
    file.write_piece(file.layout().index(1).unwrap(), &piece(1)).unwrap();
    avail.insert(1, [1; 32]);
    assert!(matches!(rd.next().await.unwrap().unwrap(), ParentEvent::Have(1)));
    wr.request(1).await.unwrap();
    assert!(matches!(rd.next().await.unwrap().unwrap(), ParentEvent::Piece { index: 1, .. }));

    let unknown = connect(addr, TaskId([1; 32]), PIECE, Duration::from_secs(5), None, None).await;
    assert!(matches!(unknown, Err(TransportError::UnknownTask { .. })));
    cancel.cancel();
}

#[tokio::test]
async fn garbage_from_a_client_closes_only_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, cancel, _dir) = server_with(ServerOptions::default());
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // An oversize length with a bad version.
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 7, 1]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(n, 0, "the server should close a connection that sent garbage");
    // The server still serves others.
    assert!(connect(addr, TASK, PIECE, Duration::from_secs(5), None, None).await.is_ok());
    cancel.cancel();
}

/// A dispensing parent over real sockets: two children each keep one `RequestAny` waiting;
/// each new piece goes to exactly one of them, in the order they asked, and only then shows
/// up as a `Have` to the other. When everything is handed out, the next ask is `Exhausted`.
#[tokio::test]
async fn dispensing_parent_hands_each_piece_to_one_child() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (file, _) = store
        .open_task(
            TASK,
            &TaskRecord { url: "x".into(), content_length: 2 * PIECE as u64, piece_size: PIECE, ..Default::default() },
        )
        .unwrap();
    let avail = Arc::new(Availability::new(2, true));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let cancel = CancellationToken::new();
    let stats = Arc::new(ServerStats::default());
    tokio::spawn(serve(l, Arc::new(One(file.clone(), avail.clone())), ServerOptions::default(), stats, cancel.clone()));

    let (bits_a, mut rd_a, mut wr_a) = connect(addr, TASK, PIECE, Duration::from_secs(5), None, None).await.unwrap();
    let (_, mut rd_b, mut wr_b) = connect(addr, TASK, PIECE, Duration::from_secs(5), None, None).await.unwrap();
    assert_eq!(bits_a, vec![false, false]);
    let waiting = |n: usize| {
        let avail = avail.clone();
        move || {
            let ok = avail.waiting() == n;
            async move { ok.then_some(()) }
        }
    };
    wr_a.request_any().await.unwrap();
    ferry_testkit::wait_until("A's ask queued", Duration::from_secs(5), waiting(1)).await;
    wr_b.request_any().await.unwrap();
    ferry_testkit::wait_until("B's ask queued", Duration::from_secs(5), waiting(2)).await;
    for i in 0..2u32 {
        file.write_piece(file.layout().index(i).unwrap(), &vec![i as u8; PIECE as usize]).unwrap();
        avail.insert(i, [1; 32]);
    }
    let first_piece = |events: Vec<ParentEvent>| {
        events.into_iter().find_map(|e| match e {
            ParentEvent::Piece { index, .. } => Some(index),
            _ => None,
        })
    };
    let mut got = vec![];
    for rd in [&mut rd_a, &mut rd_b] {
        let mut evs = vec![];
        loop {
            let e = rd.next().await.unwrap().unwrap();
            let piece = matches!(e, ParentEvent::Piece { .. });
            evs.push(e);
            if piece {
                break;
            }
        }
        got.push(first_piece(evs).unwrap());
    }
    assert_eq!(got, vec![0, 1], "each piece went to exactly one child, in the order they asked");
    wr_a.request_any().await.unwrap();
    loop {
        match rd_a.next().await.unwrap().unwrap() {
            ParentEvent::Reject { code, .. } => {
                assert_eq!(code, ferry_proto::frame::RejectCode::Exhausted);
                break;
            }
            ParentEvent::Have(_) => {}
            ParentEvent::Piece { index, .. } => panic!("piece {index} handed out twice"),
        }
    }
    cancel.cancel();
}

/// Waits for the server to close `s` (EOF or reset), bounded.
async fn closed_by_server(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn server_with(opts: ServerOptions) -> (std::net::SocketAddr, CancellationToken, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (file, _) = store
        .open_task(TASK, &TaskRecord { url: "x".into(), content_length: 10, piece_size: PIECE, ..Default::default() })
        .unwrap();
    let avail = Arc::new(Availability::new(1, false));
    let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_l.set_nonblocking(true).unwrap();
    let addr = std_l.local_addr().unwrap();
    let l = TcpListener::from_std(std_l).unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(serve(l, Arc::new(One(file, avail)), opts, Arc::default(), cancel.clone()));
    (addr, cancel, dir)
}

#[tokio::test]
async fn a_hello_announcing_a_megabyte_is_refused_from_its_head() {
    use tokio::io::AsyncWriteExt;
    let (addr, cancel, _dir) = server_with(ServerOptions::default());
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = (1024 * 1024u32).to_be_bytes().to_vec();
    head.extend([ferry_proto::frame::VERSION, ferry_proto::frame::Kind::Hello as u8]);
    s.write_all(&head).await.unwrap();
    assert!(closed_by_server(&mut s).await, "an oversize Hello must close the connection at once");
    cancel.cancel();
}

#[tokio::test]
async fn silent_and_stalled_connections_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let opts = ServerOptions { hello_timeout: Duration::from_millis(300), ..Default::default() };
    let (addr, cancel, _dir) = server_with(opts);
    // Says nothing at all.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Starts a Hello and stalls after 3 bytes.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0, 0, 0]).await.unwrap();
    assert!(closed_by_server(&mut silent).await);
    assert!(closed_by_server(&mut stalled).await);
    cancel.cancel();
}

#[tokio::test]
async fn strangers_beyond_the_per_address_cap_are_closed_and_introduced_ones_are_not_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let opts = ServerOptions { max_per_address: 2, ..Default::default() };
    let (addr, cancel, _dir) = server_with(opts);
    // Many connections from one address that each said Hello for a served task: one host
    // pulling many tasks from another. None is refused.
    let mut introduced = vec![];
    for _ in 0..10 {
        introduced.push(connect(addr, TASK, PIECE, Duration::from_secs(5), None, None).await.unwrap());
    }
    // Two silent strangers fill this address's allowance; a third is closed at once.
    let mut silent = vec![];
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(closed_by_server(&mut third).await, "a third stranger from one address");
    assert!(
        connect(addr, TASK, PIECE, Duration::from_secs(5), None, None).await.is_err(),
        "no room to say Hello either"
    );
    // Another loopback address has its own allowance.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = sock.connect(addr).await.unwrap();
    let mut hello = bytes::BytesMut::new();
    ferry_proto::frame::encode(&ferry_proto::frame::Frame::Hello { task_id: TASK.0, trace: None }, &mut hello);
    other.write_all(&hello).await.unwrap();
    let mut first = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), other.read_exact(&mut first)).await.unwrap().unwrap();
    assert_eq!(first[5], ferry_proto::frame::Kind::Bitfield as u8);
    drop((introduced, silent));
    cancel.cancel();
}
