//! Twilio telephony end to end (issue #13, telephony.md): the real daemon with the `twilio`
//! plugin, this test playing Twilio (signed webhooks, a Media Stream in Twilio's JSON framing
//! that echoes marks), agents' dashboard sockets, and the speech providers pointed at the
//! loopback fake vendors (Deepgram live for STT, ElevenLabs mu-law 8 kHz for TTS).
//!
//! The whole call flow on SQLite and PostgreSQL with the rows it leaves, repeated webhooks,
//! signature refusals, tenant isolation, barge-in, marks echoed after a `clear`, and a second
//! stream replacing the first.

use gatewayd_e2e::speech_providers::{assert_no_key_logged, fakes, providers};
use gatewayd_e2e::twilio::{self, Dashboard, MediaStream, STATUS_PATH, Twiml, VOICE_PATH};
use gatewayd_e2e::{Daemon, DaemonOptions, Db, agent_token, http_request};
use gatewayd_fake_vendors::deepgram::{DeepgramFake, DeepgramScript};
use gatewayd_fake_vendors::tts::{TtsFake, TtsScript, TtsVendor};
use serde_json::{Value, json};
use sqlx::{AnyConnection, Connection, Row};
use std::time::Duration;

const WELCOME: &str = "Thanks for calling Acme.";
/// Acme: its number, agent (user 720); Globex: another business, its agent (user 721).
const ACME: &str = "acme";
const ACME_NUMBER: &str = "+15550001111";
const GLOBEX: &str = "globex";
const CUSTOMER: &str = "+15557654321";
/// Mu-law silence.
const SILENCE: u8 = 0xFF;

struct Setup {
    d: Daemon,
    dg: DeepgramFake,
    eleven: TtsFake,
    _openai: TtsFake,
}

/// A daemon on `db` with the twilio plugin (welcome message `welcome`), the fake vendors
/// (`tts` script), and two tenants: Acme (number, agent 720) and Globex (agent 721).
async fn setup(db: Db, welcome: &str, tts: TtsScript) -> Setup {
    let (dg, eleven, openai) = fakes(DeepgramScript::default(), tts).await;
    let providers = providers(&dg, &eleven, &openai, "");
    let extra = format!("{}\n{}", twilio::toml(welcome, ""), providers.toml);
    let d = Daemon::start(DaemonOptions { db, extra_toml: extra, env: providers.env.clone(), ..Default::default() })
        .await
        .expect("daemon");
    std::mem::forget(providers.ca_dir);
    for args in [
        &["tenant", "add-business", ACME, "--name", "Acme"][..],
        &["tenant", "add-business", GLOBEX, "--name", "Globex"],
        &["tenant", "add-number", ACME_NUMBER, "--business", ACME],
        &["tenant", "add-agent", "ada", "--user-id", "720", "--name", "Ada"],
        &["tenant", "add-membership", "--agent", "ada", "--business", ACME],
        &["tenant", "add-agent", "gus", "--user-id", "721", "--name", "Gus"],
        &["tenant", "add-membership", "--agent", "gus", "--business", GLOBEX],
    ] {
        d.cli(args).expect("tenant setup");
    }
    Setup { d, dg, eleven, _openai: openai }
}

fn ada() -> String {
    agent_token(json!(720))
}

fn gus() -> String {
    agent_token(json!(721))
}

fn call_sid() -> String {
    format!("CA{}", uuid::Uuid::new_v4().simple())
}

async fn db(d: &Daemon) -> AnyConnection {
    sqlx::any::install_default_drivers();
    AnyConnection::connect(&d.database_url).await.expect("database")
}

/// `sql` with the plugin's tables named where the daemon keeps them (PostgreSQL: the
/// plugin's own schema).
fn in_schema(d: &Daemon, sql: &str) -> String {
    if d.database_url.starts_with("postgres") {
        sql.replace("phone_calls", "plugin_twilio.phone_calls")
            .replace("phone_call_messages", "plugin_twilio.phone_call_messages")
    } else {
        sql.to_string()
    }
}

async fn count(d: &Daemon, sql: &str) -> i64 {
    let sql = &in_schema(d, sql);
    sqlx::query(sql).fetch_one(&mut db(d).await).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get::<i64, _>(0)
}

/// Where `needle` starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn base64(v: &Value) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("base64 text")).expect("base64")
}

