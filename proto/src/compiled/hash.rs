//! MurmurHash3 x86 32-bit (seed 0), fed in pieces: `fractional`'s bucket key is the flag key
//! and the targeting key one after the other, hashed without building the joined string.
//! The `murmur3` crate hashes only from a reader; a test checks this one against it.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// An incremental MurmurHash3 x86 32-bit with seed 0.
pub(crate) struct Murmur3 {
    state: u32,
    /// Bytes written that do not yet make a 4-byte block.
    tail: [u8; 4],
    tail_len: usize,
    total: u32,
}

fn mix(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

impl Murmur3 {
    pub(crate) fn new() -> Self {
        Murmur3 { state: 0, tail: [0; 4], tail_len: 0, total: 0 }
    }

    fn block(&mut self, block: [u8; 4]) {
        self.state ^= mix(u32::from_le_bytes(block));
        self.state = self.state.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }

    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        self.total = self.total.wrapping_add(bytes.len() as u32);
        if self.tail_len > 0 {
            let take = (4 - self.tail_len).min(bytes.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&bytes[..take]);
            self.tail_len += take;
            bytes = &bytes[take..];
            if self.tail_len < 4 {
                return;
            }
            self.block(self.tail);
            self.tail_len = 0;
        }
        let mut blocks = bytes.chunks_exact(4);
        for block in &mut blocks {
            self.block([block[0], block[1], block[2], block[3]]);
        }
        let rest = blocks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
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
        if self.tail_len > 0 {
            let mut k = 0u32;
            for (shift, byte) in self.tail[..self.tail_len].iter().enumerate() {
                k |= u32::from(*byte) << (8 * shift);
            }
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
