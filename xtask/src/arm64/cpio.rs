//! The "newc" cpio format the kernel unpacks an initramfs from (the kernel's
//! Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte ASCII
//! header per entry, the name and the data each padded to 4 bytes, and a
//! `TRAILER!!!` entry. Written here rather than by cpio(1), which the machines
//! building this do not all have, and so that every entry is owned by root.

/// Entry types, as the mode's file-type bits.
const DIRECTORY: u32 = 0o040_000;
const REGULAR: u32 = 0o100_000;
const SYMLINK: u32 = 0o120_000;

/// An archive being written, entry by entry, parents before their children.
#[derive(Default)]
pub struct Archive {
    bytes: Vec<u8>,
    entries: u32,
}

impl Archive {
    pub fn directory(&mut self, path: &str) {
        self.entry(path, DIRECTORY | 0o755, b"");
    }

    pub fn file(&mut self, path: &str, permissions: u32, data: &[u8]) {
        self.entry(path, REGULAR | permissions, data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, SYMLINK | 0o777, target.as_bytes());
    }

    /// The archive, closed by its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, b"");
        self.bytes
    }

    /// One entry; `path` is relative to the root, without a leading slash.
    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entries += 1;
        let name_size = path.len() + 1;
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
        // rdevmajor, rdevminor, namesize, check: eight hex digits each.
        let nlink = if mode & DIRECTORY == DIRECTORY { 2 } else { 1 };
        let fields = [self.entries, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, 0, 0, name_size as u32, 0];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes.extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(path.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        let padded = self.bytes.len().next_multiple_of(4);
        self.bytes.resize(padded, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_headers_with_names_and_data_padded_to_four_bytes() {
        let mut archive = Archive::default();
        archive.directory("bin");
        archive.file("bin/x", 0o755, b"hello");
        archive.symlink("sh", "bin/x");
        let bytes = archive.finish();
        // Written out by hand from the format's description: per entry, "070701", then
        // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check, then the name and the data, each padded to 4.
        let expected = [
            "070701 00000001 000041ED 00000000 00000000 00000002 00000000 00000000",
            "00000000 00000000 00000000 00000000 00000004 00000000 bin\0 \0\0", // 110 + 4 + 2
            "070701 00000002 000081ED 00000000 00000000 00000001 00000000 00000005",
            "00000000 00000000 00000000 00000000 00000006 00000000 bin/x\0", // 110 + 6
            "hello\0\0\0",                                                   // 5 + 3
            "070701 00000003 0000A1FF 00000000 00000000 00000001 00000000 00000005",
            "00000000 00000000 00000000 00000000 00000003 00000000 sh\0 \0\0\0", // 110 + 3 + 3
            "bin/x\0\0\0",                                                       // 5 + 3
            "070701 00000004 00000000 00000000 00000000 00000001 00000000 00000000",
            "00000000 00000000 00000000 00000000 0000000B 00000000 TRAILER!!!\0 \0\0\0", // 110 + 11 + 3
        ]
        .concat()
        .replace(' ', "");
        assert_eq!(String::from_utf8_lossy(&bytes), expected);
        assert_eq!(bytes.len() % 4, 0);
    }
}
