//! The codec of every `ragd.v1` service: prost's, except that a message that does not decode
//! (invalid UTF-8 in a string field, a truncated or garbled message) is the sender's error,
//! INVALID_ARGUMENT, where tonic-prost answers INTERNAL, which tells a client to blame the
//! server and retry.

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] with decode failures as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct RagdCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for RagdCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for RagdCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RagdDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RagdDecoder(self.0.decoder())
    }
}

/// [`ProstDecoder`] with decode failures as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct RagdDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for RagdDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            if s.code() == tonic::Code::Internal {
                // prost's message names the field path and the fault, never the bytes.
                Status::invalid_argument(format!("the message does not decode: {}", s.message()))
            } else {
                s
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
