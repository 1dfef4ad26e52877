//! `gatewayd-load twilio`: plays Twilio against a running gatewayd (twilio-brief.md).
//!
//! One call (the default, `--calls 1`), for a person trying telephony by hand and for the
//! end-to-end tests:
//! 1. POST the signed incoming-call webhook (`/api/telephony/twilio/voice`; `X-Twilio-Signature`
//!    over `--public-base-url` + path and the form, with `--auth-token`);
//! 2. read the TwiML (`<Connect><Stream url><Parameter/>`; `<Reject/>` ends with an error);
//! 3. with `--dashboard-token`, open the agent dashboard socket for the call, print its events,
//!    and send the `--say` texts as `agent_message`s once the stream started;
//! 4. open the Media Stream (signed over the `ws(s)://` URL alone), send `connected`, `start`,
//!    the `--wav` audio as 20 ms mu-law `media` messages in real time, `--hold-secs` of
//!    silence, then `stop`, and close; echo every `mark` (`--marks`), honour `clear`, keep what
//!    the gateway sent in `--out`;
//! 5. POST the status callback (`completed`, `CallDuration`), print the summary (`--json`).
//!
//! Load mode (`--calls N` with N > 1, or `--secs`): see [`load`].
//!
//! Layout: [`wire`] (ids, forms, TwiML, messages: data only), [`phone`] (Twilio's side of a
//! stream as a state machine: sequence numbers, marks, clears, play-out), [`audio`] (WAV,
//! mu-law, schedule, arrival figures), [`call`] (the sockets of one call), [`dashboard`],
//! [`single`], [`load`].

mod audio;
mod call;
mod dashboard;
#[cfg(test)]
mod fake;
mod load;
mod phone;
mod single;
mod wire;

use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct TwilioArgs {
    /// Where the daemon listens (plain HTTP; the Media Stream and dashboard use the same
    /// host and port).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    base: String,
    /// The URL Twilio would use for the daemon (`[twilio] public_base_url`); webhooks are
    /// signed for it. Default: `--base`.
    #[arg(long)]
    public_base_url: Option<String>,
    /// The Twilio auth token the daemon checks signatures with.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", default_value = wire::DEV_AUTH_TOKEN, hide_env_values = true)]
    auth_token: String,
    /// The caller's number (`From`).
    #[arg(long, default_value = "+15550100001")]
    from: String,
    /// The number called (`To`): a business number, or any with the plugin's `default_business`.
    #[arg(long, default_value = "+15550100002")]
    to: String,
    /// `AccountSid` (default: a new `AC…` id per run).
    #[arg(long)]
    account_sid: Option<String>,
    /// Concurrent calls; more than 1 is load mode.
    #[arg(long, default_value_t = 1)]
    calls: usize,
    /// Load mode: seconds of audio per call (giving it selects load mode even for one call).
    #[arg(long)]
    secs: Option<u64>,
    /// Load mode: the callers send a sine of this many Hz (0: silence).
    #[arg(long, default_value_t = 0)]
    tone_hz: u32,
    /// Load mode: the daemon's process id, for its CPU and memory.
    #[arg(long)]
    pid: Option<u32>,
    /// The caller's audio: a WAV file (any rate, 16-bit or other PCM, channels mixed down); in
    /// load mode every call plays it then `--hold-secs` of silence, over and over.
    #[arg(long)]
    wav: Option<PathBuf>,
    /// Seconds of silence the caller sends after the WAV (or alone, without one).
    #[arg(long, default_value_t = 2.0)]
    hold_secs: f64,
    /// Write what the caller heard (the gateway's `media`) to this WAV file (8 kHz, 16-bit).
    #[arg(long)]
    out: Option<PathBuf>,
    /// When marks are echoed: `received` (all media before the mark has arrived) or `played`
    /// (the audio before it has played at real time; a `clear` echoes the pending ones).
    #[arg(long, value_enum, default_value_t = phone::MarkMode::Received)]
    marks: phone::MarkMode,
    /// Digits the caller presses (`dtmf` messages, one per 20 ms).
    #[arg(long, default_value = "")]
    dtmf: String,
    /// When the first digit is pressed, ms after the stream started.
    #[arg(long, default_value_t = 0)]
    dtmf_after_ms: u64,
    /// An agent token (JWT): open the dashboard socket for the call and print its events.
    #[arg(long)]
    dashboard_token: Option<String>,
    /// A text the agent says (`agent_message` on the dashboard socket); repeatable.
    #[arg(long)]
    say: Vec<String>,
    /// The first `--say` this many ms after the stream started.
    #[arg(long, default_value_t = 1000)]
    say_after_ms: u64,
    /// Each further `--say` this many ms after the one before.
    #[arg(long, default_value_t = 0)]
    say_gap_ms: u64,
    /// Do not send the status callback at the end.
    #[arg(long)]
    no_status_callback: bool,
    /// Print the summary as one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Bound of every wait (an HTTP answer, an upgrade, the dashboard's ready, the close).
    #[arg(long, default_value_t = 10.0)]
    timeout_secs: f64,
}

