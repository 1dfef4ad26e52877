//! The twilio plugin's agent dashboard (`GET /api/telephony/dashboard`, telephony.md) in a real
//! browser: headless Chromium (Debian's `chromium`, driven by `chromedriver` over WebDriver,
//! [`gatewayd_e2e::webdriver`]) loads the page from the daemon and an agent uses it as a person
//! would, by typing and clicking, while this test plays Twilio (signed webhook, Media Stream)
//! and the speech vendors are the loopback fakes.
//!
//! A simulated call appears in the page's call list, the caller's transcript shows once
//! selected, and a reply typed into the page is spoken by the TTS vendor, heard on the Media
//! Stream and confirmed on the page as played.
//!
//! Then the same with the offline engines of the default config (PocketSphinx and Flite as
//! Wasm providers): a real person's recording (the PocketSphinx distribution's
//! `goforward.raw`, over a phone line) shows as the caller's transcript, and the reply Ada types
//! is spoken by Flite; what the caller heard, recognised by the same engine compiled natively,
//! is the text she typed.
//!
//! Needs `chromium` and `chromium-driver` (`make test` installs them); fails when they are missing.

use gatewayd_e2e::offline;
use gatewayd_e2e::speech_providers::{fakes, offline_providers_toml, providers};
use gatewayd_e2e::twilio::{self, MediaStream};
use gatewayd_e2e::webdriver::{Driver, Page};
use gatewayd_e2e::{Daemon, DaemonOptions, agent_token, tempdir};
use gatewayd_fake_vendors::deepgram::{DeepgramFake, DeepgramScript};
use gatewayd_fake_vendors::tts::{TtsFake, TtsScript, TtsVendor};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

const WELCOME: &str = "Thanks for calling Acme.";
/// Acme: its number and its agent Ada (user 720).
const ACME: &str = "acme";
const ACME_NUMBER: &str = "+15550001111";
const ADA: u64 = 720;
const CUSTOMER: &str = "+15557654321";
/// What the agent types (no character JSON would escape, so the vendor's body contains it as is).
const REPLY: &str = "Your order ships tomorrow.";
/// Mu-law silence.
const SILENCE: u8 = 0xFF;

/// What the page shows, read through its documented hooks (the comment atop dashboard.html).
const SHOWN: &str = r#"
    var all = function (root, css) { return Array.from(root.querySelectorAll(css)); };
    var text = function (root, css) { var e = root.querySelector(css); return e ? e.textContent : null; };
    return {
      state: document.querySelector('#status').dataset.state,
      status: document.querySelector('#status').textContent,
      calls: all(document, '#calls li.call').map(function (li) {
        return { id: li.dataset.callId, status: li.dataset.status, customer: text(li, '.customer'),
                 organization: text(li, '.organization'), selected: li.classList.contains('selected') };
      }),
      selected: document.querySelector('#selected-call').textContent,
      lines: all(document, '#transcript .line').map(function (l) {
        return { kind: l.dataset.kind, text: text(l, '.text'), play: l.querySelector('button.play') !== null };
      }),
      errors: all(document, '#errors .error').map(function (e) { return e.textContent; }),
      reply: document.querySelector('#reply').value
    };
"#;

#[derive(Debug, Deserialize)]
struct Shown {
    /// `#status[data-state]`.
    state: String,
    /// `#status`'s text.
    status: String,
    calls: Vec<CallShown>,
    /// `#selected-call`.
    selected: String,
    /// `#transcript .line`.
    lines: Vec<LineShown>,
    /// `#errors .error`.
    errors: Vec<String>,
    /// `#reply`'s value.
    reply: String,
}

#[derive(Debug, Clone, Deserialize)]
struct CallShown {
    id: String,
    status: String,
    customer: Option<String>,
    organization: Option<String>,
    selected: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct LineShown {
    kind: String,
    text: Option<String>,
    /// Has a button playing what the caller heard.
    play: bool,
}

impl Shown {
    fn call(&self, id: &str) -> Option<&CallShown> {
        self.calls.iter().find(|c| c.id == id)
    }

