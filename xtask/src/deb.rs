//! `cargo xtask deb`: the Debian package. Writes the man page and the shell
//! completions from the agent's own clap definition (the agent library's `cli`, which
//! `--help` comes from), then runs `cargo deb`, which takes the rest from
//! `[package.metadata.deb]` in `agent/Cargo.toml` and the unit and maintainer
//! scripts in `deploy/`.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, ensure};
use clap::CommandFactory;
use clap_complete::Shell;

use socktop_agent::cli;

const BINARY: &str = "socktop_agent";

#[derive(clap::Args)]
pub struct Args {
    /// Cargo profile of the packaged binary (a check can use `dev`, built by the tests already).
    #[arg(long, default_value = "release")]
    profile: String,
    /// Only write the man page and completions.
    #[arg(long)]
    assets_only: bool,
    /// Cross-build for this target (aarch64-unknown-linux-gnu: an arm64 package).
    #[arg(long)]
    target: Option<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let root = super::workspace_root();
    // Beside the binary of the profile packaged, where `agent/Cargo.toml` lists them
    // as `target/release/assets/...` (cargo-deb's name for that folder, under the
    // target's own folder when cross-building).
    let profile_dir = if args.profile == "dev" { "debug" } else { &args.profile };
    let target_dir = args.target.as_ref().map_or(root.join("target"), |target| root.join("target").join(target));
    write_assets(&target_dir.join(profile_dir).join("assets"))?;
    if args.assets_only {
        return Ok(());
    }
    let mut command = Command::new(super::cargo());
    command.current_dir(&root).args(["deb", "--locked", "-p", "socktop_agent", "--profile", &args.profile]);
    if let Some(target) = &args.target {
        crate::arm64::toolchain::check_target(target)?;
        crate::arm64::toolchain::cross_environment(&mut command)?.args(["--target", target]);
    }
    let status = command.status().context("running cargo deb (cargo install --locked cargo-deb)")?;
    ensure!(status.success(), "cargo deb failed");
    Ok(())
}

/// The agent's command line as `--help` shows it, named as installed. Compiled
/// here, clap would take the name and the one-line description from this crate.
fn agent_command() -> clap::Command {
    cli::Cli::command().name(BINARY).bin_name(BINARY).about(agent_description())
}

/// The `description` of the agent's package, which its `--help` shows.
fn agent_description() -> &'static str {
    include_str!("../../agent/Cargo.toml")
        .lines()
        .find_map(|line| line.strip_prefix("description = "))
        .map_or("", |quoted| quoted.trim_matches('"'))
}

fn write_assets(dir: &Path) -> Result<()> {
    let completions = dir.join("completions");
    fs::create_dir_all(&completions).with_context(|| format!("creating {}", completions.display()))?;
    // Gzipped as Debian policy wants (cargo-deb compresses man pages, but not the
    // ones it finds among build outputs).
    let page_path = dir.join(format!("{BINARY}.1.gz"));
    let file = fs::File::create(&page_path).with_context(|| format!("creating {}", page_path.display()))?;
    let mut page = flate2::GzBuilder::new().mtime(0).write(file, flate2::Compression::best());
    clap_mangen::Man::new(agent_command()).render(&mut page).context("rendering the man page")?;
    page.finish().with_context(|| format!("writing {}", page_path.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let written = clap_complete::generate_to(shell, &mut agent_command(), BINARY, &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
        println!("wrote {}", written.display());
    }
    println!("wrote {}", page_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_documents_every_flag_and_its_variable() {
        let mut page = Vec::new();
        clap_mangen::Man::new(agent_command()).render(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(page.contains(".TH socktop_agent 1"), "{page}");
        assert!(page.contains("socktop_agent \\- On\\-demand host\\-metrics agent"), "{page}");
        for flag in
            ["\\-\\-port", "\\-\\-enableSSL", "\\-\\-ebpf", "\\-\\-tls\\-dir", "SOCKTOP_TOKEN", "SOCKTOP_AGENT_EBPF"]
        {
            assert!(page.contains(flag), "{flag} missing from the man page");
        }
    }

    #[test]
    fn bash_completion_offers_the_flags() {
        let mut script = Vec::new();
        clap_complete::generate(Shell::Bash, &mut agent_command(), BINARY, &mut script);
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains("complete -F _socktop_agent") && script.contains("--processes-ttl-ms"));
    }
}