/// Read the stream until the daemon sent a mark (echoed at once, as Twilio does).
async fn play_until_mark(stream: &mut MediaStream) {
    stream.until("mark").await.expect("a mark after the utterance");
}

async fn whole_flow(db_kind: Db) {
    // The vendor sends each utterance at once (faster than real time), so the caller hears it
    // without a gap (a vendor slower than real time leaves silent slots in it).
    let s = setup(db_kind, WELCOME, TtsScript { cadence: Duration::ZERO, ..Default::default() }).await;
    let d = &s.d;
    let mut feed = Dashboard::open(d, &ada(), "").await.expect("Ada's feed");

    // 1. The incoming-call webhook: a row, the feed told, TwiML connecting a stream.
    let sid = call_sid();
    let twiml = twilio::incoming_call(d, &sid, CUSTOMER, ACME_NUMBER).await.expect("TwiML");
    assert_eq!(twiml.stream_url, format!("wss://voice.example.test/api/telephony/twilio/media-stream"));
    let incoming = feed.status("incoming").await.expect("incoming");
    assert_eq!(incoming["call_id"], twiml.call_id.as_str());
    assert_eq!(incoming["customer_number"], CUSTOMER);
    assert_eq!(incoming["organization_number"], ACME_NUMBER);
    assert!(incoming["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{incoming}");

    // Twilio retries a webhook: the same call, nothing new.
    let again = twilio::incoming_call(d, &sid, CUSTOMER, ACME_NUMBER).await.expect("TwiML again");
    assert_eq!(again.call_id, twiml.call_id);
    assert_eq!(count(d, "SELECT COUNT(*) FROM phone_calls").await, 1);

    // 2. The stream starts: answered, the welcome is spoken and confirmed once played.
    let mut stream = MediaStream::open(d, &twiml, &sid).await.expect("stream");
    feed.status("answered").await.expect("answered");
    play_until_mark(&mut stream).await;
    let (welcome, _) = feed.until("agent_tts_audio").await.expect("the welcome confirmed");
    assert_eq!(welcome["message"], WELCOME);
    assert_eq!(welcome["call_id"], twiml.call_id.as_str());
    let welcome_audio = base64(&welcome["audio_data"]);
    assert_eq!(welcome_audio, stream.heard, "agent_tts_audio is the mu-law the phone got");
    assert!(find(&welcome_audio, &TtsVendor::ElevenLabs.payload(10)).is_some(), "the vendor's audio, untouched");

    // 3. The caller speaks: interim and final transcripts reach the dashboard.
    let mut sent = stream.send_audio(25, None).await.unwrap();
    sent.extend(stream.send_audio(25, Some(SILENCE)).await.unwrap());
    let mut transcripts = Vec::new();
    while !transcripts.last().is_some_and(|t: &Value| t["is_final"] == true) {
        transcripts.push(feed.until("customer_transcript").await.expect("transcript").0);
    }
    let last = transcripts.last().unwrap();
    assert_eq!(last["transcript"], "utterance 1");
    assert!(last["confidence"].as_f64().is_some_and(|c| c > 0.9), "{last}");
    assert!(transcripts.len() >= 2 && transcripts[0]["is_final"] == false, "an interim first: {transcripts:?}");
    let record = s.dg.wait_until("the caller's audio", |r| r.audio.len() >= sent.len()).await;
    assert!(record.audio.starts_with(&sent), "the STT vendor got the caller's mu-law byte for byte");

    // 4. An agent types a reply on the call's own socket: spoken, heard, confirmed, stored.
    let mut on_call = Dashboard::open(d, &ada(), &twiml.call_id).await.expect("call socket");
    let reply = "Your order ships tomorrow.";
    on_call
        .client
        .send_json(&json!({"type": "agent_message", "call_id": twiml.call_id, "message": reply,
                           "language": "auto", "timestamp": "2026-12-03T12:00:00Z"}))
        .await
        .unwrap();
    let before = stream.heard.len();
    play_until_mark(&mut stream).await;
    let (confirmed, _) = on_call.until("agent_tts_audio").await.expect("reply confirmed");
    assert_eq!(confirmed["message"], reply);
    assert_eq!(base64(&confirmed["audio_data"]), stream.heard[before..], "what the caller heard of the reply");
    let (fed, _) = feed.until("agent_tts_audio").await.expect("the feed sees the reply too");
    assert_eq!(fed["message"], reply);
    let spoken = s.eleven.wait_until("two requests", |r| r.requests.len() >= 2).await;
    assert!(spoken.requests[1].body.contains(reply), "{:?}", spoken.requests[1].body);

    // 5. Twilio stops the stream, then the status callback comes: ended once.
    stream.stop(&sid).await.unwrap();
    feed.status("ended").await.expect("ended");
    let params = [("CallSid", sid.as_str()), ("CallStatus", "completed"), ("CallDuration", "7")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>();
    let status = twilio::post_signed(d, STATUS_PATH, &params).await.unwrap();
    assert_eq!(status.status, 204, "{}", status.body);

    // The rows telephony.md section 4 asks for.
    let mut conn = db(d).await;
    let call = sqlx::query(&in_schema(
        d,
        "SELECT call_id, call_sid, customer_number, organization_number, status, \
         CAST(start_time AS TEXT), CAST(end_time AS TEXT), duration, tenant_id, business_id FROM phone_calls",
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(call.get::<String, _>(0), twiml.call_id);
    assert_eq!(call.get::<String, _>(1), sid);
    assert_eq!((call.get::<String, _>(2), call.get::<String, _>(3)), (CUSTOMER.into(), ACME_NUMBER.into()));
    assert_eq!(call.get::<String, _>(4), "ended");
    assert!(!call.get::<String, _>(5).is_empty() && !call.get::<String, _>(6).is_empty());
    assert!(call.get::<i64, _>(7) >= 0);
    let tenant: i64 =
        sqlx::query("SELECT tenant_id FROM businesses WHERE id = 'acme'").fetch_one(&mut conn).await.unwrap().get(0);
    assert_eq!(call.get::<i64, _>(8), tenant);
    assert_eq!(call.get::<String, _>(9), ACME);
    let messages = sqlx::query(&in_schema(
        d,
        "SELECT message_type, content, sender_type FROM phone_call_messages WHERE call_id = $1 ORDER BY id",
    ))
    .bind(&twiml.call_id)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let rows: Vec<(String, String, String)> = messages.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        rows,
        [
            ("tts_audio".into(), WELCOME.into(), "agent".into()),
            ("transcript".into(), "utterance 1".into(), "customer".into()),
            ("tts_audio".into(), reply.into(), "agent".into()),
        ],
        "the welcome, the caller's final transcript and the reply"
    );

    // REST: the call and its history, for Ada.
    let calls = http_request(d.addr, "GET", "/api/telephony/calls", Some(&ada()), None).await.unwrap();
    assert_eq!(calls.status, 200, "{:?}", calls.body);
    assert_eq!(calls.body["calls"][0]["call_id"], twiml.call_id.as_str());
    let path = format!("/api/telephony/calls/{}/messages", twiml.call_id);
    let history = http_request(d.addr, "GET", &path, Some(&ada()), None).await.unwrap();
    assert_eq!(history.body["messages"].as_array().map(Vec::len), Some(3), "{:?}", history.body);

    let logs = d.logs();
    assert_no_key_logged(&logs);
    assert!(!logs.join("\n").contains(twilio::AUTH_TOKEN), "the Twilio auth token is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_flows_from_the_webhook_to_transcripts_and_spoken_replies_on_sqlite() {
    whole_flow(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_flows_from_the_webhook_to_transcripts_and_spoken_replies_on_postgres() {
    whole_flow(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_or_wrongly_signed_requests_get_403_and_touch_nothing() {
    let s = setup(Db::Sqlite, "", TtsScript::default()).await;
    let d = &s.d;
    let mut feed = Dashboard::open(d, &ada(), "").await.unwrap();
    let sid = call_sid();
    let params = twilio::call_params(&sid, CUSTOMER, ACME_NUMBER);
    let good = twilio::sign(VOICE_PATH, &params);

    let missing = twilio::post_form(d, VOICE_PATH, &params, None).await.unwrap();
    let wrong_token =
        gatewayd::auth_twilio::signature("another-token", &format!("{}{VOICE_PATH}", twilio::PUBLIC_BASE), &params);
    let wrong = twilio::post_form(d, VOICE_PATH, &params, Some(&wrong_token)).await.unwrap();
    // A captured request replayed with one parameter changed.
    let mut changed = params.clone();
    changed.iter_mut().find(|(k, _)| k == "From").unwrap().1 = "+15550009999".into();
    let replayed = twilio::post_form(d, VOICE_PATH, &changed, Some(&good)).await.unwrap();
    // Signed for another path (the status callback's signature on the voice webhook).
    let other_path =
        twilio::post_form(d, VOICE_PATH, &params, Some(&twilio::sign(STATUS_PATH, &params))).await.unwrap();
    for (what, answer) in [("missing", missing), ("wrong", wrong), ("replayed", replayed), ("other path", other_path)] {
        assert_eq!(answer.status, 403, "{what}: {}", answer.body);
        let body: Value = serde_json::from_str(&answer.body).expect("a JSON body");
        assert_eq!(body["error"], "bad_signature", "{what}");
    }
    assert_eq!(count(d, "SELECT COUNT(*) FROM phone_calls").await, 0, "nothing was created");
    feed.client.expect_silence(Duration::from_millis(300)).await.expect("no dashboard was told");

    // The Media Streams upgrade: refused unsigned or wrongly signed, before any message.
    let twiml = twilio::incoming_call(d, &sid, CUSTOMER, ACME_NUMBER).await.unwrap();
    for signature in ["", "c29tZXRoaW5nIGVsc2U="] {
        let refused = MediaStream::connect(d, &twiml.stream_url, Some(signature)).await.unwrap();
        assert_eq!(refused.err().map(|r| r.status), Some(403), "signature {signature:?}");
    }
    // A signed stream for a call that does not exist is closed (1008) and changes nothing.
    let mut bogus = MediaStream::connect(d, &twiml.stream_url, None).await.unwrap().ok().unwrap();
    bogus.start(&call_sid(), "no-such-call").await.unwrap();
    assert_eq!(bogus.closed().await.unwrap().0, 1008);
    // The status callback is checked too.
    let status = [("CallSid", sid.as_str()), ("CallStatus", "completed")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>();
    assert_eq!(twilio::post_form(d, STATUS_PATH, &status, None).await.unwrap().status, 403);
    assert_eq!(count(d, "SELECT COUNT(*) FROM phone_calls WHERE status = 'ended'").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_another_business_sees_nothing_and_cannot_send() {
    let s = setup(Db::Sqlite, WELCOME, TtsScript::default()).await;
    let d = &s.d;
    let mut globex_feed = Dashboard::open(d, &gus(), "").await.unwrap();
    let sid = call_sid();
    let twiml = twilio::incoming_call(d, &sid, CUSTOMER, ACME_NUMBER).await.unwrap();
    let mut stream = MediaStream::open(d, &twiml, &sid).await.unwrap();
    play_until_mark(&mut stream).await;

    // Gus's feed hears nothing of Acme's call.
    globex_feed.client.expect_silence(Duration::from_millis(500)).await.expect("nothing of Acme's call");
    // Gus cannot follow it: the same answer as for a call that does not exist.
    let url =
        d.ws_url(&format!("/api/ws/telephony/stream?token={}&call_id={}&client_type=telephony", gus(), twiml.call_id));
    let mut follow = gatewayd_e2e::Client::connect(&url).await.unwrap();
    let refused = follow.recv_json().await.unwrap();
    assert_eq!(
        (refused["type"].as_str(), refused["error_code"].as_str()),
        (Some("telephony_error"), Some("CONNECTION_FAILED"))
    );
    assert_eq!(refused["message"], "call not found");
    assert_eq!(follow.recv_close().await.unwrap().0, 1008);
    // Nor speak into it from his feed.
    globex_feed
        .client
        .send_json(&json!({"type": "agent_message", "call_id": twiml.call_id, "message": "hello from Globex"}))
        .await
        .unwrap();
    let error = globex_feed.until("telephony_error").await.unwrap().0;
    assert_eq!(error["message"], "call not found");
    globex_feed
        .client
        .send_json(&json!({"type": "update_call_status", "call_id": twiml.call_id, "status": "ended"}))
        .await
        .unwrap();
    assert_eq!(globex_feed.until("telephony_error").await.unwrap().0["message"], "call not found");
    stream.drain(Duration::from_millis(500)).await.expect("the call goes on");
    assert_eq!(s.eleven.recorded().requests.len(), 1, "only the welcome was spoken");
    // REST neither lists nor shows it.
    let calls = http_request(d.addr, "GET", "/api/telephony/calls", Some(&gus()), None).await.unwrap();
    assert_eq!(calls.body["calls"], json!([]), "{:?}", calls.body);
    let path = format!("/api/telephony/calls/{}/messages", twiml.call_id);
    assert_eq!(http_request(d.addr, "GET", &path, Some(&gus()), None).await.unwrap().status, 404);
    assert_eq!(count(d, "SELECT COUNT(*) FROM phone_calls WHERE status = 'ended'").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_speech_interrupts_a_reply_and_marks_echoed_after_the_clear_are_not_played() {
    // Replies of 4 s, so the caller can talk over one.
    let s = setup(Db::Sqlite, "", TtsScript { chunks: 80, ..Default::default() }).await;
    let d = &s.d;
    let sid = call_sid();
    let twiml = twilio::incoming_call(d, &sid, CUSTOMER, ACME_NUMBER).await.unwrap();
    let mut stream = MediaStream::open(d, &twiml, &sid).await.unwrap();
    let mut on_call = Dashboard::open(d, &ada(), &twiml.call_id).await.unwrap();
    stream.echo_marks = false;
    // A first reply plays out; Twilio has not echoed its mark yet (held).
    let short = "One moment please.";
    on_call
        .client
        .send_json(&json!({"type": "agent_message", "call_id": twiml.call_id, "message": short}))
        .await
        .unwrap();
    stream.until("mark").await.unwrap();
    assert_eq!(stream.pending_marks.len(), 1);
    // The caller talks (600 ms of speech): the daemon sends `clear` at once.
    stream.send_audio(30, None).await.unwrap();
    let clear = stream.until("clear").await.expect("barge-in clears Twilio's buffer");
    assert_eq!(clear["streamSid"], stream.stream_sid.as_str());
    // Twilio returns the marks of a cleared buffer: that reply is not reported as played.
    let late = stream.pending_marks.remove(0);
    stream.echo_mark(&late).await.unwrap();
    let (transcript, skipped) = on_call.until("customer_transcript").await.unwrap();
    assert!(transcript["transcript"].as_str().is_some_and(|t| t.starts_with("utterance")));
    assert!(!skipped.iter().any(|m| m["type"] == "agent_tts_audio"), "{skipped:?}");

    // A reply the caller lets play is confirmed as usual.
    stream.send_audio(25, Some(SILENCE)).await.unwrap();
    stream.echo_marks = true;
    let reply = "Let me check that for you.";
    on_call
        .client
        .send_json(&json!({"type": "agent_message", "call_id": twiml.call_id, "message": reply}))
        .await
        .unwrap();
    play_until_mark(&mut stream).await;
    loop {
        let (m, _) = on_call.until("agent_tts_audio").await.expect("the reply confirmed");
        assert_ne!(m["message"], short, "the interrupted reply is never confirmed");
        if m["message"] == reply {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_for_the_call_replaces_the_first() {
    let s = setup(Db::Sqlite, "", TtsScript::default()).await;
    let d = &s.d;
    let sid = call_sid();
    let twiml: Twiml = twilio::incoming_call(d, &sid, CUSTOMER, ACME_NUMBER).await.unwrap();
    let mut feed = Dashboard::open(d, &ada(), "").await.unwrap();
    let mut first = MediaStream::open(d, &twiml, &sid).await.unwrap();
    feed.status("answered").await.unwrap();
    let mut second = MediaStream::open(d, &twiml, &sid).await.unwrap();
    assert_eq!(first.closed().await.unwrap().0, 1000, "the first stream is closed cleanly");
    // The call goes on, on the second stream.
    feed.client
        .send_json(&json!({"type": "agent_message", "call_id": twiml.call_id, "message": "Still there?"}))
        .await
        .unwrap();
    play_until_mark(&mut second).await;
    let (confirmed, skipped) = feed.until("agent_tts_audio").await.unwrap();
    assert_eq!(confirmed["message"], "Still there?");
    assert!(!skipped.iter().any(|m| m["status"] == "ended"), "the replaced stream did not end the call: {skipped:?}");
    assert!(!second.heard.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_numbers_are_rejected_without_a_default_business() {
    let s = setup(Db::Sqlite, "", TtsScript::default()).await;
    let answer = twilio::post_signed(&s.d, VOICE_PATH, &twilio::call_params(&call_sid(), CUSTOMER, "+15550002222"))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert!(answer.body.contains("<Reject"), "{}", answer.body);
    assert_eq!(count(&s.d, "SELECT COUNT(*) FROM phone_calls").await, 0);
}
