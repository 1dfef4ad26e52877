//! A conformance plugin: every message on its WebSocket route is sent back exactly as it
//! arrived, text as text and binary as binary, with no prefix and no size change.
//!
//! It serves the Autobahn|Testsuite run (`tests/tests/autobahn.rs`), whose fuzzing client
//! expects an echo server. It is not part of the shipped configuration.

use gatewayd_plugin::{ConnectionId, Protocol, conn};

struct Echo;

impl Protocol for Echo {
    fn on_text(id: ConnectionId, text: String) {
        conn::send_text(id, &text);
    }

    fn on_binary(id: ConnectionId, data: Vec<u8>) {
        conn::send_binary(id, &data);
    }
}

gatewayd_plugin::protocol_plugin!(Echo);
