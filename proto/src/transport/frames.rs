//! Reading and writing lean RPC frames, on blocking and async streams
//! alike: the length prefix is checked against [`MAX_FRAME`] before
//! anything is allocated, and a frame's buffer grows as its bytes arrive.

use std::io::{self, Read, Write};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::lean::frame_len;
#[cfg(doc)]
use crate::lean::MAX_FRAME;

/// A frame's buffer grows by at most this much before its bytes arrive,
/// so a peer that only announces a large frame costs little. A 1 MiB shard
/// and its message fit in one step: no reallocation, no copy.
const GROW_STEP: usize = 4 << 20;

fn cut_short(got: usize, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("lean RPC frame ended after {got} of {len} bytes"),
    )
}

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
            return Err(cut_short(buf.len(), len));
        }
    }
    Ok(buf.freeze())
}

/// [`read_frame`] on a blocking stream.
pub fn read_frame_blocking(r: &mut impl Read) -> io::Result<Option<Bytes>> {
    let mut head = [0u8; 4];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = frame_len(head)?;
    read_body_blocking(r, len).map(Some)
}

/// [`read_body`] on a blocking stream.
pub fn read_body_blocking(r: &mut impl Read, len: usize) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(len.min(GROW_STEP));
    let mut body = r.take(len as u64);
    while buf.len() < len {
        if buf.capacity() == buf.len() {
            buf.reserve((len - buf.len()).min(GROW_STEP));
        }
        let before = buf.len();
        // Reads into the spare capacity without zeroing it first.
        (&mut body)
            .take((buf.capacity() - before) as u64)
            .read_to_end(&mut buf)?;
        if buf.len() == before {
            return Err(cut_short(before, len));
        }
    }
    Ok(Bytes::from(buf))
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

/// [`write_parts`] on a blocking stream.
pub fn write_parts_blocking(w: &mut impl Write, head: &[u8], payload: &[u8]) -> io::Result<()> {
    if payload.is_empty() {
        return w.write_all(head);
    }
    let mut parts = [io::IoSlice::new(head), io::IoSlice::new(payload)];
    let mut parts = &mut parts[..];
    while !parts.is_empty() {
        let n = w.write_vectored(parts)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame() -> Vec<u8> {
        let mut wire = Vec::new();
        crate::lean::encode_request("/a/B", &[9u8; 5 << 20], &mut wire).unwrap();
        wire
    }

    #[tokio::test]
    async fn frames_arrive_whole_or_fail() {
        let wire = frame();
        let got = read_frame(&mut &wire[..]).await.unwrap().unwrap();
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

    #[test]
    fn blocking_frames_arrive_whole_or_fail() {
        let wire = frame();
        let got = read_frame_blocking(&mut &wire[..]).unwrap().unwrap();
        assert_eq!(&got[..], &wire[4..]);
        assert!(read_frame_blocking(&mut &b""[..]).unwrap().is_none());
        let e = read_frame_blocking(&mut &wire[..wire.len() - 1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let e = read_frame_blocking(&mut &u32::MAX.to_le_bytes()[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn parts_are_written_in_order() {
        let mut out = Vec::new();
        write_parts(&mut out, b"head", Bytes::from_static(b"-payload"))
            .await
            .unwrap();
        assert_eq!(out, b"head-payload");
        let mut out = Vec::new();
        write_parts_blocking(&mut out, b"head", b"-payload").unwrap();
        assert_eq!(out, b"head-payload");
    }
}