    fn has_line(&self, kind: &str, text: &str) -> bool {
        self.lines.iter().any(|l| l.kind == kind && l.text.as_deref() == Some(text))
    }
}

fn line(kind: &str, text: &str, play: bool) -> LineShown {
    LineShown { kind: kind.into(), text: Some(text.into()), play }
}

/// What the page shows now.
async fn shown(page: &Page<'_>) -> Shown {
    serde_json::from_value(page.run(SHOWN, json!([])).await).expect("the page's hooks")
}

/// Poll the page (bounded by `PATIENCE`) until `done` accepts what it shows.
async fn wait_shown<T>(page: &Page<'_>, what: &str, done: impl Fn(&Shown) -> Option<T>) -> T {
    page.wait_for(what, SHOWN, |v| done(&serde_json::from_value(v.clone()).expect("the page's hooks"))).await
}

struct Setup {
    d: Daemon,
    _dg: DeepgramFake,
    eleven: TtsFake,
    _openai: TtsFake,
    /// The fakes' CA file, read by the daemon at start.
    _ca_dir: tempdir::TempDir,
}

/// A daemon on SQLite with the twilio plugin and the fake vendors (TTS sent at once, so a
/// reply is heard without a gap), and Acme with its number and agent Ada.
async fn setup() -> Setup {
    let (dg, eleven, openai) =
        fakes(DeepgramScript::default(), TtsScript { cadence: Duration::ZERO, ..Default::default() }).await;
    let providers = providers(&dg, &eleven, &openai, "");
    let extra = format!("{}\n{}", twilio::toml(WELCOME, ""), providers.toml);
    let d = Daemon::start(DaemonOptions { extra_toml: extra, env: providers.env.clone(), ..Default::default() })
        .await
        .expect("daemon");
    add_acme(&d);
    Setup { d, _dg: dg, eleven, _openai: openai, _ca_dir: providers.ca_dir }
}

/// Acme with its number and its agent Ada.
fn add_acme(d: &Daemon) {
    for args in [
        &["tenant", "add-business", ACME, "--name", "Acme"][..],
        &["tenant", "add-number", ACME_NUMBER, "--business", ACME],
        &["tenant", "add-agent", "ada", "--user-id", &ADA.to_string(), "--name", "Ada"],
        &["tenant", "add-membership", "--agent", "ada", "--business", ACME],
    ] {
        d.cli(args).expect("tenant setup");
    }
}

/// Ada opens the dashboard page, types her token and connects.
async fn connect_ada<'a>(driver: &'a Driver, d: &Daemon, profile: &tempdir::TempDir) -> Page<'a> {
    let page = driver.browser(profile.path(), &[]).await;
    page.goto(&format!("http://{}/api/telephony/dashboard", d.addr)).await;
    page.type_text("#token", &agent_token(json!(ADA))).await;
    page.click("#connect").await;
    wait_shown(&page, "a connected feed", |p| (p.state == "connected").then_some(())).await;
    page
}

