//! `gatewayd-load`: load generator and benchmarks for gatewayd.
//!
//! - `token`: print an HS256 agent token (for trying things by hand);
//! - `flow`: play the signaling spec flow once, printing every message;
//! - `invites`: open-loop invite load over many agent/guest pairs, reporting the achieved rate
//!   and invite -> ring latency percentiles;
//! - `idle`: hold many idle connections and report the daemon's resident memory per connection;
//! - `dispatch`: the cost of one plugin event inside the runtime, without the network;
//! - `reload-latency`, `reload-dispatch`: hot reload as clients and as the runtime see it.
//! - `chat`: chat fan-out with persistence over many visitor/agent sessions.
//! - `rooms`: ICE-candidate relays through many rooms, reporting the rate and latency percentiles.
//! - `ivr`: N concurrent IVR calls in echo mode: frame delay, late frames, CPU and memory per call.
//! - `speech`: N concurrent calls transcribed by a fake Deepgram and spoken to by a fake
//!   ElevenLabs: frame -> vendor and vendor -> caller latency, CPU and memory per call.
//! - `offline-speech`: N concurrent calls transcribed by the offline recogniser (PocketSphinx in
//!   Wasm): utterance end -> final transcript latency, CPU and memory per call; Flite's time to
//!   first audio.
//! - `twilio`: play Twilio against a running daemon: one call (signed webhook, TwiML, Media
//!   Stream with real-time audio, marks, clear, dashboard, status callback), or N concurrent
//!   calls measuring the gateway's frame jitter and losses.
//! - `offline-providers-toml`: the offline providers' config tables, for benchmark scripts.
//!
//! Every figure is printed as `name: value unit` lines; `docs/benchmarks.md` records them.

mod chat;
mod dispatch;
mod ivr;
mod offline;
mod reload;
mod report;
mod rooms;
mod signaling;
mod speech;
mod twilio;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gatewayd-load", about = "Load generator and benchmarks for gatewayd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print an HS256 token with `user_id` that expires after `ttl` seconds.
    Token {
        #[arg(long)]
        secret: String,
        #[arg(long)]
        user_id: i64,
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Play the signaling flow once (agent invites guest, guest accepts; guest invites agent,
    /// agent declines) and print every message. Needs an agent with a single membership.
    Flow(signaling::FlowArgs),
    /// Invite load: `pairs` agent/guest pairs send `rate` invites per second in total.
    Invites(signaling::InviteArgs),
    /// Hold `connections` idle guest connections and report the daemon's memory per connection.
    Idle(signaling::IdleArgs),
    /// Plugin dispatch cost per event, measured inside the runtime.
    Dispatch(dispatch::DispatchArgs),
    /// Hot reload: time from replacing a plugin file to the first event the new build serves.
    ReloadLatency(reload::LatencyArgs),
    /// Dispatch cost before, during and after a reload, measured inside the runtime.
    ReloadDispatch(reload::DispatchArgs),
    /// Chat fan-out: `sessions` visitor/agent sessions, `rate` stored-and-broadcast messages/s.
    Chat(chat::ChatArgs),
    /// Rooms load: ICE-candidate relays in `rooms` rooms of `participants` participants.
    Rooms(rooms::RoomsArgs),
    /// IVR media load: N concurrent echo calls; the largest N with frame delay p99 <= 20 ms
    /// and no late frames.
    Ivr(ivr::IvrArgs),
    /// Speech load: N concurrent calls with live transcription and a spoken reply, against
    /// fake vendors started in this process.
    Speech(speech::SpeechArgs),
    /// Offline speech load: N concurrent calls transcribed by PocketSphinx and spoken to by
    /// Flite, inside the daemon; the largest N whose streams keep up.
    OfflineSpeech(offline::OfflineArgs),
    /// Play Twilio against a running gatewayd: one call by hand or for tests (default), or
    /// `--calls N --secs S` concurrent calls measuring frame jitter and losses.
    Twilio(Box<twilio::TwilioArgs>),
    /// Print `[speech]` and the offline providers' plugin tables (PocketSphinx, Flite) for a
    /// benchmark's daemon config (`loadtool/scripts/twilio.sh` with `TWILIO_BENCH_STT=offline`).
    OfflineProvidersToml {
        /// Directory of `stt-pocketsphinx.wasm` and `tts-flite.wasm`.
        #[arg(long)]
        plugins: std::path::PathBuf,
        /// Directory of the engines' data (`pocketsphinx/`, `flite/`).
        #[arg(long)]
        models: std::path::PathBuf,
        /// TOML lines added to the recogniser's config table.
        #[arg(long, default_value = "")]
        pocketsphinx_config: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Token { secret, user_id, ttl } => {
                let claims =
                    serde_json::json!({"user_id": user_id, "exp": jsonwebtoken::get_current_timestamp() + ttl});
                println!("{}", gatewayd_e2e::token_with(&claims, &secret));
                Ok(())
            }
            Command::Flow(a) => signaling::flow(a).await,
            Command::Invites(a) => signaling::invites(a).await,
            Command::Idle(a) => signaling::idle(a).await,
            Command::Dispatch(a) => dispatch::run(a).await,
            Command::ReloadLatency(a) => reload::latency(a).await,
            Command::ReloadDispatch(a) => reload::dispatch(a).await,
            Command::Chat(a) => chat::run(a).await,
            Command::Rooms(a) => rooms::run(a).await,
            Command::Ivr(a) => ivr::run(a).await,
            Command::Speech(a) => speech::run(a).await,
            Command::OfflineSpeech(a) => offline::run(a).await,
            Command::Twilio(a) => twilio::run(*a).await,
            Command::OfflineProvidersToml { plugins, models, pocketsphinx_config } => {
                print!(
                    "{}",
                    gatewayd_e2e::speech_providers::offline_providers_toml_in(&plugins, &models, &pocketsphinx_config)
                );
                Ok(())
            }
        }
    })
}
