//! OCI artifacts as directories: a CNCF ModelPack model pushed to a real registry
//! (`docker-registry`) with the real `oras` client, fetched with `ferry get oci://...`.

mod common;

use common::{Setup, Spec};
use ferry_demo::data;
use ferry_demo::oci::Blob;
use ferry_demo::registry::Registry;

const PUSH: &str = r#"
import json, os, sys, tarfile
import oras.client
target, work = sys.argv[1], sys.argv[2]
os.chdir(work)
with tarfile.open("docs.tar", "w") as t:
    t.add("docs")
files = [
    "w1.bin:application/vnd.cncf.model.weight.v1.raw",
    "w2.bin:application/vnd.cncf.model.weight.v1.raw",
    "config.json:application/vnd.cncf.model.weight.config.v1.raw",
    "docs.tar:application/vnd.cncf.model.doc.v1.tar",
]
ann = {
    "w1.bin": {"org.cncf.model.filepath": "weights/model-00001.safetensors"},
    "w2.bin": {"org.cncf.model.filepath": "weights/model-00002.safetensors"},
    "config.json": {"org.cncf.model.filepath": "config.json"},
    "docs.tar": {"org.cncf.model.filepath": "docs"},
}
json.dump(ann, open("ann.json", "w"))
json.dump({"descriptor": {"name": "test"}}, open("model.json", "w"))
oras.client.OrasClient(insecure=True).push(
    target=target, files=files, annotation_file="ann.json",
    manifest_config="model.json:application/vnd.cncf.model.config.v1+json", disable_path_validation=True)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modelpack_artifact_pushed_with_oras_lands_as_a_directory_on_four_daemons() {
    let registry = Registry::start(None).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    let (w1, w2) = (data::generate(21, 3 << 20), data::generate(22, 2 << 20));
    let config = br#"{"architectures":["Test"]}"#.to_vec();
    std::fs::write(src.join("w1.bin"), &w1).unwrap();
    std::fs::write(src.join("w2.bin"), &w2).unwrap();
    std::fs::write(src.join("config.json"), &config).unwrap();
    std::fs::write(src.join("docs/README.md"), "# the model\n").unwrap();
    let python = std::env::var("FERRY_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let target = format!("{}/models/test:v1", registry.addr);
    let push = tokio::process::Command::new(python).args(["-c", PUSH, &target]).arg(&src).output().await.unwrap();
    assert!(push.status.success(), "oras push (scripts/test installs oras): {}", String::from_utf8_lossy(&push.stderr));

    let s = Setup::start(Spec { peers: 4, files: &[("unused", 1)], ..Default::default() }).await;
    let url = format!("oci://{target}");
    let gets = s.peers.iter().map(|p| {
        let out = work.path().join(&p.name);
        let (socket, url) = (p.socket.clone(), url.clone());
        async move { (common::ferry_get(&socket, &url, &out, &["--insecure-registry", "--json"]).await, out) }
    });
    for (o, out) in futures::future::join_all(gets).await {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(std::fs::read(out.join("weights/model-00001.safetensors")).unwrap(), w1.as_ref());
        assert_eq!(std::fs::read(out.join("weights/model-00002.safetensors")).unwrap(), w2.as_ref());
        assert_eq!(std::fs::read(out.join("config.json")).unwrap(), config);
        assert_eq!(std::fs::read_to_string(out.join("docs/README.md")).unwrap(), "# the model\n");
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 3, "weights/, config.json, docs/ and nothing else: {left:?}");
    }
    for bytes in [w1.as_ref(), w2.as_ref(), config.as_slice()] {
        let digest = Blob::new(bytes.to_vec()).digest;
        assert_eq!(registry.full_gets(&digest), 1, "{digest}: the registry served the layer once");
    }

    // Bad input: a malformed reference, an artifact that does not exist.
    let p = &s.peers[0];
    let o = common::ferry_get(&p.socket, "oci://Bad/Name:v1", &work.path().join("x"), &[]).await;
    assert_eq!(o.status.code(), Some(ferry::exit::USAGE as i32), "{}", String::from_utf8_lossy(&o.stderr));
    let missing = format!("oci://{}/models/none:v1", registry.addr);
    let o = common::ferry_get(&p.socket, &missing, &work.path().join("y"), &["--insecure-registry"]).await;
    assert_eq!(o.status.code(), Some(ferry::exit::ORIGIN as i32));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}
