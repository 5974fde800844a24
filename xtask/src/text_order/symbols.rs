//! The binary's functions, and where a process has the binary mapped.

use anyhow::{Context, Result, ensure};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};

/// One function of the binary, at its link-time address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    pub address: u64,
    pub size: u64,
    /// As the linker names it (mangled), which is what an ordering file lists.
    pub name: String,
}

/// The binary's defined functions with a size, sorted by address, one per address.
pub fn functions(binary: &[u8]) -> Result<Vec<Function>> {
    let file = object::File::parse(binary).context("parsing the binary")?;
    let mut functions: Vec<Function> = file
        .symbols()
        .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.is_definition() && symbol.size() > 0)
        .filter_map(|symbol| {
            Some(Function { address: symbol.address(), size: symbol.size(), name: symbol.name().ok()?.to_owned() })
        })
        .collect();
    functions.sort_by_key(|function| function.address);
    functions.dedup_by_key(|function| function.address);
    Ok(functions)
}

/// Checks that `binary` is position independent with its first segment at address
/// 0, as [`load_base`] assumes (Rust links executables so on Linux).
pub fn ensure_position_independent(binary: &[u8]) -> Result<()> {
    let file = object::File::parse(binary).context("parsing the binary")?;
    ensure!(file.kind() == object::ObjectKind::Dynamic, "not a position-independent executable");
    let first = file.segments().map(|segment| segment.address()).min();
    ensure!(first == Some(0), "the first segment is not at address 0");
    Ok(())
}

/// Where a position-independent binary's link-time address 0 lies in a process:
/// the start of its mapping of `path` at file offset 0, in the text of
/// `/proc/PID/maps`.
pub fn load_base(maps: &str, path: &str) -> Option<u64> {
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (range, _perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
        let (_device, _inode) = (fields.next()?, fields.next()?);
        if fields.next()? != path || u64::from_str_radix(offset, 16).ok()? != 0 {
            return None;
        }
        u64::from_str_radix(range.split_once('-')?.0, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_base_is_the_binarys_mapping_at_offset_0() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fe:01 123 /opt/agent
55d0c0100000-55d0c0400000 r-xp 000ff000 fe:01 123 /opt/agent
55d0c0400000-55d0c0410000 rw-p 003ff000 fe:01 123 /opt/agent
7f0000000000-7f0000028000 r--p 00000000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7fff00000000-7fff00021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(load_base(maps, "/opt/agent"), Some(0x55d0_c000_0000));
        assert_eq!(load_base(maps, "/opt/other"), None);
    }

    #[test]
    fn this_test_binarys_own_functions_are_found() {
        let binary = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        ensure_position_independent(&binary).unwrap();
        let functions = functions(&binary).unwrap();
        assert!(functions.windows(2).all(|pair| pair[0].address < pair[1].address));
        // Mangled names, as an ordering file needs them.
        assert!(functions.iter().any(|f| f.name.contains("load_base")), "{} functions", functions.len());
    }
}
