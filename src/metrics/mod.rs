//! The opt-in Prometheus endpoint (`[metrics] listen`): what `vmtun status --json` knows,
//! as metrics a scraper reads with `GET /metrics`. Off without the section: then nothing
//! listens.
//!
//! - [`exposition`]: pure. A `Status` snapshot and the wall clock in, the Prometheus text
//!   format out, written by prometheus-client (the Prometheus project's own Rust client,
//!   0.26: a `Collector` renders metrics made at scrape time, its encoder writes the
//!   format with label escaping; four small dependencies and no HTTP stack, where the
//!   `prometheus` crate pulls protobuf by default and `metrics-exporter-prometheus` a
//!   hyper server and a global recorder).
//! - `http`: pure. Just enough HTTP/1.1 to answer a scrape; no web framework.
//! - `server`: the OS edge. A TCP listener on `vmtun up`'s tokio runtime, beside the
//!   control socket; it reads the snapshot the way the control socket does, at most one
//!   request in flight and one per 100 ms, so it never blocks the data path and a flood of
//!   scrapes cannot slow it.

pub mod exposition;
mod http;
mod server;

pub use server::{BindError, bind, serve};
