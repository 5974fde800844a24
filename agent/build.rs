//! Generates the protobuf types from `proto/processes.proto`, and hands the linker
//! the release build's code layout (`text-order.txt`).
//!
//! protox compiles the schema in pure Rust, so building the agent needs no
//! `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    order_text();
    let proto_dir = "../proto";
    let proto_file = "../proto/processes.proto";
    println!("cargo:rerun-if-changed={proto_file}");
    let descriptors = protox::compile([proto_file], [proto_dir])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}

/// The functions an agent runs from start to idle, laid out together at the start
/// of its code (written by `cargo xtask text-order`, which says why; measured with
/// `cargo xtask bench --only idle`: idle RSS 4.24 MiB instead of 6.10). Release
/// builds for x86-64 Linux only, where Rust links with its own LLD (the default
/// since Rust 1.90; the workspace needs 1.95): GNU ld has no such option. Names the
/// binary no longer has are skipped without a warning, so an old file costs
/// locality, never a build. `SOCKTOP_TEXT_ORDER=none` leaves the compiler's
/// layout (what `cargo xtask text-order` profiles), or names another file.
fn order_text() {
    println!("cargo:rerun-if-env-changed=SOCKTOP_TEXT_ORDER");
    let env = |name: &str| std::env::var(name).unwrap_or_default();
    let path = match env("SOCKTOP_TEXT_ORDER").as_str() {
        "" => std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("text-order.txt"),
        "none" => return,
        path => std::path::PathBuf::from(path),
    };
    println!("cargo:rerun-if-changed={}", path.display());
    let own_linker = env("RUSTC_LINKER").is_empty() && !env("CARGO_ENCODED_RUSTFLAGS").contains("link");
    if env("PROFILE") != "release" || env("TARGET") != "x86_64-unknown-linux-gnu" || !own_linker {
        return;
    }
    if path.exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}", path.display());
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