/// Where progress lines go: stdout, or stderr when stdout carries the JSON summary.
#[derive(Clone, Copy)]
pub struct Log {
    json: bool,
}

impl Log {
    pub fn line(&self, s: &str) {
        if self.json {
            eprintln!("{s}");
        } else {
            println!("{s}");
        }
    }
}

pub async fn run(a: TwilioArgs) -> anyhow::Result<()> {
    let log = Log { json: a.json };
    if !(a.timeout_secs > 0.0 && a.timeout_secs.is_finite()) {
        anyhow::bail!("--timeout-secs must be positive");
    }
    if a.calls == 0 {
        anyhow::bail!("--calls must be at least 1");
    }
    if let Some(d) = a.dtmf.chars().find(|c| !matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')) {
        anyhow::bail!("--dtmf: {d:?} is not a DTMF digit (0-9 * # A-D)");
    }
    let cfg = call::CallConfig {
        endpoints: wire::Endpoints::new(&a.base, a.public_base_url.as_deref())?,
        auth_token: a.auth_token.clone(),
        from: a.from.clone(),
        to: a.to.clone(),
        account_sid: a.account_sid.clone(),
        timeout: std::time::Duration::from_secs_f64(a.timeout_secs),
    };
    if a.calls > 1 || a.secs.is_some() {
        for (set, flag) in [
            (a.out.is_some(), "--out"),
            (a.dashboard_token.is_some(), "--dashboard-token"),
            (!a.say.is_empty(), "--say"),
            (!a.dtmf.is_empty(), "--dtmf"),
        ] {
            if set {
                anyhow::bail!(
                    "{flag} is for one call; load mode (--calls > 1 or --secs) sends silence, --tone-hz or --wav"
                );
            }
        }
        let report = load::run(&a, cfg, log).await?;
        if a.json {
            println!("{report}");
        }
        return Ok(());
    }
    if a.wav.is_none() && a.hold_secs <= 0.0 {
        anyhow::bail!("nothing to send: give --wav or a positive --hold-secs");
    }
    let summary = single::run(&a, cfg, log).await?;
    if a.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print_summary(&summary);
    }
    if let Some(e) = &summary.error {
        anyhow::bail!("{e}");
    }
    Ok(())
}

/// The summary as `name: value` lines (`ok` always; other fields when not null, zero, false
/// or empty; `--json` has them all).
fn print_summary(s: &single::Summary) {
    use serde_json::Value;
    let v = serde_json::to_value(s).unwrap_or_default();
    println!("--- twilio call summary ---");
    for (k, v) in v.as_object().into_iter().flatten() {
        let empty = match v {
            Value::Null | Value::Bool(false) => true,
            Value::Number(n) => n.as_f64() == Some(0.0),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty() || o.values().all(|x| x.as_f64() == Some(0.0)),
            _ => false,
        };
        if k == "ok" || !empty {
            println!("{k}: {v}");
        }
    }
}
