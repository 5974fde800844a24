//! Generates the protobuf types from `proto/processes.proto`.
//!
//! protox compiles the schema in pure Rust, so building the agent needs no
//! `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../proto";
    let proto_file = "../proto/processes.proto";
    println!("cargo:rerun-if-changed={proto_file}");
    let descriptors = protox::compile([proto_file], [proto_dir])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
