//! Traffic counters: bytes on the TCP connections of one networking actor, and the part of them
//! that is fogmesh request-response frames, per protocol.
//!
//! Two places count into one shared [`Meter`]:
//!
//! - every TCP socket the swarm dials or accepts is wrapped in [`Counted`], which adds each
//!   successful read and write to [`Traffic::inbound`] / [`Traffic::outbound`]. These are the bytes
//!   that cross the transport: Noise handshakes and frames, yamux headers and window updates,
//!   multistream-select negotiations and every protocol (identify, ping, AutoNAT, DCUtR, relay, the
//!   fogmesh ones). Only TCP/IP headers are left out. QUIC connections are not counted here;
//!   their frames still are (below).
//! - the frame codec counts, per [`Protocol`], the CBOR frame bytes it reads and writes on
//!   request-response substreams and how many requests and responses went each way
//!   ([`Traffic::join`], [`Traffic::sync`], [`Traffic::push`], [`Traffic::query`]). The difference between the socket
//!   totals and the frame totals is protocol overhead plus identify, ping and AutoNAT.
//!
//! Counting costs two relaxed atomic additions per socket read or write, so it is always on.
//! Read the totals with [`super::Client::traffic`], or, when something else spawns the actor (the
//! mesh), pass a [`Meter`] in [`super::Config::meter`] and keep a clone.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use serde::Serialize;

use super::Protocol;

/// Frame traffic of one fogmesh protocol, as counted by the codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FrameTraffic {
    /// CBOR frame bytes read (requests and responses).
    pub bytes_in: u64,
    /// CBOR frame bytes written (requests and responses).
    pub bytes_out: u64,
    /// Requests read from peers.
    pub requests_in: u64,
    /// Requests written to peers.
    pub requests_out: u64,
    /// Responses read from peers.
    pub responses_in: u64,
    /// Responses written to peers.
    pub responses_out: u64,
}

impl FrameTraffic {
    /// Bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes_in + self.bytes_out
    }

    fn add(&self, other: &Self) -> Self {
        Self {
            bytes_in: self.bytes_in + other.bytes_in,
            bytes_out: self.bytes_out + other.bytes_out,
            requests_in: self.requests_in + other.requests_in,
            requests_out: self.requests_out + other.requests_out,
            responses_in: self.responses_in + other.responses_in,
            responses_out: self.responses_out + other.responses_out,
        }
    }

    fn since(&self, earlier: &Self) -> Self {
        Self {
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            requests_in: self.requests_in.saturating_sub(earlier.requests_in),
            requests_out: self.requests_out.saturating_sub(earlier.requests_out),
            responses_in: self.responses_in.saturating_sub(earlier.responses_in),
            responses_out: self.responses_out.saturating_sub(earlier.responses_out),
        }
    }
}

/// What one networking actor has sent and received since it started (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    /// Bytes read from TCP connections, everything included.
    pub inbound: u64,
    /// Bytes written to TCP connections, everything included.
    pub outbound: u64,
    /// TCP connections this node dialed (counted when the socket is up, before Noise).
    pub dialed: u64,
    /// TCP connections this node accepted (counted when the socket is up, before Noise).
    pub accepted: u64,
    /// `/fogmesh/join/2` frames.
    pub join: FrameTraffic,
    /// `/fogmesh/sync/4` frames.
    pub sync: FrameTraffic,
    /// `/fogmesh/push/3` frames.
    pub push: FrameTraffic,
    /// `/fogmesh/query/1` frames.
    pub query: FrameTraffic,
}

impl Traffic {
    /// Transport bytes both ways.
    pub fn total(&self) -> u64 {
        self.inbound + self.outbound
    }

    /// TCP connections opened, dialed or accepted.
    pub fn connections(&self) -> u64 {
        self.dialed + self.accepted
    }

    /// The frames of all four fogmesh protocols together.
    pub fn frames(&self) -> FrameTraffic {
        self.join.add(&self.sync).add(&self.push).add(&self.query)
    }

    /// The frames of one protocol.
    pub fn protocol(&self, protocol: Protocol) -> FrameTraffic {
        match protocol {
            Protocol::Join => self.join,
            Protocol::Sync => self.sync,
            Protocol::Push => self.push,
            Protocol::Query => self.query,
        }
    }

    /// What was counted after `earlier` (a reading of the same meter).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            inbound: self.inbound.saturating_sub(earlier.inbound),
            outbound: self.outbound.saturating_sub(earlier.outbound),
            dialed: self.dialed.saturating_sub(earlier.dialed),
            accepted: self.accepted.saturating_sub(earlier.accepted),
            join: self.join.since(&earlier.join),
            sync: self.sync.since(&earlier.sync),
            push: self.push.since(&earlier.push),
            query: self.query.since(&earlier.query),
        }
    }
}

