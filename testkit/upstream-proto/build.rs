//! Generates Rust types from the vendored upstream `.proto` files.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/k8s.io/metrics/pkg/apis/metrics/v1/generated.proto",
        "proto/k8s.io/metrics/pkg/apis/metrics/v1beta1/generated.proto",
    ];
    prost_build::Config::new()
        .include_file("upstream.rs")
        .compile_protos(&files, &["proto"])?;
    Ok(())
}
