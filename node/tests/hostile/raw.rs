//! The raw libp2p client of the hostile-peer tests: request-response streams whose bytes it
//! chooses itself, so it can send well-framed nonsense as well as bytes that are no frame at all.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fogmesh::mesh::proto;
use fogmesh::net::Frame;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::sync::{mpsc, oneshot};

/// Commands queued from the test thread to the raw client's driver.
pub(crate) const CMDS_CAP: usize = 64;
/// Notes (connection up/down) queued from the driver to the test thread; more are dropped.
pub(crate) const NOTES_CAP: usize = 1024;
/// Longest answer the raw client reads.
pub(crate) const MAX_ANSWER: u64 = 32 << 20;

// ---------------------------------------------------------------------------------------------
// The raw client

/// Which fogmesh protocol a raw request goes out on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Proto {
    Join,
    Sync,
    Push,
    Query,
}

impl Proto {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Proto::Join => "/fogmesh/join/2",
            Proto::Sync => "/fogmesh/sync/4",
            Proto::Push => "/fogmesh/push/3",
            Proto::Query => "/fogmesh/query/1",
        }
    }
}

/// Writes a request's bytes exactly as given; reads whatever comes back, to the end of the stream.
#[derive(Clone, Copy, Default)]
pub(crate) struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(MAX_ANSWER).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(MAX_ANSWER).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&res).await
    }
}

type RawRr = request_response::Behaviour<RawCodec>;

#[derive(NetworkBehaviour)]
pub(crate) struct Raw {
    pub(crate) join: RawRr,
    pub(crate) sync: RawRr,
    pub(crate) push: RawRr,
    pub(crate) query: RawRr,
}

impl Raw {
    pub(crate) fn new() -> Self {
        let rr = |p: Proto| {
            RawRr::with_codec(
                RawCodec,
                [(StreamProtocol::new(p.name()), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(90)),
            )
        };
        Self {
            join: rr(Proto::Join),
            sync: rr(Proto::Sync),
            push: rr(Proto::Push),
            query: rr(Proto::Query),
        }
    }

    pub(crate) fn get(&mut self, p: Proto) -> &mut RawRr {
        match p {
            Proto::Join => &mut self.join,
            Proto::Sync => &mut self.sync,
            Proto::Push => &mut self.push,
            Proto::Query => &mut self.query,
        }
    }
}

/// What came back for one raw request.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The bytes read to the end of the stream (empty: closed without an answer).
    Bytes(Vec<u8>),
    /// The request failed (stream reset, connection closed, timeout...).
    Failed(String),
}

impl Answer {
    /// The raw bytes received (empty when nothing came back).
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Answer::Bytes(b) => b,
            Answer::Failed(_) => &[],
        }
    }

    /// Nothing useful came back.
    pub(crate) fn is_nothing(&self) -> bool {
        match self {
            Answer::Bytes(b) => b.is_empty(),
            Answer::Failed(_) => true,
        }
    }

    /// The answer's `mesh::proto` message.
    pub(crate) fn message<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let Answer::Bytes(bytes) = self else {
            bail!("no answer: {self:?}");
        };
        let frame: Frame = cbor4ii::serde::from_slice(bytes).context("answer is no frame")?;
        Ok(proto::decode("answer", &frame.0)?)
    }
}

/// Canned answers the raw client gives to the node's own requests, by protocol (none: the stream
/// is closed unanswered), and how many requests it received, by protocol.
#[derive(Clone, Default)]
pub(crate) struct Serving {
    pub(crate) answers: Arc<Mutex<HashMap<Proto, Vec<u8>>>>,
    pub(crate) received: Arc<Mutex<HashMap<Proto, usize>>>,
    /// Protocols whose requests are neither answered nor refused: their streams stay open.
    pub(crate) held: Arc<Mutex<std::collections::HashSet<Proto>>>,
}

pub(crate) enum Cmd {
    Dial(Multiaddr),
    Request {
        peer: PeerId,
        proto: Proto,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Answer>,
    },
}

#[derive(Debug)]
pub(crate) enum Note {
    Up(PeerId, Instant),
    Down(PeerId, Instant, String),
    DialFailed(String),
}

