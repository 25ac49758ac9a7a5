//! fogmesh integration tests: one binary, shared helpers in `common`.

mod access;
mod audit;
mod common;
mod equivocation;
mod fanout;
mod federated;
mod flows;
mod governance;
mod http;
mod key_order;
mod mesh;
mod observe;
mod openapi;
mod simulation;
mod sql;
mod tokens;
