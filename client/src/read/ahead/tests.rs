use tessera_common::{Slice, INLINE_BIT};

use super::*;
use crate::read::slices::fetched_for_tests as file;

fn blocks(b: &[BlockRef]) -> Vec<u64> {
    b.iter().map(|b| b.block).collect()
}

#[test]
fn blocks_written_whole_are_fetched_and_small_pieces_of_many_are_not() {
    const MIB: u64 = 1 << 20;
    // Sequentially written: 4 MiB blocks, each read whole by the window.
    let seq = file(
        (0..4)
            .map(|i| Slice {
                offset: i * 4 * MIB,
                len: 4 << 20,
                block: 10 + i,
                block_offset: 0,
                block_len: 4 << 20,
            })
            .collect(),
        16 * MIB,
    );
    assert_eq!(blocks(&blocks_to_fetch(&seq, 0, 8 * MIB, 4)), [10, 11]);
    // The window ends 1 MiB into block 12, a run its reader fetches the
    // block whole for anyway.
    assert_eq!(
        blocks(&blocks_to_fetch(&seq, MIB, 9 * MIB, 4)),
        [10, 11, 12]
    );
    assert_eq!(blocks(&blocks_to_fetch(&seq, 0, 16 * MIB, 3)), [10, 11, 12]);

    // Overwritten at random: each 4 KiB piece from its own 128 KiB block,
    // except block 7, of which the window reads three quarters, and
    // block 8, a 64 KiB run of a 4 MiB block (the tail of a large file
    // packed with others).
    let mut pieces: Vec<Slice> = (0..64)
        .map(|i| Slice {
            offset: i * 4096,
            len: 4096,
            block: 100 + i,
            block_offset: 4096 * (i as u32 % 32),
            block_len: 128 << 10,
        })
        .collect();
    pieces.push(Slice {
        offset: 64 * 4096,
        len: 96 << 10,
        block: 7,
        block_offset: 0,
        block_len: 128 << 10,
    });
    pieces.push(Slice {
        offset: 64 * 4096 + (96 << 10),
        len: 4096,
        block: INLINE_BIT | 3,
        block_offset: 0,
        block_len: 4096,
    });
    pieces.push(Slice {
        offset: 64 * 4096 + (100 << 10),
        len: 64 << 10,
        block: 8,
        block_offset: 1 << 20,
        block_len: 4 << 20,
    });
    let size = 64 * 4096 + (164 << 10);
    let patchwork = file(pieces, size);
    assert_eq!(blocks(&blocks_to_fetch(&patchwork, 0, size, 4)), [7, 8]);
    assert_eq!(blocks(&blocks_to_fetch(&patchwork, 0, size, 1)), [7]);
}