pub(crate) async fn drive(
    mut swarm: Swarm<Raw>,
    mut cmds: mpsc::Receiver<Cmd>,
    notes: mpsc::Sender<Note>,
    serving: Serving,
) {
    let mut pending: HashMap<(Proto, OutboundRequestId), oneshot::Sender<Answer>> = HashMap::new();
    // Requests held open on purpose (`RawClient::hold`): dropping a channel would close its stream.
    let mut unanswered = Vec::new();
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(Cmd::Dial(addr)) => {
                    if let Err(e) = swarm.dial(addr) {
                        let _ = notes.try_send(Note::DialFailed(e.to_string()));
                    }
                }
                Some(Cmd::Request { peer, proto, bytes, reply }) => {
                    let id = swarm.behaviour_mut().get(proto).send_request(&peer, bytes);
                    pending.insert((proto, id), reply);
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, num_established, .. }
                    if num_established.get() == 1 =>
                {
                    let _ = notes.try_send(Note::Up(peer_id, Instant::now()));
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                    let _ = notes.try_send(Note::Down(peer_id, Instant::now(), format!("{cause:?}")));
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    let _ = notes.try_send(Note::DialFailed(error.to_string()));
                }
                SwarmEvent::Behaviour(event) => {
                    let (proto, event) = match event {
                        RawEvent::Join(e) => (Proto::Join, e),
                        RawEvent::Sync(e) => (Proto::Sync, e),
                        RawEvent::Push(e) => (Proto::Push, e),
                        RawEvent::Query(e) => (Proto::Query, e),
                    };
                    let (id, answer) = match event {
                        request_response::Event::Message {
                            message: request_response::Message::Request { channel, .. },
                            ..
                        } => {
                            *lock(&serving.received).entry(proto).or_default() += 1;
                            let canned = lock(&serving.answers).get(&proto).cloned();
                            if let Some(bytes) = canned {
                                let _ = swarm.behaviour_mut().get(proto).send_response(channel, bytes);
                            } else if lock(&serving.held).contains(&proto) {
                                unanswered.push(channel);
                            }
                            continue;
                        }
                        request_response::Event::Message {
                            message: request_response::Message::Response { request_id, response },
                            ..
                        } => (request_id, Answer::Bytes(response)),
                        request_response::Event::OutboundFailure { request_id, error, .. } => {
                            (request_id, Answer::Failed(error.to_string()))
                        }
                        _ => continue,
                    };
                    if let Some(reply) = pending.remove(&(proto, id)) {
                        let _ = reply.send(answer);
                    }
                }
                _ => {}
            },
        }
    }
}

/// A raw libp2p client aimed at one node. Owns its runtime; dropping it drops the connection.
pub(crate) struct RawClient {
    pub(crate) cmds: mpsc::Sender<Cmd>,
    pub(crate) notes: mpsc::Receiver<Note>,
    pub(crate) target: PeerId,
    pub(crate) addr: Multiaddr,
    pub(crate) up: bool,
    /// When and why the node last closed the connection.
    pub(crate) last_down: Option<(Instant, String)>,
    pub(crate) local: PeerId,
    pub(crate) serving: Serving,
    pub(crate) rt: tokio::runtime::Runtime,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RawClient {
    pub(crate) fn new(keypair: Keypair, target: PeerId, addr: Multiaddr) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let local = keypair.public().to_peer_id();
        let swarm = rt.block_on(async {
            Ok::<_, anyhow::Error>(
                libp2p::SwarmBuilder::with_existing_identity(keypair)
                    .with_tokio()
                    .with_tcp(
                        tcp::Config::default().nodelay(true),
                        noise::Config::new,
                        yamux::Config::default,
                    )?
                    .with_behaviour(|_| Raw::new())?
                    // The attacker never hangs up first: any disconnect is the node's doing.
                    .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
                    .build(),
            )
        })?;
        let (cmd_tx, cmd_rx) = mpsc::channel(CMDS_CAP);
        let (note_tx, note_rx) = mpsc::channel(NOTES_CAP);
        let serving = Serving::default();
        rt.spawn(drive(swarm, cmd_rx, note_tx, serving.clone()));
        Ok(Self {
            cmds: cmd_tx,
            notes: note_rx,
            target,
            addr,
            up: false,
            last_down: None,
            local,
            serving,
            rt,
        })
    }

