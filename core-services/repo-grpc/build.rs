fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc is vendored so a fresh machine needs no system package (as in proto/build.rs).
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=../../proto/gochat_repo.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_protos(&["../../proto/gochat_repo.proto"], &["../../proto"])?;
    Ok(())
}
