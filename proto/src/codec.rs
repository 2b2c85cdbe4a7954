//! The codec of every Tessera service: prost's, with one change. prost
//! writes a message into tonic's buffer a field at a time, and the buffer
//! starts at 8 KiB and doubles, so encoding a 1 MiB shard copied it about
//! twice over on the way. Reserving the encoded length first makes that
//! one copy.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    codec::{Codec, EncodeBuf, Encoder, ProstCodec},
    Status,
};

/// Selected in `build.rs` (`codec_path`) for the generated clients and
/// servers.
pub struct ProtoCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        ProtoCodec(PhantomData)
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::default().decoder()
    }
}

pub struct ReservingEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }
}