/// Where `needle` starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_call_and_its_transcript_and_speaks_a_typed_reply_to_the_caller() {
    let s = setup().await;
    let d = &s.d;
    let driver = Driver::start().await;
    let profile = tempdir::TempDir::new("gatewayd-chromium");

    // 1. Ada opens the page, types her token and connects: the feed is up, no call yet.
    let page = connect_ada(&driver, d, &profile).await;
    let first = shown(&page).await;
    assert!(first.calls.is_empty() && first.errors.is_empty(), "{first:?}");

    // 2. A call comes in (Twilio's webhook): it appears in the list with its numbers.
    let sid = format!("CA{}", uuid::Uuid::new_v4().simple());
    let twiml = twilio::incoming_call(d, &sid, CUSTOMER, ACME_NUMBER).await.expect("TwiML");
    let id = twiml.call_id.as_str();
    let listed = wait_shown(&page, "the incoming call in #calls", |p| p.call(id).cloned()).await;
    assert_eq!(listed.customer.as_deref(), Some(CUSTOMER), "{listed:?}");
    assert_eq!(listed.organization, Some(format!("to {ACME_NUMBER}")), "{listed:?}");
    assert!(!listed.selected);

    // Twilio opens the Media Stream: the call is answered and the welcome plays.
    let mut stream = MediaStream::open(d, &twiml, &sid).await.expect("the Media Stream");
    stream.until("mark").await.expect("the welcome played");
    let after_welcome = stream.heard.len();
    wait_shown(&page, "the call answered", |p| p.call(id).is_some_and(|c| c.status == "answered").then_some(())).await;

    // 3. Ada selects it: its history (the welcome, stored) and the welcome's confirmation show.
    page.click(&format!("#calls li.call[data-call-id=\"{id}\"]")).await;
    let welcome = [line("agent", WELCOME, false), line("played", WELCOME, true)];
    wait_shown(&page, "the call selected with its history", |p| {
        (p.selected == id && p.call(id).is_some_and(|c| c.selected) && p.lines == welcome).then_some(())
    })
    .await;

    // 4. The caller speaks: the fake Deepgram's final transcript shows, no interim line left.
    stream.send_audio(25, None).await.expect("speech");
    stream.send_audio(25, Some(SILENCE)).await.expect("silence");
    let lines = wait_shown(&page, "the caller's transcript in #transcript", |p| {
        p.has_line("customer", "utterance 1").then_some(p.lines.clone())
    })
    .await;
    assert_eq!(lines[..2], welcome, "{lines:?}");
    assert_eq!(lines[2..], [line("customer", "utterance 1", false)], "the interim is replaced by the final");

    // 5. Ada types a reply and clicks Send: the page shows it and empties the box.
    page.type_text("#reply", REPLY).await;
    page.click("#send").await;
    wait_shown(&page, "the sent reply in #transcript", |p| {
        (p.has_line("agent", REPLY) && p.reply.is_empty()).then_some(())
    })
    .await;

    // The vendor was asked to speak the typed text, and the caller hears its audio.
    stream.until("mark").await.expect("the reply played to the caller");
    let spoken = s.eleven.wait_until("the reply's request", |r| r.requests.len() >= 2).await;
    assert_eq!(spoken.requests.len(), 2, "the welcome and the reply, nothing else");
    assert!(spoken.requests[1].body.contains(REPLY), "the vendor got the typed text: {}", spoken.requests[1].body);
    let heard = &stream.heard[after_welcome..];
    assert!(
        find(heard, &TtsVendor::ElevenLabs.payload(10)).is_some(),
        "the caller heard the vendor's audio of the reply ({} bytes after the welcome)",
        heard.len()
    );

    // 6. The page confirms the reply played, with a button playing it.
    let whole = [
        line("agent", WELCOME, false),
        line("played", WELCOME, true),
        line("customer", "utterance 1", false),
        line("agent", REPLY, false),
        line("played", REPLY, true),
    ];
    wait_shown(&page, "the reply's played line", |p| (p.lines == whole).then_some(())).await;

    // 7. Twilio ends the stream: the call stays listed as ended.
    stream.stop(&sid).await.expect("stop");
    wait_shown(&page, "the call ended", |p| p.call(id).is_some_and(|c| c.status == "ended").then_some(())).await;
    let last = shown(&page).await;
    assert!(last.errors.is_empty(), "no error on the page: {:?}", last.errors);
    assert_eq!(last.state, "connected", "{}", last.status);
    page.close().await;
}

/// What the caller of the offline test says (the recording's reference text), and so the
/// grammar the recogniser is given (`[plugins.twilio.config] keyterms`) besides other commands.
const CALLER_SAYS: &str = "go forward ten meters";
/// Replies an agent might type: the grammar the caller's side recognises the reply with.
const REPLIES: [&str; 5] = [
    "your order ships tomorrow",
    "an agent will call you back",
    "please hold the line",
    "your balance is twenty dollars",
    "thank you for calling",
];

