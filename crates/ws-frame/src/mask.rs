//! Unmasking of client payloads (RFC 6455 §5.3), in place and word-at-a-time.

/// XORs `buf` with the 4-byte `mask`, where `buf[0]` is payload byte `offset`.
///
/// The fast path works on 8-byte words; the result equals [`unmask_reference`] for every
/// alignment and offset (checked by the tests below). Hot path: no allocation.
pub fn unmask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    // Rotate the mask so that mask[0] lines up with buf[0].
    let rot = offset % 4;
    let mask = [
        mask[rot],
        mask[(rot + 1) % 4],
        mask[(rot + 2) % 4],
        mask[(rot + 3) % 4],
    ];
    let mut word_bytes = [0u8; 8];
    word_bytes[..4].copy_from_slice(&mask);
    word_bytes[4..].copy_from_slice(&mask);
    let word = u64::from_ne_bytes(word_bytes);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// The plain byte-by-byte definition, kept as the reference the fast path is checked against.
pub fn unmask_reference(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= mask[(offset + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_matches_reference_for_every_alignment_and_offset() {
        let mask = [0x6d, 0xb6, 0xb2, 0x80];
        let data: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for start in 0..16 {
            for len in [0, 1, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200] {
                for offset in 0..8 {
                    let mut fast = data[start..start + len].to_vec();
                    let mut slow = fast.clone();
                    unmask(&mut fast, mask, offset);
                    unmask_reference(&mut slow, mask, offset);
                    assert_eq!(fast, slow, "start {start} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn masking_twice_is_identity() {
        let original = b"Hello, WebSocket".to_vec();
        let mut buf = original.clone();
        unmask(&mut buf, [1, 2, 3, 4], 0);
        assert_ne!(buf, original);
        unmask(&mut buf, [1, 2, 3, 4], 0);
        assert_eq!(buf, original);
    }
}
