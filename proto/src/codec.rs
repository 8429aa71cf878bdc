//! The codec of every `nodepulse.v1` service: prost, with each message sent
//! as its own HTTP/2 data chunk.
//!
//! tonic's default encoder gathers every message that is ready into one
//! chunk of up to 32 KiB. The receiver copies each chunk whole into its
//! decode buffer, so metadata parts sent back to back would grow that buffer
//! as one large message does, for the stream's life. One chunk per message
//! keeps a receiver's decode buffer the size of one message (given the patch
//! carried in `third_party/tonic`: tonic reserved room for a body already
//! received, twice the message). A stream that
//! has one message ready at a time (a report per interval, a watch event per
//! change) is sent as before.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// tonic's default initial buffer (its constant is not public).
const BUFFER_BYTES: usize = 8 * 1024;

/// Named in `build.rs` as the generated clients' and servers' codec.
#[derive(Debug, Clone)]
pub struct MessageChunks<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for MessageChunks<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for MessageChunks<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        // A yield threshold of one byte: every encoded message is a chunk.
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_BYTES, 1))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::default().decoder()
    }
}
