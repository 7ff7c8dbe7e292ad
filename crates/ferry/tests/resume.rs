//! A daemon killed with SIGKILL mid-download resumes from what it verified.

mod common;

use std::time::Duration;

use common::{download, stats, Setup, Spec, PIECE_BYTES};
use ferry_demo::origin::OriginOptions;
use ferry_testkit::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_resumes_without_refetching() {
    let size = 8 << 20;
    let origin = OriginOptions { throttle: Some(3 << 20), ..Default::default() };
    let mut s = Setup::start(Spec { files: &[("f.bin", size)], origin, ..Default::default() }).await;
    let url = s.origin.url("f.bin");
    let victim = s.peers[0].clone();
    let out = s.out("victim");
    let others: Vec<_> = s.peers[1..].iter().map(|p| (p.clone(), s.out(&p.name))).collect();
    let others = tokio::spawn({
        let url = url.clone();
        async move {
            let jobs = others.iter().map(|(p, o)| download(p, &url, o));
            futures::future::join_all(jobs).await
        }
    });
    let first = tokio::spawn({
        let (v, url, o) = (victim.clone(), url.clone(), out.clone());
        async move { download(&v, &url, &o).await }
    });
    let held_before = wait_until("victim to hold a few pieces", Duration::from_secs(30), || {
        let v = victim.clone();
        async move {
            let t = stats(&v).await?.tasks.into_iter().next()?;
            (t.pieces_held >= 4 && !t.complete).then_some(t.pieces_held)
        }
    })
    .await;
    let args = s.cluster.args_of(&victim.name).unwrap();
    s.cluster.kill(&victim.name).await;
    assert!(first.await.unwrap().is_err());
    assert!(!out.exists(), "a killed download left a file at the output path");

    s.cluster.restart(&victim.name, args).await.unwrap();
    download(&victim, &url, &out).await.unwrap();
    assert!(s.verify("f.bin", &out));
    let st = stats(&victim).await.unwrap();
    let total = (size as u64).div_ceil(PIECE_BYTES);
    assert!(st.pieces_resumed >= held_before as u64, "resumed {} < held {held_before}", st.pieces_resumed);
    assert_eq!(
        st.pieces_resumed + st.pieces_from_peers + st.pieces_from_origin,
        total,
        "verified pieces were fetched again after the restart"
    );
    for r in others.await.unwrap() {
        r.unwrap();
    }
}
