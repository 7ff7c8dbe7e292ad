fn main() {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_build::configure()
        .codec_path("crate::codec::LeanCodec")
        .compile_protos(
            &["proto/scheduler.proto", "proto/daemon.proto", "proto/manager.proto", "proto/membership.proto"],
            &["proto"],
        )
        .expect("compile protos");
}