/// The counters of one protocol's frames.
#[derive(Debug, Default)]
pub(crate) struct FrameCounters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    requests_in: AtomicU64,
    requests_out: AtomicU64,
    responses_in: AtomicU64,
    responses_out: AtomicU64,
}

impl FrameCounters {
    /// A request of `bytes` was read.
    pub(crate) fn request_in(&self, bytes: usize) {
        add(&self.bytes_in, bytes);
        add(&self.requests_in, 1);
    }

    /// A request of `bytes` was written.
    pub(crate) fn request_out(&self, bytes: usize) {
        add(&self.bytes_out, bytes);
        add(&self.requests_out, 1);
    }

    /// A response of `bytes` was read.
    pub(crate) fn response_in(&self, bytes: usize) {
        add(&self.bytes_in, bytes);
        add(&self.responses_in, 1);
    }

    /// A response of `bytes` was written.
    pub(crate) fn response_out(&self, bytes: usize) {
        add(&self.bytes_out, bytes);
        add(&self.responses_out, 1);
    }

    fn read(&self) -> FrameTraffic {
        FrameTraffic {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            requests_in: self.requests_in.load(Ordering::Relaxed),
            requests_out: self.requests_out.load(Ordering::Relaxed),
            responses_in: self.responses_in.load(Ordering::Relaxed),
            responses_out: self.responses_out.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    inbound: AtomicU64,
    outbound: AtomicU64,
    dialed: AtomicU64,
    accepted: AtomicU64,
    join: Arc<FrameCounters>,
    sync: Arc<FrameCounters>,
    push: Arc<FrameCounters>,
    query: Arc<FrameCounters>,
}

/// A shared set of traffic counters. Cheap to clone; clones count into the same totals.
///
/// Give one to [`super::Config::meter`] to read the traffic of an actor someone else spawns; two
/// actors given clones of one meter add up into it.
#[derive(Debug, Clone, Default)]
pub struct Meter(Arc<Counters>);

impl Meter {
    /// A meter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The totals now.
    pub fn traffic(&self) -> Traffic {
        let c = &self.0;
        Traffic {
            inbound: c.inbound.load(Ordering::Relaxed),
            outbound: c.outbound.load(Ordering::Relaxed),
            dialed: c.dialed.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            join: c.join.read(),
            sync: c.sync.read(),
            push: c.push.read(),
            query: c.query.read(),
        }
    }

    /// The frame counters of `protocol`, for its codec.
    pub(crate) fn frames(&self, protocol: Protocol) -> Arc<FrameCounters> {
        match protocol {
            Protocol::Join => self.0.join.clone(),
            Protocol::Sync => self.0.sync.clone(),
            Protocol::Push => self.0.push.clone(),
            Protocol::Query => self.0.query.clone(),
        }
    }

    /// Wraps a freshly connected socket (dialed by this node, or accepted) so that its bytes are
    /// counted.
    pub(crate) fn wrap<S>(&self, socket: S, dialed: bool) -> Counted<S> {
        add(
            if dialed {
                &self.0.dialed
            } else {
                &self.0.accepted
            },
            1,
        );
        Counted {
            inner: socket,
            meter: self.clone(),
        }
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

/// A socket whose reads and writes are added to a [`Meter`].
#[derive(Debug)]
pub(crate) struct Counted<S> {
    inner: S,
    meter: Meter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            add(&self.meter.0.inbound, *n);
        }
        polled
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_read_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            add(&self.meter.0.inbound, *n);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            add(&self.meter.0.outbound, *n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            add(&self.meter.0.outbound, *n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures::io::Cursor;
    use futures::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn counted_socket_adds_reads_and_writes() {
        let meter = Meter::new();
        let mut s = meter.wrap(Cursor::new(vec![0u8; 10]), true);
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(b"abcdef").await.unwrap();
        let t = meter.traffic();
        assert_eq!((t.inbound, t.outbound, t.dialed, t.accepted), (4, 6, 1, 0));
        let later = meter.traffic();
        assert_eq!(later.since(&t), Traffic::default());
    }

    #[test]
    fn frame_counters_sum_per_protocol() {
        let meter = Meter::new();
        meter.frames(Protocol::Sync).request_out(10);
        meter.frames(Protocol::Sync).response_in(100);
        meter.frames(Protocol::Push).request_in(7);
        let t = meter.traffic();
        assert_eq!(t.sync.bytes(), 110);
        assert_eq!((t.sync.requests_out, t.sync.responses_in), (1, 1));
        assert_eq!(t.frames().bytes(), 117);
        assert_eq!(t.protocol(Protocol::Push).requests_in, 1);
        assert_eq!(t.join, FrameTraffic::default());
    }
}
