fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc is vendored so a fresh machine needs no system package.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=gochat_bus.proto");
    prost_build::Config::new().bytes(["."]).compile_protos(&["gochat_bus.proto"], &["."])?;
    Ok(())
}
