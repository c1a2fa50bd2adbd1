//! Compiles `schemas/*.proto` with protox (pure Rust; no `protoc` needed) and prost.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["schemas/vpn.proto", "schemas/tailnet.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["schemas"])?;
    let mut config = prost_build::Config::new();
    config.compile_fds(descriptors)?;
    Ok(())
}
