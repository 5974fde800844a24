//! Keeps docs/ARCHITECTURE.md's table of rooms true: every file under `src/`
//! belongs to a room of the table, each room names exactly the rooms its code
//! refers to, and those are all above it in the table (below it in the stack).
//! Compiled only for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One row of the table: the files and folders it covers, the rooms it says it
/// imports, in table order.
#[derive(Debug)]
struct Row {
    members: Vec<String>,
    imports: BTreeSet<String>,
}

/// The rows of the table under the "Rooms" heading of ARCHITECTURE.md.
fn table(doc: &str) -> Vec<Row> {
    let section = doc.split("\n## ").find(|s| s.starts_with("Rooms")).expect("a \"## Rooms\" section");
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 3, "a row of three cells: {line}");
            Row { members: quoted(cells[0]), imports: quoted(cells[2]).into_iter().collect() }
        })
        .collect()
}

/// The `quoted` names of a cell, without a folder's trailing `/`.
fn quoted(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(|name| name.trim_end_matches('/').to_owned()).collect()
}

/// The module a member of a row names: `host` for `host/`, `cli` for `cli.rs`.
fn module_of(member: &str) -> &str {
    member.strip_suffix(".rs").unwrap_or(member)
}

/// The rooms `code` refers to by path (`crate::ROOM`, or `socktop_agent::ROOM`
/// from the binary), comments left out.
fn references(code: &str) -> BTreeSet<String> {
    let mut rooms = BTreeSet::new();
    for line in code.lines().filter(|line| !line.trim_start().starts_with("//")) {
        for prefix in ["crate::", "socktop_agent::"] {
            for (at, _) in line.match_indices(prefix) {
                let preceded_by_name = line[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
                let rest = &line[at + prefix.len()..];
                assert!(!rest.starts_with('{'), "one `use` per room, so the table can be checked: {line}");
                let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                if !preceded_by_name && !name.is_empty() {
                    rooms.insert(name);
                }
            }
        }
    }
    rooms
}

/// Every `.rs` file under `dir`, with the first component of its path below `root`.
fn sources(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("the source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            sources(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("below the root");
            let top = relative.components().next().expect("a file name");
            let code = std::fs::read_to_string(&path).expect("a source file");
            out.push((top.as_os_str().to_string_lossy().into_owned(), code));
        }
    }
}

#[test]
fn the_architecture_table_names_every_room_and_every_import() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(manifest.join("../docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let rows = table(&doc);
    let row_of: BTreeMap<&str, usize> =
        rows.iter().enumerate().flat_map(|(i, row)| row.members.iter().map(move |m| (m.as_str(), i))).collect();
    let module_row: BTreeMap<&str, usize> = row_of.iter().map(|(member, &i)| (module_of(member), i)).collect();

    let src = manifest.join("src");
    let mut files = Vec::new();
    sources(&src, &src, &mut files);
    let mut found: Vec<BTreeSet<String>> = vec![BTreeSet::new(); rows.len()];
    let mut seen = BTreeSet::new();
    for (top, code) in &files {
        if top == "lib.rs" {
            // The crate root only declares the rooms.
            assert!(references(code).is_empty(), "lib.rs refers to rooms");
            continue;
        }
        let member = top.as_str();
        let row = *row_of
            .get(member)
            .or_else(|| row_of.get(module_of(member)))
            .unwrap_or_else(|| panic!("`{member}` is in no room of the table"));
        seen.insert(member.trim_end_matches(".rs").to_owned());
        found[row].extend(references(code).into_iter().filter(|room| room != module_of(member)));
    }

    for (i, row) in rows.iter().enumerate() {
        let own: BTreeSet<String> = row.members.iter().map(|m| module_of(m).to_owned()).collect();
        let imports: BTreeSet<String> = found[i].difference(&own).cloned().collect();
        assert_eq!(imports, row.imports, "the imports of {:?} (code, then table)", row.members);
        for room in &imports {
            let below = module_row.get(room.as_str()).unwrap_or_else(|| panic!("`{room}` is not a room"));
            assert!(*below < i, "{:?} imports `{room}`, listed above it", row.members);
        }
        for member in &row.members {
            assert!(seen.contains(module_of(member)), "the table's `{member}` has no file");
        }
    }
}

#[test]
fn references_are_read_from_code_not_comments() {
    // Put together here so that this file's own text names no room.
    let (ours, binary) = ("crate", "socktop_agent");
    let code = format!(
        "use {ours}::host::clock;\n/// see [`x`]({ours}::server::run)\nlet a = {binary}::cli::Cli;\nmy_{ours}::x();"
    );
    assert_eq!(references(&code), BTreeSet::from(["host".to_owned(), "cli".to_owned()]));
}
