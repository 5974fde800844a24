//! Offsets of fields in the running kernel's structs, read from its BTF
//! (`/sys/kernel/btf/vmlinux`): `pid`, `tgid` and the scheduler's runtimes in
//! `struct task_struct` for the context-switch program ([`TaskOffsets`]), and a
//! process's start time, name and resident set for the task iterator
//! ([`ProcessOffsets`]).
//!
//! Rust eBPF has no CO-RE relocations, so the programs read e.g. `next->pid` and
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
    /// `se.exec_start`: the run queue's task clock when `sum_exec_runtime` was last
    /// brought up to date.
    pub exec_start: u32,
}

/// Byte offsets a BPF task iterator reads to describe a process the way /proc/PID/stat does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessOffsets {
    /// `task_struct.start_time` (u64, ns of CLOCK_MONOTONIC at fork).
    pub start_time: u32,
    /// `task_struct.comm` (char[16]).
    pub comm: u32,
    /// `task_struct.mm` (pointer to struct mm_struct; NULL for kernel threads).
    pub mm: u32,
    /// `task_struct.real_parent` (pointer to the parent's task_struct).
    pub real_parent: u32,
    /// Offsets inside `struct mm_struct` of the three 8-byte signed counters whose sum is the
    /// resident set in pages, as get_mm_rss() sums them: MM_FILEPAGES, MM_ANONPAGES, MM_SHMEMPAGES.
    pub rss_counters: [u32; 3],
    /// How the iterator may read those counters on this kernel.
    pub rss_read: RssRead,
}

/// How a program reads `mm_struct`'s resident-page counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RssRead {
    /// Plain loads through the typed pointer, checked by the verifier against BTF:
    /// the `struct percpu_counter rss_stat[]` of Linux >= 6.2.
    Load,
    /// The probe-read helper: before 6.2 each counter is an `atomic_long_t`, a
    /// typedef'd struct in an array, and the verifiers of those kernels refuse a
    /// load through it (`Type 'atomic_long_t' is not a struct`, seen on 6.1).
    Probe,
}

/// Whether the kernel has the helper `bpf_map_lookup_percpu_elem` (Linux >= 5.19),
/// told by its BTF: the enumerator `BPF_FUNC_map_lookup_percpu_elem` of `enum
/// bpf_func_id` exists exactly where the kernel knows the helper.
pub fn has_percpu_lookup(data: &[u8]) -> Result<bool, BtfError> {
    Ok(Btf::parse(data)?.enumerator("BPF_FUNC_map_lookup_percpu_elem")?.is_some())
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
    #[error("BTF: `{0}` is missing or not {1}")]
    BadMember(&'static str, &'static str),
    #[error("BTF has no enumerator {0}")]
    NoEnumerator(&'static str),
    #[error("BTF: enumerator {name} = {value} is not an index into the {len} rss_stat counters")]
    BadIndex { name: &'static str, value: i64, len: u32 },
}

/// The raw bytes of the BTF file at `path`, to parse for both kinds of offsets.
pub fn read(path: &Path) -> Result<Vec<u8>, BtfError> {
    std::fs::read(path).map_err(|source| BtfError::Read { path: path.to_owned(), source })
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
        sum_exec_runtime: add(se_offset, btf.int_member_offset(se, "sum_exec_runtime", 8)?)?,
        prev_sum_exec_runtime: add(se_offset, btf.int_member_offset(se, "prev_sum_exec_runtime", 8)?)?,
        exec_start: add(se_offset, btf.int_member_offset(se, "exec_start", 8)?)?,
    })
}

/// Finds the process offsets in raw BTF bytes.
pub fn parse_process_offsets(data: &[u8]) -> Result<ProcessOffsets, BtfError> {
    let btf = Btf::parse(data)?;
    let task = btf.find_struct("task_struct").ok_or(BtfError::NoTaskStruct)?;
    let start_time = btf.int_member_offset(task, "start_time", 8)?;
    let comm = btf.comm_offset(task)?;
    let (mm, mm_struct) =
        btf.pointer_member(task, "mm", "mm_struct", "task_struct.mm", "a pointer to struct mm_struct")?;
    let (real_parent, _) = btf.pointer_member(
        task,
        "real_parent",
        "task_struct",
        "task_struct.real_parent",
        "a pointer to struct task_struct",
    )?;
    let (rss, rss_read) = btf.rss_stat(mm_struct)?;
    let mut rss_counters = [0; 3];
    for (slot, name) in rss_counters.iter_mut().zip(RSS_ENUMERATORS) {
        *slot = rss.offset(btf.counter_index(name, rss.len)?)?;
    }
    Ok(ProcessOffsets { start_time, comm, mm, real_parent, rss_counters, rss_read })
}

