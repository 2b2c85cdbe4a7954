//! Reading and writing lean RPC frames on an async stream, for both ends.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame_len;

/// A frame's buffer grows by at most this much before its bytes arrive,
/// so a peer that only announces a large frame costs little. A 1 MiB shard
/// and its message fit in one step: no reallocation, no copy.
const GROW_STEP: usize = 4 << 20;

/// Reads one frame: its length prefix, then that many bytes.
/// `Ok(None)` if the stream ended cleanly before the frame began.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Bytes>> {
    let mut head = [0u8; 4];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = frame_len(head)?;
    read_body(r, len).await.map(Some)
}

/// Reads the `len` bytes of a frame whose prefix was read.
pub async fn read_body(r: &mut (impl AsyncRead + Unpin), len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len.min(GROW_STEP));
    while buf.len() < len {
        let left = len - buf.len();
        if buf.capacity() == buf.len() {
            buf.reserve(left.min(GROW_STEP));
        }
        if (&mut *r).take(left as u64).read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("lean RPC frame ended after {} of {len} bytes", buf.len()),
            ));
        }
    }
    Ok(buf.freeze())
}

/// Writes `head` then `payload` with as few system calls as the socket
/// allows, without copying `payload`.
pub async fn write_parts(
    w: &mut (impl AsyncWrite + Unpin),
    head: &[u8],
    payload: Bytes,
) -> io::Result<()> {
    w.write_all_buf(&mut Buf::chain(head, payload)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_arrive_whole_or_fail() {
        let mut wire = Vec::new();
        super::super::encode_request("/a/B", &[9u8; 5 << 20], &mut wire).unwrap();
        let got = read_frame(&mut &wire[..]).await.unwrap().unwrap();
        assert_eq!(got.len(), wire.len() - 4);
        assert_eq!(&got[..], &wire[4..]);
        // Nothing at all: a clean end. A frame cut short: an error.
        assert!(read_frame(&mut &b""[..]).await.unwrap().is_none());
        let e = read_frame(&mut &wire[..wire.len() - 1]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // A length over the limit is refused before anything is read.
        let e = read_frame(&mut &u32::MAX.to_le_bytes()[..])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn parts_are_written_in_order() {
        let mut out = Vec::new();
        write_parts(&mut out, b"head", Bytes::from_static(b"-payload"))
            .await
            .unwrap();
        assert_eq!(out, b"head-payload");
    }
}
