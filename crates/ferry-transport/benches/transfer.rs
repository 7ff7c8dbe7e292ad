//! One parent-to-child transfer on loopback over Ferry's piece protocol, next to a plain TCP
//! `sendfile` of the same bytes from the same file (the floor Ferry's data plane is held to).
//! Both receivers read every byte into user space. Then the whole child path (each piece
//! verified, written at its offset and recorded) next to what curl does (read, write).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferry_storage::{PieceStore, Store, TaskFile, TaskRecord};
use ferry_transport::{connect, serve, Availability, ParentEvent, ServerOptions, ServerStats, TaskLookup};
use ferry_types::{PieceDigest, TaskId};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SIZE: u64 = 64 << 20;
const PIECE: u32 = 4 << 20;
const TASK: TaskId = TaskId([5; 32]);

struct One(Arc<TaskFile>, Arc<Availability>);

impl TaskLookup for One {
    fn lookup(&self, task: &TaskId) -> Option<(Arc<TaskFile>, Arc<Availability>)> {
        (*task == TASK).then(|| (self.0.clone(), self.1.clone()))
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let record = TaskRecord { url: "bench".into(), content_length: SIZE, piece_size: PIECE, ..Default::default() };
    let (file, _) = store.open_task(TASK, &record).unwrap();
    let avail = Arc::new(Availability::new(file.layout().piece_count(), false));
    for idx in file.layout().indices() {
        let bytes: Vec<u8> = (0..file.layout().len(idx)).map(|i| (i % 251) as u8).collect();
        file.write_piece(idx, &bytes).unwrap();
        avail.insert(idx.get(), [1; 32]);
    }
    let cancel = CancellationToken::new();
    let (ferry_addr, plain_addr) = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ferry_addr = l.local_addr().unwrap();
        let lookup = Arc::new(One(file.clone(), avail.clone()));
        tokio::spawn(serve(l, lookup, ServerOptions::default(), Arc::new(ServerStats::default()), cancel.clone()));
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_addr = plain.local_addr().unwrap();
        let path = file.path().to_owned();
        tokio::spawn(async move {
            loop {
                let (sock, _) = plain.accept().await.unwrap();
                let f = std::fs::File::open(&path).unwrap();
                tokio::spawn(async move {
                    ferry_transport::io::sendfile_all(&sock, &f, 0, SIZE as usize).await.unwrap();
                });
            }
        });
        (ferry_addr, plain_addr)
    });

    let mut g = c.benchmark_group("loopback_64MiB");
    g.throughput(Throughput::Bytes(SIZE));
    g.sample_size(20);
    g.bench_function("ferry_piece_protocol", |b| b.to_async(&rt).iter(|| pull_all(ferry_addr, |_, _| {})));
    // What a child does with each piece besides receiving it: BLAKE3 verification, the
    // positional write into its content file and the piece record in redb.
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = Store::open(sink_dir.path()).unwrap();
    let expected: Vec<PieceDigest> = file
        .layout()
        .indices()
        .map(|i| PieceDigest::of(&(0..file.layout().len(i)).map(|b| (b % 251) as u8).collect::<Vec<u8>>()))
        .collect();
    let round = std::sync::atomic::AtomicU8::new(0);
    g.bench_function("ferry_piece_protocol_verified_and_stored", |b| {
        b.to_async(&rt).iter(|| async {
            let task = TaskId([round.fetch_add(1, std::sync::atomic::Ordering::Relaxed); 32]);
            let (out, _) = sink.open_task(task, &record).unwrap();
            pull_all(ferry_addr, |index, bytes| {
                let idx = out.layout().index(index).unwrap();
                let want = expected[index as usize];
                tokio::task::block_in_place(|| {
                    assert_eq!(PieceDigest::of(&bytes), want);
                    out.write_piece(idx, &bytes).unwrap();
                    sink.record_piece(task, idx, want).unwrap();
                });
            })
            .await;
            sink.remove_task(task).unwrap();
        })
    });
    // The same bytes as curl handles them: read from the socket, written to a file.
    g.bench_function("plain_tcp_to_file", |b| {
        b.to_async(&rt).iter(|| async {
            use std::io::Write;
            let mut s = tokio::net::TcpStream::connect(plain_addr).await.unwrap();
            let mut out = std::fs::File::create(sink_dir.path().join("plain.bin")).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            while got < SIZE {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                tokio::task::block_in_place(|| out.write_all(&buf[..n]).unwrap());
                got += n as u64;
            }
        })
    });
    g.bench_function("plain_tcp_sendfile", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = tokio::net::TcpStream::connect(plain_addr).await.unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            while got < SIZE {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0);
                got += n as u64;
            }
        })
    });
    g.finish();
    cancel.cancel();
}

/// Asks for every piece, pipelined, and hands each to `each` as it arrives.
async fn pull_all(addr: std::net::SocketAddr, mut each: impl FnMut(u32, Vec<u8>)) {
    let (_, mut rd, mut wr) = connect(addr, TASK, PIECE, std::time::Duration::from_secs(5), None, None).await.unwrap();
    let count = SIZE.div_ceil(PIECE as u64) as u32;
    let requests = async move {
        for i in 0..count {
            wr.request(i).await.unwrap();
        }
        wr
    };
    let receive = async {
        let mut got = 0u64;
        while got < SIZE {
            if let Some(ParentEvent::Piece { index, bytes, .. }) = rd.next().await.unwrap() {
                got += bytes.len() as u64;
                each(index, bytes);
            }
        }
    };
    let (_wr, ()) = tokio::join!(requests, receive);
}

criterion_group!(benches, bench);
criterion_main!(benches);
