fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .codec_path("crate::codec::MessageChunks")
        .compile_protos(&["proto/nodepulse/v1/nodepulse.proto"], &["proto"])?;
    Ok(())
}
