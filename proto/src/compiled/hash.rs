//! MurmurHash3 x86 32-bit (seed 0), fed in pieces: `fractional`'s bucket key is the flag key
//! and the targeting key one after the other, hashed without building the joined string.
//! The `murmur3` crate hashes only from a reader; a test checks this one against it.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// An incremental MurmurHash3 x86 32-bit with seed 0. Bytes gather in a buffer and are
/// hashed a buffer at a time: keys are short, so most are hashed in one tight pass.
pub(crate) struct Murmur3 {
    state: u32,
    buffer: [u8; BUFFER_BYTES],
    /// Bytes in `buffer`.
    buffered: usize,
    total: u32,
}

/// A multiple of the 4-byte block.
const BUFFER_BYTES: usize = 64;

fn mix(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

impl Murmur3 {
    pub(crate) fn new() -> Self {
        Murmur3 { state: 0, buffer: [0; BUFFER_BYTES], buffered: 0, total: 0 }
    }

    /// Hashes whole blocks of `bytes` (a multiple of 4 long).
    fn blocks(&mut self, bytes: &[u8]) {
        for block in bytes.chunks_exact(4) {
            self.state ^= mix(u32::from_le_bytes([block[0], block[1], block[2], block[3]]));
            self.state = self.state.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
        }
    }

    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        self.total = self.total.wrapping_add(bytes.len() as u32);
        while !bytes.is_empty() {
            let take = (BUFFER_BYTES - self.buffered).min(bytes.len());
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(&bytes[..take]);
            self.buffered += take;
            bytes = &bytes[take..];
            if self.buffered == BUFFER_BYTES {
                let buffer = self.buffer;
                self.blocks(&buffer);
                self.buffered = 0;
            }
        }
    }

    /// Writes the canonical CBOR head of a text string of `len` bytes (major type 3).
    pub(crate) fn write_text_head(&mut self, len: usize) {
        let len = len as u64;
        match len {
            0..=23 => self.write(&[0x60 | len as u8]),
            24..=0xff => self.write(&[0x78, len as u8]),
            0x100..=0xffff => {
                self.write(&[0x79]);
                self.write(&(len as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                self.write(&[0x7a]);
                self.write(&(len as u32).to_be_bytes());
            }
            _ => {
                self.write(&[0x7b]);
                self.write(&len.to_be_bytes());
            }
        }
    }

    pub(crate) fn finish(mut self) -> u32 {
        let whole = self.buffered / 4 * 4;
        let buffer = self.buffer;
        self.blocks(&buffer[..whole]);
        let tail = &buffer[whole..self.buffered];
        if !tail.is_empty() {
            let k = tail.iter().rev().fold(0u32, |k, byte| (k << 8) | u32::from(*byte));
            self.state ^= mix(k);
        }
        let mut hash = self.state ^ self.total;
        hash ^= hash >> 16;
        hash = hash.wrapping_mul(0x85eb_ca6b);
        hash ^= hash >> 13;
        hash = hash.wrapping_mul(0xc2b2_ae35);
        hash ^ (hash >> 16)
    }
}