    /// Dials the node and waits for the connection; returns when it was established.
    pub(crate) fn connect(&mut self) -> Result<Instant> {
        ensure!(!self.is_up(), "already connected");
        self.cmds
            .blocking_send(Cmd::Dial(self.addr.clone()))
            .map_err(|_| anyhow::anyhow!("driver gone"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let note = self
                .rt
                .block_on(async { tokio::time::timeout(left, self.notes.recv()).await });
            match note {
                Ok(Some(Note::Up(p, at))) if p == self.target => {
                    self.up = true;
                    return Ok(at);
                }
                Ok(Some(Note::DialFailed(e))) => bail!("dialing {}: {e}", self.addr),
                Ok(Some(_)) => {}
                Ok(None) => bail!("driver gone"),
                Err(_) => bail!("no connection to {} within 10 s", self.addr),
            }
        }
    }

    /// Answers every later request of the node on `proto` with `bytes` (a whole frame).
    pub(crate) fn serve(&self, proto: Proto, bytes: Vec<u8>) {
        lock(&self.serving.answers).insert(proto, bytes);
    }

    /// Leaves every later request of the node on `proto` unanswered with its stream open, as a
    /// hung or withholding member would (the node gives up at its request timeout).
    pub(crate) fn hold(&self, proto: Proto) {
        lock(&self.serving.held).insert(proto);
    }

    /// How many requests the node sent on `proto` so far.
    pub(crate) fn received(&self, proto: Proto) -> usize {
        lock(&self.serving.received)
            .get(&proto)
            .copied()
            .unwrap_or(0)
    }

    /// Sends `bytes` on `proto` and waits for whatever comes back.
    pub(crate) fn request(&self, proto: Proto, bytes: Vec<u8>) -> Answer {
        let (tx, rx) = oneshot::channel();
        let cmd = Cmd::Request {
            peer: self.target,
            proto,
            bytes,
            reply: tx,
        };
        if self.cmds.blocking_send(cmd).is_err() {
            return Answer::Failed("driver gone".into());
        }
        match self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(120), rx).await })
        {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => Answer::Failed("driver dropped the request".into()),
            Err(_) => Answer::Failed("no outcome within 120 s".into()),
        }
    }

    /// Sends every message of `all` on `proto` at once (one stream each, concurrently) and
    /// waits for every outcome, in order.
    pub(crate) fn request_many(&self, proto: Proto, all: Vec<Vec<u8>>) -> Vec<Answer> {
        let mut waiting = Vec::with_capacity(all.len());
        for bytes in all {
            let (tx, rx) = oneshot::channel();
            let cmd = Cmd::Request {
                peer: self.target,
                proto,
                bytes,
                reply: tx,
            };
            if self.cmds.blocking_send(cmd).is_err() {
                return vec![Answer::Failed("driver gone".into())];
            }
            waiting.push(rx);
        }
        self.rt.block_on(async {
            let mut out = Vec::with_capacity(waiting.len());
            for rx in waiting {
                let got = tokio::time::timeout(Duration::from_secs(120), rx).await;
                out.push(match got {
                    Ok(Ok(a)) => a,
                    Ok(Err(_)) => Answer::Failed("driver dropped the request".into()),
                    Err(_) => Answer::Failed("no outcome within 120 s".into()),
                });
            }
            out
        })
    }

    pub(crate) fn on_note(&mut self, note: Note) -> Option<(Instant, String)> {
        match note {
            Note::Up(p, _) if p == self.target => self.up = true,
            Note::Down(p, at, cause) if p == self.target => {
                self.up = false;
                self.last_down = Some((at, cause.clone()));
                return Some((at, cause));
            }
            _ => {}
        }
        None
    }

    /// Whether the connection to the node is still open (as far as the notes so far tell).
    pub(crate) fn is_up(&mut self) -> bool {
        while let Ok(note) = self.notes.try_recv() {
            self.on_note(note);
        }
        self.up
    }

    /// Waits at most `limit` for the node to close the connection; when it did and why.
    pub(crate) fn wait_down(&mut self, limit: Duration) -> Option<(Instant, String)> {
        if !self.is_up() {
            return self.last_down.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .rt
                .block_on(async { tokio::time::timeout(left, self.notes.recv()).await })
            {
                Ok(Some(note)) => {
                    if let Some(down) = self.on_note(note) {
                        return Some(down);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }
}
