//! Compiles the .proto files with the protoc that ships inside the
//! `protoc-bin-vendored` crate, so a fresh machine needs no protoc package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto/tessera.proto");
    tonic_build::configure()
        .bytes(["."])
        .codec_path("crate::codec::ProtoCodec")
        .compile_protos(&["proto/tessera.proto"], &["proto"])?;
    Ok(())
}
