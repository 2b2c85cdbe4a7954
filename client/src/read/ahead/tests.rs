use tessera_common::{Attr, FileKind, FileSlices, Slice, INLINE_BIT};

use super::*;

fn file(slices: Vec<Slice>, size: u64) -> CachedSlices {
    CachedSlices::from(FileSlices {
        attr: Attr {
            ino: 2,
            kind: FileKind::File,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
        },
        slices,
        inline: vec![],
    })
}

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
    // The window ends inside block 12: most of it is not read yet.
    assert_eq!(blocks(&blocks_to_fetch(&seq, MIB, 9 * MIB, 4)), [10, 11]);
    assert_eq!(blocks(&blocks_to_fetch(&seq, 0, 16 * MIB, 3)), [10, 11, 12]);

    // Overwritten at random: each 4 KiB piece from its own 128 KiB block,
    // except block 7, of which the window reads two thirds.
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
    let patchwork = file(pieces, 64 * 4096 + (100 << 10));
    assert_eq!(
        blocks(&blocks_to_fetch(&patchwork, 0, 64 * 4096 + (100 << 10), 4)),
        [7]
    );
}
