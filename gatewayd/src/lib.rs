//! gatewayd: a plugin-driven telephony gateway daemon.
//!
//! The daemon owns sockets ([`server`]), auth ([`auth`]), storage ([`store`]), the local bus
//! ([`bus`]), the plugin runtime ([`plugins`]) and provider plugins' outbound network
//! ([`net`]); protocols are WebAssembly components loaded from the TOML [`config`]. [`daemon`]
//! wires them together; [`cli`] is the command line.

pub mod auth;
pub mod auth_signing;
pub mod auth_twilio;
pub mod bus;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod media;
pub mod net;
pub mod plugins;
pub mod server;
pub mod speech;
pub mod store;
pub mod telemetry;
