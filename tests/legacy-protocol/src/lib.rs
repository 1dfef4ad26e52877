//! A protocol plugin built the way one built outside this repository before speech was added
//! to the contract: plain `wit-bindgen` against `wit/gatewayd.wit`, a frozen copy of the
//! `gatewayd:plugin@0.1.0` contract as of commit dc24e06 (no `media.transcribe`/`say`, no
//! `speech-handler` or `schema` export, the `protocol` world only). `tests/tests/contract.rs`
//! loads it into today's daemon: it must keep loading and working as long as the contract
//! version is 0.1.0 (`plugin-api/wit/gatewayd.wit`, "Versioning").
//!
//! Behaviour: text `answer` on a media route answers the call with echo on and replies
//! `answered`; `mark:<name>` queues a mark; any other text and every binary message on a
//! plain route is sent back. Media events come back as text: `mark:<name>`, `play-finished`,
//! `rejected:<reason>`.

wit_bindgen::generate!({ world: "protocol", path: "wit" });

use exports::gatewayd::plugin::handler::Guest;
use gatewayd::plugin::connections;
use gatewayd::plugin::media::{self, MediaEvent};
use gatewayd::plugin::types::{ConnectInfo, ConnectionId, HttpRequest, HttpResponse};

struct Legacy;

impl Guest for Legacy {
    fn init() -> Result<(), String> {
        Ok(())
    }

    fn on_open(_info: ConnectInfo) {}

    fn on_text(id: ConnectionId, text: String) {
        let reply = if text == "answer" {
            match media::answer(id).and_then(|()| media::echo(id, true)) {
                Ok(()) => "answered".to_string(),
                Err(e) => format!("error:{e}"),
            }
        } else if let Some(name) = text.strip_prefix("mark:") {
            match media::mark(id, name) {
                Ok(()) => return,
                Err(e) => format!("error:{e}"),
            }
        } else {
            text
        };
        connections::send_text(id, &reply);
    }

    fn on_binary(id: ConnectionId, data: Vec<u8>) {
        connections::send_binary(id, &data);
    }

    fn on_close(_id: ConnectionId, _code: u16) {}

    fn on_timer(_key: String, _payload: String) {}

    fn on_http(_request: HttpRequest) -> HttpResponse {
        HttpResponse { status: 404, headers: Vec::new(), body: b"{\"error\":\"not_found\"}".to_vec() }
    }

    fn on_media(id: ConnectionId, event: MediaEvent) {
        let text = match event {
            MediaEvent::Mark(name) => format!("mark:{name}"),
            MediaEvent::PlayFinished => "play-finished".to_string(),
            MediaEvent::FrameRejected(reason) => format!("rejected:{reason}"),
        };
        connections::send_text(id, &text);
    }
}

export!(Legacy);
