//! MurmurHash3 x86 32-bit (seed 0), fed in pieces: `fractional`'s bucket key is the flag key
//! and the targeting key one after the other, hashed without building the joined string.
//! The `murmur3` crate hashes only from a reader; a test checks this one against it.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// An incremental MurmurHash3 x86 32-bit with seed 0. Whole 4-byte blocks are mixed as they
/// come; a block split between two writes waits in `carry` (no buffer to copy).
pub(crate) struct Murmur3 {
    state: u32,
    /// The bytes of an unfinished block, little-endian, and how many there are (0 to 3).
    carry: u32,
    carried: u32,
    total: u32,
}

fn mix(k: u32) -> u32 {
    k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2)
}

impl Murmur3 {
    pub(crate) fn new() -> Self {
        Murmur3 { state: 0, carry: 0, carried: 0, total: 0 }
    }

    #[inline]
    fn block(&mut self, k: u32) {
        self.state ^= mix(k);
        self.state = self.state.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }

    #[inline]
    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        self.total = self.total.wrapping_add(bytes.len() as u32);
        while self.carried > 0 {
            let Some((first, rest)) = bytes.split_first() else { return };
            self.carry |= u32::from(*first) << (8 * self.carried);
            self.carried += 1;
            bytes = rest;
            if self.carried == 4 {
                self.block(self.carry);
                (self.carry, self.carried) = (0, 0);
            }
        }
        let blocks = bytes.chunks_exact(4);
        let tail = blocks.remainder();
        for block in blocks {
            self.block(u32::from_le_bytes([block[0], block[1], block[2], block[3]]));
        }
        self.carry = tail.iter().rev().fold(0u32, |k, byte| (k << 8) | u32::from(*byte));
        self.carried = tail.len() as u32;
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

    pub(crate) fn finish(self) -> u32 {
        let mut hash = self.state;
        if self.carried > 0 {
            hash ^= mix(self.carry);
        }
        hash ^= self.total;
        hash ^= hash >> 16;
        hash = hash.wrapping_mul(0x85eb_ca6b);
        hash ^= hash >> 13;
        hash = hash.wrapping_mul(0xc2b2_ae35);
        hash ^ (hash >> 16)
    }
}