/// `goforward.raw` of the PocketSphinx source distribution (16 kHz, a person saying
/// [`CALLER_SAYS`]) as a phone line carries it, with 1.2 s of silence after it so the
/// recogniser's endpointer hears the end.
fn caller_speech() -> Vec<u8> {
    let file = offline::test_data().join("goforward.raw");
    let raw = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e} (run `make setup`)", file.display()));
    let samples: Vec<i16> = raw.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    let mut line = offline::phone_line(&samples, 16_000);
    line.extend(std::iter::repeat_n(SILENCE, 60 * twilio::FRAME));
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_offline_engines_a_person_is_transcribed_and_a_typed_reply_is_heard_as_typed() {
    let keyterms = ["go forward ten meters", "go back", "turn left", "turn right", "stop"];
    let twilio_config = format!("keyterms = {}", serde_json::to_string(&keyterms).expect("JSON is TOML here"));
    let extra = format!("{}\n{}", twilio::toml(WELCOME, &twilio_config), offline_providers_toml(""));
    let d = Daemon::start(DaemonOptions { extra_toml: extra, ..Default::default() }).await.expect("daemon");
    add_acme(&d);
    let driver = Driver::start().await;
    let profile = tempdir::TempDir::new("gatewayd-chromium");
    let page = connect_ada(&driver, &d, &profile).await;

    // A call comes in; Twilio opens its Media Stream; Flite speaks the welcome.
    let sid = format!("CA{}", uuid::Uuid::new_v4().simple());
    let twiml = twilio::incoming_call(&d, &sid, CUSTOMER, ACME_NUMBER).await.expect("TwiML");
    let id = twiml.call_id.as_str();
    wait_shown(&page, "the incoming call in #calls", |p| p.call(id).cloned()).await;
    let mut stream = MediaStream::open(&d, &twiml, &sid).await.expect("the Media Stream");
    stream.until("mark").await.expect("the welcome played");
    assert!(stream.heard.len() > 25 * twilio::FRAME, "Flite spoke the welcome: {} bytes", stream.heard.len());
    page.click(&format!("#calls li.call[data-call-id=\"{id}\"]")).await;

    // The caller (a real person's recording) speaks: PocketSphinx's final shows on the page.
    stream.send_mulaw(&caller_speech()).await.expect("the caller's speech");
    wait_shown(&page, "the caller's transcript in #transcript", |p| p.has_line("customer", CALLER_SAYS).then_some(()))
        .await;

    // Ada types a reply: Flite speaks it into the call, and the page confirms it played.
    let reply = REPLIES[0];
    let after_welcome = stream.heard.len();
    page.type_text("#reply", reply).await;
    page.click("#send").await;
    stream.until("mark").await.expect("the reply played to the caller");
    wait_shown(&page, "the reply's played line", |p| p.has_line("played", reply).then_some(())).await;

    // What the caller heard of it, recognised natively with the replies as the grammar.
    let mut heard = stream.heard[after_welcome..].to_vec();
    assert!(heard.len() > 25 * twilio::FRAME, "the caller heard the reply: {} bytes", heard.len());
    heard.extend(std::iter::repeat_n(SILENCE, 60 * twilio::FRAME));
    let replies: Vec<String> = REPLIES.iter().map(|r| r.to_string()).collect();
    assert_eq!(offline::native_finals(&heard, &replies), [reply], "the caller heard what Ada typed");

    stream.stop(&sid).await.expect("stop");
    wait_shown(&page, "the call ended", |p| p.call(id).is_some_and(|c| c.status == "ended").then_some(())).await;
    let last = shown(&page).await;
    assert!(last.errors.is_empty(), "no error on the page: {:?}", last.errors);
    page.close().await;
}
