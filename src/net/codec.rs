//! The wire codec of the request-response protocols: each message is one [`Frame`] encoded as a
//! CBOR byte string (the same bytes `request_response::cbor` would write), read with a hard cap.
//!
//! Unlike `request_response::cbor`, an oversize or undecodable request is not a stream error,
//! which libp2p would drop with a debug log, but a value ([`Wire::Invalid`]) delivered to the
//! loop, so that it can be reported and counted against the peer.
//!
//! Protocols with large requests (push: up to 16 MiB) read under a [`Budget`] shared by every
//! stream of the node: a request's body is read only once room for it is held, and the room is
//! kept until the request is answered ([`Held`]), so concurrent requests, from one peer or many,
//! never hold more than the budget in memory; a stream beyond it waits (its sender waits too).

use std::io;
use std::sync::Arc;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{request_response, StreamProtocol};

use super::traffic::FrameCounters;
use super::Frame;

/// Bytes the CBOR byte-string header adds to a payload (at most 9), rounded up.
const FRAME_OVERHEAD: usize = 16;

/// Bytes of inbound request frames a budgeted protocol holds at once, node-wide.
#[derive(Clone, Debug)]
pub(crate) struct Budget(Arc<tokio::sync::Semaphore>);

impl Budget {
    /// Room for `bytes` of frames.
    pub(crate) fn new(bytes: u32) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(bytes as usize)))
    }
}

/// Room held for one inbound request frame until the request is answered or dropped.
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// A message as read from, or written to, a stream.
#[derive(Debug)]
pub(crate) enum Wire {
    /// A well-formed frame within the cap.
    Frame(Frame),
    /// A well-formed inbound request read under the budget, with the room it holds.
    Held(Frame, Held),
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
    budget: Option<Budget>,
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
            budget: None,
        }
    }

    /// Reads requests under `budget` (which must have room for the largest request).
    pub(crate) fn with_budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Reads one request under the budget: the byte-string header, then room for its length,
    /// then the body, into one buffer of its exact size.
    async fn read_held<T>(&self, budget: &Budget, io: &mut T) -> io::Result<Wire>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut head = [0u8; 1];
        if io.read(&mut head).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stream closed without a request",
            ));
        }
        let extra = match head[0] {
            0x40..=0x57 => 0,
            0x58 => 1,
            0x59 => 2,
            0x5a => 4,
            0x5b => 8,
            _ => return Ok(Wire::Invalid("undecodable frame: not a byte string".into())),
        };
        let mut len_bytes = [0u8; 8];
        io.read_exact(&mut len_bytes[8 - extra..]).await?;
        let len = match extra {
            0 => u64::from(head[0] - 0x40),
            _ => u64::from_be_bytes(len_bytes),
        };
        let Some(len) = usize::try_from(len).ok().filter(|l| *l <= self.max_request) else {
            // Read (into nothing) as far as the cap allows, as an unbudgeted read would, so the
            // sender is not left blocked on a full stream until its timeout.
            let limit = self.max_request.saturating_add(FRAME_OVERHEAD + 1);
            let limit = u64::try_from(limit).unwrap_or(u64::MAX);
            futures::io::copy(io.take(limit), &mut futures::io::sink()).await?;
            return Ok(Wire::Invalid(format!(
                "frame exceeds the cap of {} bytes",
                self.max_request
            )));
        };
        let room = u32::try_from(len).unwrap_or(u32::MAX).max(1);
        let permit = budget.0.clone().acquire_many_owned(room).await;
        let permit = permit.map_err(|_| io::Error::other("the request budget is closed"))?;
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await?;
        if io.read(&mut head).await? != 0 {
            return Ok(Wire::Invalid("trailing bytes after the frame".into()));
        }
        self.counters.request_in(1 + extra + len);
        Ok(Wire::Held(Frame(body), Held(permit)))
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
        Wire::Frame(frame) | Wire::Held(frame, _) => {
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
        if let Some(budget) = &self.budget {
            return self.read_held(budget, io).await;
        }
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
            other => panic!("refused: {other:?}"),
        }
    }

    fn budgeted(max: usize, room: u32) -> FrameCodec {
        let counters = Arc::new(FrameCounters::default());
        FrameCodec::new(max, max, counters).with_budget(Budget::new(room))
    }

    async fn read(codec: &FrameCodec, bytes: Vec<u8>) -> io::Result<Wire> {
        let budget = codec.budget.clone().expect("budgeted");
        codec
            .read_held(&budget, &mut futures::io::Cursor::new(bytes))
            .await
    }

    #[tokio::test]
    async fn a_budgeted_read_holds_room_until_its_frame_is_dropped() {
        let codec = budgeted(1000, 600);
        let frame = Frame(vec![9; 500]);
        let first = read(&codec, encode(&frame).unwrap()).await.unwrap();
        let Wire::Held(back, held) = first else {
            panic!("not held: {first:?}")
        };
        assert_eq!(back, frame);
        // A second frame of 500 bytes waits for room while the first is held...
        let second = read(&codec, encode(&frame).unwrap());
        let waited = tokio::time::timeout(std::time::Duration::from_millis(100), second).await;
        assert!(waited.is_err(), "read past the budget");
        // ...and is read once it is released.
        drop(held);
        let second = read(&codec, encode(&frame).unwrap()).await.unwrap();
        assert!(matches!(second, Wire::Held(..)));
        // Over the cap, trailing bytes, not a byte string: refused before any room is taken.
        let big = encode(&Frame(vec![0; 1001])).unwrap();
        assert!(matches!(read(&codec, big).await.unwrap(), Wire::Invalid(_)));
        let mut trailing = encode(&Frame(vec![1; 10])).unwrap();
        trailing.push(0);
        assert!(matches!(
            read(&codec, trailing).await.unwrap(),
            Wire::Invalid(_)
        ));
        assert!(matches!(
            read(&codec, vec![0xa0]).await.unwrap(),
            Wire::Invalid(_)
        ));
        assert!(
            read(&codec, vec![]).await.is_err(),
            "an empty stream is no request"
        );
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
