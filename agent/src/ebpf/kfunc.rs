//! Kernel function calls for Rust eBPF programs, which cannot declare one:
//! a program calls a placeholder helper number ([`KFUNC_PLACEHOLDER`]), and
//! the loader rewrites each such call, in a copy of the object and before
//! aya sees it, into a kernel function call (`src_reg` 2) of a function's
//! BTF id. Only instructions are rewritten: the 8-byte words of the object's
//! executable sections.
use std::ops::Range;

use agent_common::KFUNC_PLACEHOLDER;

use super::{Error, Result};

/// The object with every placeholder call rewritten into a call of kernel
/// function `btf_id`, in 8-byte aligned memory (an ELF parser wants it).
pub(super) fn with_kfunc(object: &[u8], btf_id: u32) -> Result<Aligned> {
    // `call KFUNC_PLACEHOLDER`: opcode, registers (none), offset 0, immediate.
    let mut placeholder = [0x85, 0, 0, 0, 0, 0, 0, 0];
    placeholder[4..].copy_from_slice(&KFUNC_PLACEHOLDER.to_le_bytes());
    // The same call with `src_reg` = BPF_PSEUDO_KFUNC_CALL: the immediate is
    // a function's id in the kernel's BTF (offset 0: vmlinux, not a module).
    let mut kfunc = [0x85, 0x20, 0, 0, 0, 0, 0, 0];
    kfunc[4..].copy_from_slice(&btf_id.to_le_bytes());
    let sections = executable_sections(object)?;
    let mut aligned = Aligned::copy(object);
    let bytes = aligned.bytes_mut();
    let mut patched = 0;
    for range in sections {
        // Instructions are 8 bytes from their section's start.
        for insn in bytes[range].as_chunks_mut::<8>().0 {
            if *insn == placeholder {
                *insn = kfunc;
                patched += 1;
            }
        }
    }
    if patched == 0 {
        return Err(Error::Kfunc(
            "the eBPF object has no placeholder call to rewrite (built from other sources?)",
        ));
    }
    Ok(aligned)
}

const SHF_EXECINSTR: u64 = 0x4;

/// Where the executable sections of a little-endian ELF64 object lie.
fn executable_sections(elf: &[u8]) -> Result<Vec<Range<usize>>> {
    const MALFORMED: Error = Error::Kfunc("the eBPF object is not a little-endian ELF64 file");
    if elf.get(0..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1]) {
        return Err(MALFORMED);
    }
    let u16_at = |at: usize| -> Result<usize> {
        elf.get(at..at + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or(MALFORMED)
    };
    let u64_at = |at: usize| -> Result<u64> {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or(MALFORMED)
    };
    let to_usize = |v: u64| usize::try_from(v).map_err(|_| MALFORMED);
    let table = to_usize(u64_at(0x28)?)?;
    let (entry, count) = (u16_at(0x3a)?, u16_at(0x3c)?);
    let mut out = Vec::new();
    for i in 0..count {
        let header = table + i * entry;
        if u64_at(header + 0x08)? & SHF_EXECINSTR == 0 {
            continue;
        }
        let start = to_usize(u64_at(header + 0x18)?)?;
        let end = start
            .checked_add(to_usize(u64_at(header + 0x20)?)?)
            .filter(|&end| end <= elf.len())
            .ok_or(MALFORMED)?;
        out.push(start..end);
    }
    Ok(out)
}

/// Bytes in 8-byte aligned storage.
pub(super) struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn copy(data: &[u8]) -> Self {
        let mut words = vec![0u64; data.len().div_ceil(8)];
        // SAFETY: `words` holds at least `data.len()` bytes; u64 has no
        // invalid bit patterns.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), words.as_mut_ptr().cast(), data.len());
        }
        Self {
            words,
            len: data.len(),
        }
    }

    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes of the live allocation, initialised by `copy`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian ELF64 file holding `sections` (flags, bytes), each
    /// 8-byte aligned, after the 64-byte header; the section table last.
    fn elf(sections: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        out[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        let mut headers = vec![0u8; 64]; // the null section
        for (flags, bytes) in sections {
            let at = out.len();
            out.extend_from_slice(bytes);
            out.resize(out.len().next_multiple_of(8), 0);
            let mut h = [0u8; 64];
            h[4..8].copy_from_slice(&1u32.to_le_bytes()); // PROGBITS
            h[0x08..0x10].copy_from_slice(&flags.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(at as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            headers.extend_from_slice(&h);
        }
        let table = out.len() as u64;
        out.extend_from_slice(&headers);
        out[0x28..0x30].copy_from_slice(&table.to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&(sections.len() as u16 + 1).to_le_bytes());
        out
    }

    fn call(imm: u32) -> [u8; 8] {
        let mut insn = [0x85, 0, 0, 0, 0, 0, 0, 0];
        insn[4..].copy_from_slice(&imm.to_le_bytes());
        insn
    }

    #[test]
    fn rewrites_placeholder_calls_in_code_and_nothing_else() {
        let placeholder = call(KFUNC_PLACEHOLDER);
        // Code: a helper call (number 1), then the placeholder.
        let code = [call(1), placeholder].concat();
        // Data that happens to hold the same bytes is not an instruction.
        let data = placeholder.to_vec();
        let object = elf(&[(SHF_EXECINSTR, &code), (0, &data)]);
        let code_at = 64;
        let data_at = code_at + code.len();

        let patched = with_kfunc(&object, 72_409).expect("one placeholder");
        let bytes = patched.bytes();
        assert_eq!(bytes.len(), object.len());
        assert_eq!(&bytes[code_at..code_at + 8], &call(1));
        assert_eq!(
            &bytes[code_at + 8..code_at + 16],
            &[0x85, 0x20, 0, 0, 0xd9, 0x1a, 0x01, 0]
        );
        assert_eq!(&bytes[data_at..data_at + 8], &placeholder);
        assert_eq!(bytes.as_ptr() as usize % 8, 0);

        // No placeholder in code: an error, not an object that fails later.
        let none = elf(&[(SHF_EXECINSTR, &call(1)), (0, &data)]);
        assert!(matches!(with_kfunc(&none, 1), Err(Error::Kfunc(_))));
        // Not ELF, or a section beyond the file: errors, not panics.
        assert!(matches!(with_kfunc(&data, 1), Err(Error::Kfunc(_))));
        let mut beyond = object.clone();
        let table = u64::from_le_bytes(object[0x28..0x30].try_into().expect("8 bytes")) as usize;
        // The code section's size (the first after the null section).
        let size_at = table + 64 + 0x20;
        beyond[size_at..size_at + 8].copy_from_slice(&(object.len() as u64).to_le_bytes());
        assert!(matches!(with_kfunc(&beyond, 1), Err(Error::Kfunc(_))));
        assert!(matches!(
            with_kfunc(&object[..0x30], 1),
            Err(Error::Kfunc(_))
        ));
    }
}