/// The `enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES, NR_MM_COUNTERS }`
/// entries get_mm_rss() adds up (swap entries are not resident). Their values are
/// looked up, not assumed: the enum is the kernel's to reorder.
const RSS_ENUMERATORS: [&str; 3] = ["MM_FILEPAGES", "MM_ANONPAGES", "MM_SHMEMPAGES"];

/// `mm_struct.rss_stat` seen as `len` 8-byte counters, the first at `start` and the
/// others every `stride` bytes.
struct CounterArray {
    start: u32,
    stride: u32,
    len: u32,
}

impl CounterArray {
    fn offset(&self, index: u32) -> Result<u32, BtfError> {
        let step = index.checked_mul(self.stride).ok_or(BtfError::Malformed("offset overflows u32"))?;
        add(self.start, step)
    }
}

/// `struct btf_array`: what an ARRAY type holds and how many.
struct Array {
    elem_type: u32,
    nelems: u32,
}

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

// Kinds (BTF_KIND_* in include/uapi/linux/btf.h) this reader looks into.
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// How deep anonymous members may nest; a malformed file could make one contain itself.
const MAX_NESTING: usize = 32;

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
        self.types.iter().find(|t| self.is_struct_named(t, name))
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
        self.find_member_within(rec, name, MAX_NESTING)
    }

    fn find_member_within(&self, rec: &TypeRec, name: &str, depth: usize) -> Result<Option<(u32, u32)>, BtfError> {
        let depth = depth.checked_sub(1).ok_or(BtfError::Malformed("anonymous members nest too deep"))?;
        for i in 0..rec.vlen() {
            let member = self.member(rec, i)?;
            let member_name = self.string(member.name_off);
            let found = if member_name == name.as_bytes() {
                Some((0, member.type_id))
            } else if member_name.is_empty() {
                self.nested_member(member.type_id, name, depth)?
            } else {
                None
            };
            if let Some((inner, type_id)) = found {
                return Ok(Some((add(member.byte_offset(rec.kind_flag())?, inner)?, type_id)));
            }
        }
        Ok(None)
    }

    fn nested_member(&self, type_id: u32, name: &str, depth: usize) -> Result<Option<(u32, u32)>, BtfError> {
        match self.resolve(type_id) {
            Some(inner) if matches!(inner.kind(), KIND_STRUCT | KIND_UNION) => {
                self.find_member_within(inner, name, depth)
            }
            _ => Ok(None),
        }
    }

    /// Offset of `task_struct.comm` once checked to be `char[16]` (TASK_COMM_LEN), the
    /// size the iterator copies.
    fn comm_offset(&self, task: &TypeRec) -> Result<u32, BtfError> {
        let bad = || BtfError::BadMember("task_struct.comm", "char[16]");
        let (offset, type_id) = self.find_member(task, "comm")?.ok_or_else(bad)?;
        match self.array(type_id)? {
            Some(array) if array.nelems == 16 && self.is_int(array.elem_type, 1) => Ok(offset),
            _ => Err(bad()),
        }
    }

    /// Offset of member `name` of `rec`, checked to be a pointer to struct `target`,
    /// and that struct; `what` and `expected` name them in the error.
    fn pointer_member(
        &self,
        rec: &TypeRec,
        name: &str,
        target: &str,
        what: &'static str,
        expected: &'static str,
    ) -> Result<(u32, &TypeRec), BtfError> {
        let bad = || BtfError::BadMember(what, expected);
        let (offset, type_id) = self.find_member(rec, name)?.ok_or_else(bad)?;
        let pointer = self.resolve(type_id).filter(|t| t.kind() == KIND_PTR).ok_or_else(bad)?;
        let pointee = self.resolve(pointer.size_or_type).filter(|t| self.is_struct_named(t, target));
        Ok((offset, pointee.ok_or_else(bad)?))
    }

    /// Where `mm_struct.rss_stat` keeps its counters, in either of its layouts, and
    /// how a program may read them there.
    fn rss_stat(&self, mm: &TypeRec) -> Result<(CounterArray, RssRead), BtfError> {
        let bad = || BtfError::BadMember("mm_struct.rss_stat", "percpu_counter[] or struct mm_rss_stat");
        let (offset, type_id) = self.find_member(mm, "rss_stat")?.ok_or_else(bad)?;
        // Linux >= 6.2: `struct percpu_counter rss_stat[NR_MM_COUNTERS]`, the total in `count`.
        if let Some(array) = self.array(type_id)? {
            let counters = self.counter_array(offset, &array, "count", "mm_struct.rss_stat[].count")?;
            return Ok((counters, RssRead::Load));
        }
        // Before: `struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; } rss_stat`,
        // atomic_long_t being a typedef of a struct holding `s64 counter`.
        let stat = self.resolve(type_id).filter(|t| t.kind() == KIND_STRUCT).ok_or_else(bad)?;
        let (count_offset, count_type) = self.find_member(stat, "count")?.ok_or_else(bad)?;
        let array = self.array(count_type)?.ok_or_else(bad)?;
        let counters =
            self.counter_array(add(offset, count_offset)?, &array, "counter", "mm_struct.rss_stat.count[].counter")?;
        Ok((counters, RssRead::Probe))
    }

    /// An array at `start` of structs that each hold an 8-byte integer `field`.
    fn counter_array(
        &self,
        start: u32,
        array: &Array,
        field: &str,
        what: &'static str,
    ) -> Result<CounterArray, BtfError> {
        let bad = || BtfError::BadMember(what, "an 8-byte integer in each element");
        let elem = self.resolve(array.elem_type).filter(|t| t.kind() == KIND_STRUCT).ok_or_else(bad)?;
        let inner = match self.find_member(elem, field)? {
            Some((inner, type_id)) if self.is_int(type_id, 8) => inner,
            _ => return Err(bad()),
        };
        // The element's size is the stride; a counter that pokes out of it is no counter.
        let stride = elem.size_or_type;
        if inner.checked_add(8).is_none_or(|end| end > stride) {
            return Err(bad());
        }
        Ok(CounterArray { start: add(start, inner)?, stride, len: array.nelems })
    }

    /// The value of enumerator `name` as an index below `len`.
    fn counter_index(&self, name: &'static str, len: u32) -> Result<u32, BtfError> {
        let value = self.enumerator(name)?.ok_or(BtfError::NoEnumerator(name))?;
        u32::try_from(value).ok().filter(|&index| index < len).ok_or(BtfError::BadIndex { name, value, len })
    }

    /// The value of enumerator `name` in the first ENUM or ENUM64 that has one (the
    /// MM_* counters are in an anonymous enum, so the enum cannot be found by name).
    fn enumerator(&self, name: &str) -> Result<Option<i64>, BtfError> {
        for rec in &self.types {
            let entry_len = match rec.kind() {
                KIND_ENUM => 8,
                KIND_ENUM64 => 12,
                _ => continue,
            };
            for i in 0..rec.vlen() {
                let at = rec.data + i * entry_len;
                let word =
                    |k: usize| read_u32(self.type_section, at + 4 * k).ok_or(BtfError::Malformed("truncated enum"));
                if self.string(word(0)?) != name.as_bytes() {
                    continue;
                }
                // kind_flag marks an unsigned enum; ENUM64 values are (val_hi32 << 32) | val_lo32.
                let value = match (rec.kind(), rec.kind_flag()) {
                    (KIND_ENUM, false) => i64::from(word(1)?.cast_signed()),
                    (KIND_ENUM, true) => i64::from(word(1)?),
                    _ => ((u64::from(word(2)?) << 32) | u64::from(word(1)?)).cast_signed(),
                };
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// The `struct btf_array` of `id` once typedefs and qualifiers are followed;
    /// `None` when it is not an array.
    fn array(&self, id: u32) -> Result<Option<Array>, BtfError> {
        let Some(rec) = self.resolve(id).filter(|t| t.kind() == KIND_ARRAY) else {
            return Ok(None);
        };
        let word =
            |k: usize| read_u32(self.type_section, rec.data + 4 * k).ok_or(BtfError::Malformed("truncated array"));
        Ok(Some(Array { elem_type: word(0)?, nelems: word(2)? }))
    }

    fn is_struct_named(&self, rec: &TypeRec, name: &str) -> bool {
        rec.kind() == KIND_STRUCT && self.string(rec.name_off) == name.as_bytes()
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
            return Err(BtfError::Malformed("struct member is a bitfield"));
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

/// Adds offsets from the file, which a malformed one could make overflow.
fn add(a: u32, b: u32) -> Result<u32, BtfError> {
    a.checked_add(b).ok_or(BtfError::Malformed("offset overflows u32"))
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
        let exec_start = b.member("exec_start", 5, 192);
        b.push(KIND_STRUCT, "sched_entity", 32, 4, &[load, sum, prev_sum, exec_start].concat()); // 6
        let flags = b.member("flags", 1, 0);
        let anon = b.member("", 4, 128);
        let se = b.member("se", 6, 256);
        b.push(KIND_STRUCT, "task_struct", 64, 3, &[flags, anon, se].concat()); // 7
        b.build()
    }

    #[test]
    fn offsets_are_found_through_anonymous_members_typedefs_and_nested_structs() {
        let offsets = parse_task_offsets(&sample_btf()).unwrap();
        let expected =
            TaskOffsets { pid: 24, tgid: 28, sum_exec_runtime: 40, prev_sum_exec_runtime: 48, exec_start: 56 };
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

    /// The knobs of [`percpu_layout_btf`] that the error tests turn.
    struct Layout {
        enumerators: [(&'static str, u32); 5],
        rss_len: u32,
        comm_len: u32,
    }

    const KERNEL_LAYOUT: Layout = Layout {
        enumerators: [
            ("MM_FILEPAGES", 0),
            ("MM_ANONPAGES", 1),
            ("MM_SWAPENTS", 2),
            ("MM_SHMEMPAGES", 3),
            ("NR_MM_COUNTERS", 4),
        ],
        rss_len: 4,
        comm_len: 16,
    };

    /// A Linux >= 6.2 layout: `struct percpu_counter rss_stat[]` (40 bytes each, `count`
    /// at 8) at byte 64 of an anonymous struct at byte 64 of mm_struct; task_struct's
    /// `mm` (const pointer), `start_time` and `comm` in an anonymous struct at byte 64.
    fn percpu_layout_btf(layout: &Layout) -> Vec<u8> {
        let mut b = Builder::new();
        b.push(KIND_INT, "int", 4, 0, &[32]); // 1
        b.push(KIND_INT, "char", 1, 0, &[8]); // 2
        b.push(KIND_INT, "long long int", 8, 0, &[64]); // 3
        b.push(KIND_TYPEDEF, "s64", 3, 0, &[]); // 4
        b.push(KIND_TYPEDEF, "u64", 3, 0, &[]); // 5
        let entries: Vec<u32> = layout.enumerators.iter().flat_map(|&(name, value)| [b.string(name), value]).collect();
        b.push(KIND_ENUM, "", 4, 5, &entries); // 6: anonymous
        let lock = b.member("lock", 1, 0);
        let count = b.member("count", 4, 64);
        let counters = b.member("counters", 5, 256);
        b.push(KIND_STRUCT, "percpu_counter", 40, 3, &[lock, count, counters].concat()); // 7
        b.push(KIND_ARRAY, "", 0, 0, &[7, 1, layout.rss_len]); // 8
        let map_count = b.member("map_count", 1, 0);
        let rss_stat = b.member("rss_stat", 8, 512);
        b.push(KIND_STRUCT, "", 224, 2, &[map_count, rss_stat].concat()); // 9: anonymous
        let mm_count = b.member("mm_count", 1, 0);
        let anon = b.member("", 9, 512);
        b.push(KIND_STRUCT, "mm_struct", 288, 2, &[mm_count, anon].concat()); // 10
        b.push(KIND_PTR, "", 10, 0, &[]); // 11
        b.push(KIND_CONST, "", 11, 0, &[]); // 12
        b.push(KIND_ARRAY, "", 0, 0, &[2, 1, layout.comm_len]); // 13
        let mm = b.member("mm", 12, 0);
        let start_time = b.member("start_time", 5, 64);
        let comm = b.member("comm", 13, 128);
        b.push(KIND_STRUCT, "", 32, 3, &[mm, start_time, comm].concat()); // 14: anonymous
        let flags = b.member("flags", 1, 0);
        let real_parent = b.member("real_parent", 16, 64);
        let anon = b.member("", 14, 512);
        b.push(KIND_STRUCT, "task_struct", 96, 3, &[flags, real_parent, anon].concat()); // 15
        b.push(KIND_PTR, "", 15, 0, &[]); // 16
        b.build()
    }

    /// A layout before Linux 6.2: `struct mm_rss_stat { atomic_long_t count[4]; }` at
    /// byte 16 of an anonymous struct at byte 8 of mm_struct, atomic_long_t a typedef of
    /// a typedef of an anonymous `struct { s64 counter; }`; the enum is an ENUM64, and
    /// `comm` sits in an anonymous union.
    fn mm_rss_stat_layout_btf() -> Vec<u8> {
        let mut b = Builder::new();
        b.push(KIND_INT, "int", 4, 0, &[32]); // 1
        b.push(KIND_INT, "char", 1, 0, &[8]); // 2
        b.push(KIND_INT, "long long int", 8, 0, &[64]); // 3
        b.push(KIND_TYPEDEF, "s64", 3, 0, &[]); // 4
        let entries: Vec<u32> =
            KERNEL_LAYOUT.enumerators.iter().flat_map(|&(name, value)| [b.string(name), value, 0]).collect();
        b.push(KIND_ENUM64, "", 8, 5, &entries); // 5: anonymous
        let counter = b.member("counter", 4, 0);
        b.push(KIND_STRUCT, "", 8, 1, &counter); // 6: anonymous
        b.push(KIND_TYPEDEF, "atomic64_t", 6, 0, &[]); // 7
        b.push(KIND_TYPEDEF, "atomic_long_t", 7, 0, &[]); // 8
        b.push(KIND_ARRAY, "", 0, 0, &[8, 1, 4]); // 9
        let count = b.member("count", 9, 0);
        b.push(KIND_STRUCT, "mm_rss_stat", 32, 1, &count); // 10
        let map_count = b.member("map_count", 1, 0);
        let rss_stat = b.member("rss_stat", 10, 128);
        b.push(KIND_STRUCT, "", 48, 2, &[map_count, rss_stat].concat()); // 11: anonymous
        let pgd = b.member("pgd", 3, 0);
        let anon = b.member("", 11, 64);
        b.push(KIND_STRUCT, "mm_struct", 56, 2, &[pgd, anon].concat()); // 12
        b.push(KIND_PTR, "", 12, 0, &[]); // 13
        b.push(KIND_ARRAY, "", 0, 0, &[2, 1, 16]); // 14
        b.push(KIND_TYPEDEF, "u64", 3, 0, &[]); // 15
        let comm = b.member("comm", 14, 0);
        b.push(KIND_UNION, "", 16, 1, &comm); // 16: anonymous
        let real_parent = b.member("real_parent", 18, 0);
        let start_time = b.member("start_time", 15, 64);
        let mm = b.member("mm", 13, 128);
        let anon = b.member("", 16, 192);
        b.push(KIND_STRUCT, "task_struct", 40, 4, &[real_parent, start_time, mm, anon].concat()); // 17
        b.push(KIND_PTR, "", 17, 0, &[]); // 18
        b.build()
    }

    #[test]
    fn process_offsets_in_the_percpu_counter_layout() {
        let offsets = parse_process_offsets(&percpu_layout_btf(&KERNEL_LAYOUT)).unwrap();
        // rss_stat at 64 + 64 = 128; counter i at 128 + 40 * i + 8, i = 0, 1, 3.
        let expected = ProcessOffsets {
            start_time: 72,
            comm: 80,
            mm: 64,
            real_parent: 8,
            rss_counters: [136, 176, 256],
            rss_read: RssRead::Load,
        };
        assert_eq!(offsets, expected);
    }

    #[test]
    fn process_offsets_in_the_mm_rss_stat_layout() {
        let offsets = parse_process_offsets(&mm_rss_stat_layout_btf()).unwrap();
        // rss_stat.count at 8 + 16 = 24; counter i at 24 + 8 * i, i = 0, 1, 3.
        let expected = ProcessOffsets {
            start_time: 8,
            comm: 24,
            mm: 16,
            real_parent: 0,
            rss_counters: [24, 32, 48],
            rss_read: RssRead::Probe,
        };
        assert_eq!(offsets, expected);
    }

    #[test]
    fn rss_indices_are_read_from_the_enum_not_assumed() {
        let mut layout = KERNEL_LAYOUT;
        layout.enumerators[0].1 = 2; // MM_FILEPAGES
        layout.enumerators[1].1 = 0; // MM_ANONPAGES
        layout.enumerators[3].1 = 1; // MM_SHMEMPAGES
        let offsets = parse_process_offsets(&percpu_layout_btf(&layout)).unwrap();
        assert_eq!(offsets.rss_counters, [216, 136, 176]);
    }

    #[test]
    fn a_comm_that_is_not_char_16_is_rejected() {
        let short = Layout { comm_len: 8, ..KERNEL_LAYOUT };
        let err = parse_process_offsets(&percpu_layout_btf(&short)).unwrap_err();
        assert!(matches!(err, BtfError::BadMember("task_struct.comm", _)), "{err}");

        // comm as an array of 16 ints.
        let mut b = Builder::new();
        b.push(KIND_INT, "int", 4, 0, &[32]); // 1
        b.push(KIND_INT, "long long unsigned int", 8, 0, &[64]); // 2
        b.push(KIND_ARRAY, "", 0, 0, &[1, 1, 16]); // 3
        let start_time = b.member("start_time", 2, 0);
        let comm = b.member("comm", 3, 64);
        b.push(KIND_STRUCT, "task_struct", 72, 2, &[start_time, comm].concat());
        let err = parse_process_offsets(&b.build()).unwrap_err();
        assert!(matches!(err, BtfError::BadMember("task_struct.comm", _)), "{err}");
    }

    #[test]
    fn an_mm_that_is_not_a_pointer_to_mm_struct_is_rejected() {
        let mut b = Builder::new();
        b.push(KIND_INT, "char", 1, 0, &[8]); // 1
        b.push(KIND_INT, "long long unsigned int", 8, 0, &[64]); // 2
        b.push(KIND_ARRAY, "", 0, 0, &[1, 1, 16]); // 3
        b.push(KIND_PTR, "", 2, 0, &[]); // 4: u64 *
        let start_time = b.member("start_time", 2, 0);
        let comm = b.member("comm", 3, 64);
        let mm = b.member("mm", 4, 192);
        b.push(KIND_STRUCT, "task_struct", 32, 3, &[start_time, comm, mm].concat());
        let err = parse_process_offsets(&b.build()).unwrap_err();
        assert!(matches!(err, BtfError::BadMember("task_struct.mm", _)), "{err}");
    }

    #[test]
    fn a_real_parent_that_is_not_a_pointer_to_task_struct_is_rejected() {
        let mut b = Builder::new();
        b.push(KIND_INT, "char", 1, 0, &[8]); // 1
        b.push(KIND_INT, "long long unsigned int", 8, 0, &[64]); // 2
        b.push(KIND_ARRAY, "", 0, 0, &[1, 1, 16]); // 3
        b.push(KIND_STRUCT, "mm_struct", 8, 0, &[]); // 4
        b.push(KIND_PTR, "", 4, 0, &[]); // 5: struct mm_struct *
        let start_time = b.member("start_time", 2, 0);
        let comm = b.member("comm", 3, 64);
        let mm = b.member("mm", 5, 192);
        let real_parent = b.member("real_parent", 5, 256);
        b.push(KIND_STRUCT, "task_struct", 40, 4, &[start_time, comm, mm, real_parent].concat());
        let err = parse_process_offsets(&b.build()).unwrap_err();
        assert!(matches!(err, BtfError::BadMember("task_struct.real_parent", _)), "{err}");
    }

    #[test]
    fn a_missing_enumerator_is_an_error() {
        let mut layout = KERNEL_LAYOUT;
        layout.enumerators[3].0 = "MM_SHMEM";
        let err = parse_process_offsets(&percpu_layout_btf(&layout)).unwrap_err();
        assert!(matches!(err, BtfError::NoEnumerator("MM_SHMEMPAGES")), "{err}");
    }

    #[test]
    fn too_few_counters_for_an_index_is_an_error() {
        let short = Layout { rss_len: 3, ..KERNEL_LAYOUT };
        let err = parse_process_offsets(&percpu_layout_btf(&short)).unwrap_err();
        assert!(matches!(err, BtfError::BadIndex { name: "MM_SHMEMPAGES", value: 3, len: 3 }), "{err}");

        let mut negative = KERNEL_LAYOUT;
        negative.enumerators[0].1 = u32::MAX; // MM_FILEPAGES = -1
        let err = parse_process_offsets(&percpu_layout_btf(&negative)).unwrap_err();
        assert!(matches!(err, BtfError::BadIndex { name: "MM_FILEPAGES", value: -1, .. }), "{err}");
    }

    #[test]
    fn every_truncation_of_the_process_btf_is_an_error_not_a_panic() {
        for data in [percpu_layout_btf(&KERNEL_LAYOUT), mm_rss_stat_layout_btf()] {
            for len in 0..data.len() {
                assert!(parse_process_offsets(&data[..len]).is_err(), "prefix of {len} bytes");
            }
        }
    }

    /// A BTF with `enum bpf_func_id` holding `helpers` (value = position + 1).
    fn func_id_btf(helpers: &[&'static str]) -> Vec<u8> {
        let mut b = Builder::new();
        let entries: Vec<u32> = helpers.iter().zip(1..).flat_map(|(&name, value)| [b.string(name), value]).collect();
        b.push(KIND_ENUM, "bpf_func_id", 4, helpers.len() as u32, &entries);
        b.build()
    }

    #[test]
    fn the_percpu_lookup_helper_is_known_by_its_enumerator() {
        let with = func_id_btf(&["BPF_FUNC_map_lookup_elem", "BPF_FUNC_map_lookup_percpu_elem"]);
        assert!(has_percpu_lookup(&with).unwrap());
        // Linux 5.10's last helpers: no percpu lookup.
        let without = func_id_btf(&["BPF_FUNC_map_lookup_elem", "BPF_FUNC_bprm_opts_set", "BPF_FUNC_ima_inode_hash"]);
        assert!(!has_percpu_lookup(&without).unwrap());
        assert!(matches!(has_percpu_lookup(b"junk"), Err(BtfError::Malformed(_))));
    }

    #[test]
    fn the_running_kernel_reports_the_percpu_lookup_helper_as_its_version_says() {
        let Ok(data) = read(Path::new(VMLINUX_BTF)) else {
            eprintln!("skipped: no readable {VMLINUX_BTF}");
            return;
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
        let version = (numbers.next().unwrap(), numbers.next().unwrap());
        // The helper came in 5.19; distributions backport, so only a mainline-new
        // kernel must have it.
        if version >= (5, 19) {
            assert!(has_percpu_lookup(&data).unwrap(), "{release}");
        }
    }

    #[test]
    fn an_anonymous_member_that_contains_itself_is_an_error_not_a_stack_overflow() {
        let mut b = Builder::new();
        let anon = b.member("", 1, 0);
        b.push(KIND_STRUCT, "task_struct", 8, 1, &anon); // 1
        let err = parse_task_offsets(&b.build()).unwrap_err();
        assert!(matches!(err, BtfError::Malformed(_)), "{err}");
    }

    #[test]
    fn the_running_kernel_has_process_fields_at_distinct_aligned_offsets() {
        let offsets = match read(Path::new(VMLINUX_BTF)).and_then(|data| parse_process_offsets(&data)) {
            Err(BtfError::Read { .. }) => {
                let test = "the_running_kernel_has_process_fields_at_distinct_aligned_offsets";
                return testkit::skip::skip(test, &format!("a readable {VMLINUX_BTF} (a kernel with BTF)"));
            }
            result => result.unwrap(),
        };
        eprintln!("running kernel: {offsets:?}");
        let [file, anon, shmem] = offsets.rss_counters;
        assert!(file != anon && anon != shmem && file != shmem, "{offsets:?}");
        assert!(offsets.rss_counters.iter().all(|offset| offset % 8 == 0), "{offsets:?}");
        let comm_end = offsets.comm + 16;
        assert!(comm_end <= offsets.start_time || offsets.start_time + 8 <= offsets.comm, "{offsets:?}");
    }

    #[test]
    fn the_running_kernel_has_task_fields_at_distinct_aligned_offsets() {
        let Ok(offsets) = read(Path::new(VMLINUX_BTF)).and_then(|data| parse_task_offsets(&data)) else {
            let test = "the_running_kernel_has_task_fields_at_distinct_aligned_offsets";
            return testkit::skip::skip(test, &format!("a readable {VMLINUX_BTF} (a kernel with BTF)"));
        };
        // pid and tgid are declared next to each other (include/linux/sched.h).
        assert_eq!(offsets.tgid, offsets.pid + 4);
        assert_eq!(offsets.prev_sum_exec_runtime % 8, 0);
        assert_eq!(offsets.sum_exec_runtime % 8, 0);
        assert_eq!(offsets.exec_start % 8, 0);
    }
}
