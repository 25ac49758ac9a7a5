//! The wire codec of the request-response protocols: each message is one [`Frame`] encoded as a
//! CBOR byte string (the same bytes `request_response::cbor` would write), read with a hard cap.
//!
//! Unlike `request_response::cbor`, an oversize or undecodable request is not a stream error,
//! which libp2p would drop with a debug log, but a value ([`Wire::Invalid`]) delivered to the
//! loop, so that it can be reported and counted against the peer.

use std::io;
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{request_response, StreamProtocol};

use super::traffic::FrameCounters;
use super::Frame;

/// Bytes the CBOR byte-string header adds to a payload (at most 9), rounded up.
const FRAME_OVERHEAD: usize = 16;

/// A message as read from, or written to, a stream.
#[derive(Debug)]
pub(crate) enum Wire {
    /// A well-formed frame within the cap.
    Frame(Frame),
    /// Bytes refused, with the reason. Never written.
    Invalid(String),
}

/// Reads and writes [`Wire`] messages with per-direction payload caps, counting the frame bytes
/// and messages of its protocol (see `traffic`).
#[derive(Clone, Debug)]
pub(crate) struct FrameCodec {
    max_request: usize,
    max_response: usize,
    counters: Arc<FrameCounters>,
}

impl FrameCodec {
    /// A codec accepting request and response payloads up to the given sizes.
    pub(crate) fn new(
        max_request: usize,
        max_response: usize,
        counters: Arc<FrameCounters>,
    ) -> Self {
        Self {
            max_request,
            max_response,
            counters,
        }
    }
}

/// The CBOR bytes of `frame`.
pub(crate) fn encode(frame: &Frame) -> io::Result<Vec<u8>> {
    let buf = Vec::with_capacity(frame.0.len().saturating_add(FRAME_OVERHEAD));
    cbor4ii::serde::to_vec(buf, frame).map_err(io::Error::other)
}

/// Decodes `bytes` as a frame of at most `max` payload bytes; anything else is `Invalid`.
pub(crate) fn decode(bytes: &[u8], max: usize) -> Wire {
    if bytes.len() > max.saturating_add(FRAME_OVERHEAD) {
        return Wire::Invalid(format!("frame exceeds the cap of {max} bytes"));
    }
    match cbor4ii::serde::from_slice::<Frame>(bytes) {
        Ok(frame) if frame.0.len() > max => Wire::Invalid(format!(
            "frame of {} bytes exceeds the cap of {max} bytes",
            frame.0.len()
        )),
        Ok(frame) => Wire::Frame(frame),
        Err(e) => Wire::Invalid(format!("undecodable frame: {e}")),
    }
}

/// Reads to the end of the stream, but never more than one byte past what `max` allows.
async fn read_capped<T>(io: &mut T, max: usize) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let limit = max.saturating_add(FRAME_OVERHEAD + 1);
    let mut buf = Vec::new();
    io.take(u64::try_from(limit).unwrap_or(u64::MAX))
        .read_to_end(&mut buf)
        .await?;
    Ok(buf)
}

/// Writes `wire`; returns the bytes written.
async fn write_wire<T>(io: &mut T, wire: Wire) -> io::Result<usize>
where
    T: AsyncWrite + Unpin + Send,
{
    match wire {
        Wire::Frame(frame) => {
            let bytes = encode(&frame)?;
            io.write_all(&bytes).await?;
            Ok(bytes.len())
        }
        Wire::Invalid(reason) => Err(io::Error::new(io::ErrorKind::InvalidInput, reason)),
    }
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Wire;
    type Response = Wire;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Wire>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_capped(io, self.max_request).await?;
        if bytes.is_empty() {
            // A stream closed before it carried anything (e.g. the sender's request timed out
            // while the link was down): nothing was said, so nothing is held against the peer.
            // libp2p drops a request whose read fails, without an event.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream closed without a request",
            ));
        }
        self.counters.request_in(bytes.len());
        Ok(decode(&bytes, self.max_request))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Wire>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_capped(io, self.max_response).await?;
        if bytes.is_empty() {
            // The peer closed the stream without answering: a refusal, not bad input.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream closed without a response",
            ));
        }
        self.counters.response_in(bytes.len());
        Ok(decode(&bytes, self.max_response))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Wire,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let n = write_wire(io, req).await?;
        self.counters.request_out(n);
        Ok(())
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Wire,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let n = write_wire(io, res).await?;
        self.counters.response_out(n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips_through_cbor() {
        let frame = Frame(vec![1, 2, 3, 255]);
        let bytes = encode(&frame).unwrap();
        assert!(bytes.len() <= frame.0.len() + FRAME_OVERHEAD);
        match decode(&bytes, 4) {
            Wire::Frame(back) => assert_eq!(back, frame),
            Wire::Invalid(reason) => panic!("refused: {reason}"),
        }
    }

    #[test]
    fn decode_refuses_payload_over_cap() {
        let bytes = encode(&Frame(vec![0; 10])).unwrap();
        assert!(matches!(decode(&bytes, 9), Wire::Invalid(_)));
        assert!(matches!(decode(&bytes, 10), Wire::Frame(_)));
    }

    #[test]
    fn decode_refuses_garbage_and_truncation() {
        assert!(matches!(decode(&[0xff, 0x00, 0x13], 100), Wire::Invalid(_)));
        let bytes = encode(&Frame(vec![7; 50])).unwrap();
        assert!(matches!(decode(&bytes[..20], 100), Wire::Invalid(_)));
        assert!(matches!(decode(&[], 100), Wire::Invalid(_)));
    }
}
