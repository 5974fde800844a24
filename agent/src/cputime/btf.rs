//! Offsets of `pid` and `tgid` in the running kernel's `struct task_struct`, read
//! from its BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, so the program reads `next->pid` and
//! `next->tgid` at offsets this module finds and the loader passes in as globals.
//! aya parses BTF too but keeps struct members private, hence this small reader.
//! The format is the kernel's Documentation/bpf/btf.rst and include/uapi/linux/btf.h.

use std::path::{Path, PathBuf};

/// Where the kernel exposes its own BTF (Linux >= 5.4 with CONFIG_DEBUG_INFO_BTF).
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets of the fields the program reads in `struct task_struct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `pid`: the thread id.
    pub pid: u32,
    /// `tgid`: the process id.
    pub tgid: u32,
    /// `se.sum_exec_runtime`: the scheduler's on-CPU ns of the task.
    pub sum_exec_runtime: u32,
    /// `se.prev_sum_exec_runtime`: `sum_exec_runtime` when the task was last picked.
    pub prev_sum_exec_runtime: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct task_struct")]
    NoTaskStruct,
    #[error("struct task_struct has no integer member `{0}` of the expected size")]
    NoMember(&'static str),
}

/// Reads the BTF file at `path` and finds the task offsets in it.
pub fn task_offsets(path: &Path) -> Result<TaskOffsets, BtfError> {
    let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.to_owned(), source })?;
    parse_task_offsets(&data)
}

/// Finds the task offsets in raw BTF bytes.
pub fn parse_task_offsets(data: &[u8]) -> Result<TaskOffsets, BtfError> {
    let btf = Btf::parse(data)?;
    let task = btf.find_struct("task_struct").ok_or(BtfError::NoTaskStruct)?;
    let pid = btf.int_member_offset(task, "pid", 4)?;
    let tgid = btf.int_member_offset(task, "tgid", 4)?;
    let (se_offset, se) = btf.struct_member(task, "se")?;
    Ok(TaskOffsets {
        pid,
        tgid,
        sum_exec_runtime: se_offset + btf.int_member_offset(se, "sum_exec_runtime", 8)?,
        prev_sum_exec_runtime: se_offset + btf.int_member_offset(se, "prev_sum_exec_runtime", 8)?,
    })
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

// Kinds (BTF_KIND_* in include/uapi/linux/btf.h) this reader looks into.
const KIND_INT: u32 = 1;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// One `struct btf_type` header and where its kind-specific data starts.
#[derive(Debug, Clone, Copy)]
struct TypeRec {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    data: usize,
}

impl TypeRec {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// The parsed type and string sections; type id N is `types[N - 1]` (0 is void).
struct Btf<'a> {
    types: Vec<TypeRec>,
    type_section: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if read_u16(data, 0) != Some(MAGIC) {
            return Err(BtfError::Malformed("bad magic (or other-endian BTF)"));
        }
        let field = |at| read_u32(data, at).ok_or(BtfError::Malformed("truncated header"));
        let hdr_len = field(4)? as usize;
        let [type_off, type_len, str_off, str_len] = [field(8)?, field(12)?, field(16)?, field(20)?];
        if hdr_len < HEADER_LEN {
            return Err(BtfError::Malformed("header too short"));
        }
        let type_section = section(data, hdr_len, type_off, type_len)?;
        let strings = section(data, hdr_len, str_off, str_len)?;
        let types = scan_types(type_section)?;
        Ok(Self { types, type_section, strings })
    }

    fn get(&self, id: u32) -> Option<&TypeRec> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// The NUL-terminated string at `offset`; empty when out of range.
    fn string(&self, offset: u32) -> &'a [u8] {
        let tail = self.strings.get(offset as usize..).unwrap_or_default();
        tail.split(|&b| b == 0).next().unwrap_or_default()
    }

    fn find_struct(&self, name: &str) -> Option<&TypeRec> {
        self.types.iter().find(|t| t.kind() == KIND_STRUCT && self.string(t.name_off) == name.as_bytes())
    }

    /// Byte offset of member `name` of `rec` when it is an integer of `size` bytes.
    fn int_member_offset(&self, rec: &TypeRec, name: &'static str, size: u32) -> Result<u32, BtfError> {
        match self.find_member(rec, name)? {
            Some((offset, type_id)) if self.is_int(type_id, size) => Ok(offset),
            _ => Err(BtfError::NoMember(name)),
        }
    }

    /// Byte offset and type of member `name` of `rec` when it is a struct.
    fn struct_member(&self, rec: &TypeRec, name: &'static str) -> Result<(u32, &TypeRec), BtfError> {
        let (offset, type_id) = self.find_member(rec, name)?.ok_or(BtfError::NoMember(name))?;
        let inner = self.resolve(type_id).filter(|t| t.kind() == KIND_STRUCT);
        Ok((offset, inner.ok_or(BtfError::NoMember(name))?))
    }

    /// Byte offset and type of member `name` of `rec`, looking through anonymous
    /// struct and union members (randomized layouts wrap fields in one).
    fn find_member(&self, rec: &TypeRec, name: &str) -> Result<Option<(u32, u32)>, BtfError> {
        for i in 0..rec.vlen() {
            let member = self.member(rec, i)?;
            let member_name = self.string(member.name_off);
            let found = if member_name == name.as_bytes() {
                Some((0, member.type_id))
            } else if member_name.is_empty() {
                self.nested_member(member.type_id, name)?
            } else {
                None
            };
            if let Some((inner, type_id)) = found {
                return Ok(Some((member.byte_offset(rec.kind_flag())? + inner, type_id)));
            }
        }
        Ok(None)
    }

    fn nested_member(&self, type_id: u32, name: &str) -> Result<Option<(u32, u32)>, BtfError> {
        match self.resolve(type_id) {
            Some(inner) if matches!(inner.kind(), KIND_STRUCT | KIND_UNION) => self.find_member(inner, name),
            _ => Ok(None),
        }
    }

    fn member(&self, rec: &TypeRec, index: usize) -> Result<Member, BtfError> {
        let at = rec.data + index * 12;
        let word = |k: usize| read_u32(self.type_section, at + 4 * k).ok_or(BtfError::Malformed("truncated member"));
        Ok(Member { name_off: word(0)?, type_id: word(1)?, offset: word(2)? })
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&TypeRec> {
        // Bounded: a malformed file could make the chain loop.
        for _ in 0..32 {
            let rec = self.get(id)?;
            match rec.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = rec.size_or_type,
                _ => return Some(rec),
            }
        }
        None
    }

    fn is_int(&self, id: u32, size: u32) -> bool {
        self.resolve(id).is_some_and(|t| t.kind() == KIND_INT && t.size_or_type == size)
    }
}

struct Member {
    name_off: u32,
    type_id: u32,
    offset: u32,
}

impl Member {
    /// With `kind_flag` the low 24 bits are the bit offset and the high 8 the
    /// bitfield size; the fields read here are never bitfields and sit on bytes.
    fn byte_offset(&self, kind_flag: bool) -> Result<u32, BtfError> {
        let bits = if kind_flag { self.offset & 0x00ff_ffff } else { self.offset };
        if bits % 8 != 0 || (kind_flag && self.offset >> 24 != 0) {
            return Err(BtfError::Malformed("task_struct member is a bitfield"));
        }
        Ok(bits / 8)
    }
}

/// Walks the type section, recording each type's header and data position.
fn scan_types(section: &[u8]) -> Result<Vec<TypeRec>, BtfError> {
    let mut types = Vec::new();
    let mut at = 0;
    while at < section.len() {
        let word = |k: usize| read_u32(section, at + 4 * k).ok_or(BtfError::Malformed("truncated type"));
        let rec = TypeRec { name_off: word(0)?, info: word(1)?, size_or_type: word(2)?, data: at + 12 };
        at = rec.data + extra_len(&rec)?;
        types.push(rec);
    }
    Ok(types)
}

/// Bytes of kind-specific data after a type's 12-byte header (btf.rst, section 2.2).
fn extra_len(rec: &TypeRec) -> Result<usize, BtfError> {
    let vlen = rec.vlen();
    Ok(match rec.kind() {
        // INT: one u32 of encoding; VAR: linkage; DECL_TAG: component index.
        1 | 14 | 17 => 4,
        // ARRAY: struct btf_array.
        3 => 12,
        // STRUCT, UNION: btf_member; DATASEC: btf_var_secinfo; ENUM64: btf_enum64.
        4 | 5 | 15 | 19 => 12 * vlen,
        // ENUM: btf_enum; FUNC_PROTO: btf_param.
        6 | 13 => 8 * vlen,
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG.
        2 | 7..=12 | 16 | 18 => 0,
        _ => return Err(BtfError::Malformed("unknown type kind")),
    })
}

fn section(data: &[u8], base: usize, off: u32, len: u32) -> Result<&[u8], BtfError> {
    let start = base + off as usize;
    data.get(start..start + len as usize).ok_or(BtfError::Malformed("section past end of file"))
}

fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: types are (kind, name, size_or_type, vlen, kind_flag, extra
    /// words), strings are interned as they come.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self { types: Vec::new(), strings: vec![0] }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }

        fn push(&mut self, kind: u32, name: &str, size_or_type: u32, vlen: u32, extra: &[u32]) {
            let name_off = self.string(name);
            let info = (kind << 24) | vlen;
            for word in [name_off, info, size_or_type].iter().chain(extra) {
                self.types.extend_from_slice(&word.to_ne_bytes());
            }
        }

        fn member(&mut self, name: &str, type_id: u32, bit_offset: u32) -> [u32; 3] {
            [self.string(name), type_id, bit_offset]
        }

        fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_ne_bytes());
            out.extend_from_slice(&[1, 0]);
            let words =
                [HEADER_LEN as u32, 0, self.types.len() as u32, self.types.len() as u32, self.strings.len() as u32];
            for word in words {
                out.extend_from_slice(&word.to_ne_bytes());
            }
            out.extend(self.types);
            out.extend(self.strings);
            out
        }
    }

    /// A task_struct like a randomized-layout kernel's: `pid` and `tgid` inside an
    /// anonymous struct at byte 16, behind a `pid_t` typedef; `se` at byte 32.
    fn sample_btf() -> Vec<u8> {
        let mut b = Builder::new();
        b.push(KIND_INT, "int", 4, 0, &[32]); // 1
        b.push(KIND_TYPEDEF, "pid_t", 1, 0, &[]); // 2
        b.push(KIND_INT, "long long unsigned int", 8, 0, &[64]); // 3
        let pid = b.member("pid", 2, 64);
        let tgid = b.member("tgid", 2, 96);
        let state = b.member("state", 3, 0);
        b.push(KIND_STRUCT, "", 16, 3, &[state, pid, tgid].concat()); // 4: anonymous
        b.push(KIND_TYPEDEF, "u64", 3, 0, &[]); // 5
        let load = b.member("load", 5, 0);
        let sum = b.member("sum_exec_runtime", 5, 64);
        let prev_sum = b.member("prev_sum_exec_runtime", 5, 128);
        b.push(KIND_STRUCT, "sched_entity", 24, 3, &[load, sum, prev_sum].concat()); // 6
        let flags = b.member("flags", 1, 0);
        let anon = b.member("", 4, 128);
        let se = b.member("se", 6, 256);
        b.push(KIND_STRUCT, "task_struct", 56, 3, &[flags, anon, se].concat()); // 7
        b.build()
    }

    #[test]
    fn offsets_are_found_through_anonymous_members_typedefs_and_nested_structs() {
        let offsets = parse_task_offsets(&sample_btf()).unwrap();
        let expected = TaskOffsets { pid: 24, tgid: 28, sum_exec_runtime: 40, prev_sum_exec_runtime: 48 };
        assert_eq!(offsets, expected);
    }

    #[test]
    fn a_member_that_is_not_a_4_byte_int_is_rejected() {
        let mut b = Builder::new();
        b.push(KIND_INT, "long", 8, 0, &[64]);
        let pid = b.member("pid", 1, 0);
        b.push(KIND_STRUCT, "task_struct", 8, 1, &pid);
        let err = parse_task_offsets(&b.build()).unwrap_err();
        assert!(matches!(err, BtfError::NoMember("pid")), "{err}");
    }

    #[test]
    fn missing_struct_and_garbage_are_errors_not_panics() {
        let mut b = Builder::new();
        b.push(KIND_INT, "int", 4, 0, &[32]);
        assert!(matches!(parse_task_offsets(&b.build()), Err(BtfError::NoTaskStruct)));
        assert!(matches!(parse_task_offsets(b"not btf at all"), Err(BtfError::Malformed(_))));
        let truncated = &sample_btf()[..40];
        assert!(matches!(parse_task_offsets(truncated), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn the_running_kernel_has_task_fields_at_distinct_aligned_offsets() {
        let Ok(offsets) = task_offsets(Path::new(VMLINUX_BTF)) else {
            eprintln!("skipped: no readable {VMLINUX_BTF}");
            return;
        };
        // pid and tgid are declared next to each other (include/linux/sched.h).
        assert_eq!(offsets.tgid, offsets.pid + 4);
        assert_eq!(offsets.prev_sum_exec_runtime % 8, 0);
        assert_eq!(offsets.sum_exec_runtime % 8, 0);
    }
}
