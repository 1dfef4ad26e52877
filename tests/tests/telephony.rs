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
    setup_with(db, welcome, tts, "").await
}

/// [`setup`] with `plugin_config` added to `[plugins.twilio.config]`.
async fn setup_with(db: Db, welcome: &str, tts: TtsScript, plugin_config: &str) -> Setup {
    let (dg, eleven, openai) = fakes(DeepgramScript::default(), tts).await;
    let providers = providers(&dg, &eleven, &openai, "");
    let extra = format!("{}\n{}", twilio::toml(welcome, plugin_config), providers.toml);
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
    let params = status_params(&sid, &[("CallStatus", "completed"), ("CallDuration", "7")]);
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
    let mut on_call = Dashboard::open(d, &ada(), &twiml.call_id).await.unwrap();
    let mut stream = MediaStream::open(d, &twiml, &sid).await.unwrap();
    on_call.status("answered").await.unwrap();
    s.dg.wait_until("the call's STT stream", |r| r.accepted >= 1).await;
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
    // Junk media on it is refused and counted; the call goes on, on the second stream.
    for _ in 0..20 {
        second
            .send_json(&json!({"event": "media", "streamSid": second.stream_sid, "media": {"payload": "***"}}))
            .await
            .unwrap();
    }
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

/// A status callback's form for `call_sid` with `fields`.
fn status_params(call_sid: &str, fields: &[(&str, &str)]) -> Vec<(String, String)> {
    [("CallSid", call_sid)].iter().chain(fields).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_lost_without_stop_and_a_failed_call_reach_the_dashboard_as_twilio_errors() {
    let s = setup(Db::Sqlite, "", TtsScript::default()).await;
    let d = &s.d;
    let mut feed = Dashboard::open(d, &ada(), "").await.unwrap();

    // The Media Stream's connection drops (no `stop`, no close frame): TWILIO_ERROR, then ended.
    let sid = call_sid();
    let twiml: Twiml = twilio::incoming_call(d, &sid, CUSTOMER, ACME_NUMBER).await.unwrap();
    let stream = MediaStream::open(d, &twiml, &sid).await.unwrap();
    feed.status("answered").await.unwrap();
    drop(stream);
    let (error, skipped) = feed.until("telephony_error").await.unwrap();
    assert!(!skipped.iter().any(|m| m["status"] == "ended"), "reported before the end: {skipped:?}");
    assert_eq!((&error["error_code"], &error["call_id"]), (&json!("TWILIO_ERROR"), &json!(twiml.call_id)));
    assert!(error["message"].as_str().unwrap().contains("closed without Twilio's stop"), "{error}");
    assert_eq!(feed.status("ended").await.unwrap()["call_id"], json!(twiml.call_id));

    // Twilio's status callback says the call failed, with its error: TWILIO_ERROR carries it,
    // once, however often Twilio retries the callback.
    let sid = call_sid();
    let twiml: Twiml = twilio::incoming_call(d, &sid, CUSTOMER, ACME_NUMBER).await.unwrap();
    let params = status_params(
        &sid,
        &[("CallStatus", "failed"), ("ErrorCode", "31920"), ("ErrorMessage", "Stream - WebSocket - Handshake Error")],
    );
    for _ in 0..2 {
        let answer = twilio::post_signed(d, STATUS_PATH, &params).await.unwrap();
        assert_eq!(answer.status, 204, "{}", answer.body);
    }
    let (error, _) = feed.until("telephony_error").await.unwrap();
    assert_eq!((&error["error_code"], &error["call_id"]), (&json!("TWILIO_ERROR"), &json!(twiml.call_id)));
    assert!(error["message"].as_str().unwrap().contains("31920 Stream - WebSocket - Handshake Error"), "{error}");
    feed.status("ended").await.unwrap();
    // A completed call is no error; nothing more arrives for the failed one.
    let sid = call_sid();
    let completed = twilio::incoming_call(d, &sid, CUSTOMER, ACME_NUMBER).await.unwrap();
    let params = status_params(&sid, &[("CallStatus", "completed")]);
    assert_eq!(twilio::post_signed(d, STATUS_PATH, &params).await.unwrap().status, 204);
    let (_, skipped) = feed.until("call_status_update").await.unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    let (ended, skipped) = feed.until("call_status_update").await.unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!((&ended["status"], &ended["call_id"]), (&json!("ended"), &json!(completed.call_id)));
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

/// The Python interpreter with Twilio's helper library (`make test-setup` installs it).
fn twilio_python() -> String {
    let python = std::env::var("GATEWAYD_TWILIO_PYTHON")
        .unwrap_or_else(|_| "/var/cache/gatewayd-ci/twilio-venv/bin/python".into());
    assert!(
        std::path::Path::new(&python).is_file(),
        "{python} is missing: `make test-setup` installs Twilio's helper library (twilio on PyPI) there"
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilios_own_request_validator_agrees_with_the_daemon() {
    let s = setup(Db::Sqlite, "", TtsScript::default()).await;
    let d = &s.d;
    // Requests signed by Twilio's library: odd characters, an empty value, a query string, the
    // default port written out (Twilio may sign either form).
    let cases: Vec<(String, Vec<(String, String)>)> = vec![
        (VOICE_PATH.into(), twilio::call_params(&call_sid(), CUSTOMER, ACME_NUMBER)),
        (
            format!("{VOICE_PATH}?tenant=acme&x=a%20b"),
            twilio::call_params(&call_sid(), "+1 (555) 010-0000 ünïcødé & <x>", ACME_NUMBER),
        ),
        (
            STATUS_PATH.into(),
            vec![
                ("CallSid".into(), call_sid()),
                ("CallStatus".into(), "ringing".into()),
                ("Empty".into(), String::new()),
            ],
        ),
    ];
    let mut request = Vec::new();
    for (i, (path, params)) in cases.iter().enumerate() {
        let base = if i == 1 { "https://voice.example.test:443" } else { twilio::PUBLIC_BASE };
        let mut tampered: serde_json::Map<String, Value> = params.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        tampered.insert("CallSid".into(), json!("CA00000000000000000000000000000bad"));
        request.push(json!({
            "url": format!("{base}{path}"),
            "params": params.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "tampered": tampered,
            "ours": twilio::sign(path, params),
        }));
    }
    let input = json!({"token": twilio::AUTH_TOKEN, "cases": request}).to_string();
    let mut child = std::process::Command::new(twilio_python())
        .arg(gatewayd_e2e::workspace().join("tests/assets/telephony/twilio_sign.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "twilio_sign.py failed");
    let verdicts: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON from twilio_sign.py");

    for ((path, params), verdict) in cases.iter().zip(&verdicts) {
        assert_eq!(verdict["ours_valid"], true, "Twilio's library accepts the signature we compute for {path}");
        assert_eq!(verdict["tampered_valid"], false, "Twilio's library refuses a changed parameter");
        let signature = verdict["signature"].as_str().unwrap();
        let accepted = twilio::post_form(d, path, params, Some(signature)).await.unwrap();
        assert_ne!(
            accepted.status, 403,
            "the daemon accepts what Twilio's library signed for {path}: {}",
            accepted.body
        );
        let mut tampered = params.clone();
        tampered.iter_mut().find(|(k, _)| k == "CallSid").unwrap().1 = "CA00000000000000000000000000000bad".into();
        let refused = twilio::post_form(d, path, &tampered, Some(signature)).await.unwrap();
        assert_eq!(refused.status, 403, "and refuses it with a changed parameter, as the library does");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_simulator_plays_a_whole_call_against_the_daemon() {
    // The caller talks from the start: with barge-in on it would cut the welcome short.
    let tts = TtsScript { cadence: Duration::ZERO, ..Default::default() };
    let s = setup_with(Db::Sqlite, WELCOME, tts, "barge_in_min_ms = 0").await;
    let d = &s.d;
    let dir = gatewayd_e2e::tempdir::TempDir::new("gatewayd-simulator");
    let out = dir.path().join("heard.wav");
    // A caller speaking: the menu plugin's greeting prompt.
    let wav = gatewayd_e2e::workspace().join("plugins/ivr-menu/prompts/greeting.wav");
    let reply = "We will call you back.";
    let sim = gatewayd_e2e::gatewayd_bin().with_file_name("gatewayd-load");
    let run = tokio::process::Command::new(&sim)
        .args(["twilio", "--base", &format!("http://{}", d.addr), "--public-base-url", twilio::PUBLIC_BASE])
        .args(["--auth-token", twilio::AUTH_TOKEN, "--from", CUSTOMER, "--to", ACME_NUMBER, "--hold-secs", "1"])
        .arg("--wav")
        .arg(&wav)
        .arg("--out")
        .arg(&out)
        .args(["--dashboard-token", &ada(), "--say", reply, "--say-after-ms", "200", "--json"])
        .output();
    let run = tokio::time::timeout(Duration::from_secs(120), run).await.expect("the simulator ends").expect("it runs");
    let summary: Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr))
    });
    assert!(run.status.success() && summary["ok"] == true, "{summary}");
    // It streamed the WAV and the hold, heard the welcome and the reply, echoed their marks.
    assert!(summary["frames_sent"].as_u64().unwrap() > 50, "{summary}");
    assert!(summary["marks_echoed"].as_u64().unwrap() >= 2, "{summary}");
    assert_eq!(summary["status_callback"], 204);
    let dashboard = &summary["dashboard"];
    let said: Vec<&str> =
        dashboard["agent_tts_audio"].as_array().unwrap().iter().filter_map(|a| a["message"].as_str()).collect();
    assert_eq!(said, [WELCOME, reply], "{dashboard}");
    assert!(
        summary["transcripts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["is_final"] == true && t["transcript"] == "utterance 1"),
        "the caller's speech was transcribed: {summary}"
    );
    // What it heard, saved as 8 kHz WAV: both utterances of the fake vendor.
    let heard = hound::WavReader::open(&out).expect("the WAV it heard");
    assert_eq!(heard.spec().sample_rate, 8000);
    assert!(heard.duration() >= 2 * 4000, "two 500 ms utterances at least: {} samples", heard.duration());
    assert_eq!(count(d, "SELECT COUNT(*) FROM phone_calls WHERE status = 'ended'").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_a_dashboard_relays_is_transcribed_like_call_audio() {
    use base64::Engine as _;
    let s = setup(Db::Sqlite, "", TtsScript::default()).await;
    let d = &s.d;
    let sid = call_sid();
    let twiml = twilio::incoming_call(d, &sid, CUSTOMER, ACME_NUMBER).await.unwrap();
    let _stream = MediaStream::open(d, &twiml, &sid).await.unwrap();
    let mut on_call = Dashboard::open(d, &ada(), &twiml.call_id).await.unwrap();
    // Transcription has started once the call's recogniser stream reached the vendor.
    s.dg.wait_until("the call's STT stream", |r| r.accepted >= 1).await;
    // 600 ms of speech-like mu-law, then 400 ms of silence, as the frontend captured them.
    let speech: Vec<u8> = (0..4800).map(|i| 0x10 + (i % 64) as u8).collect();
    let mut relayed = Vec::new();
    for chunk in [&speech[..], &[SILENCE; 3200][..]] {
        let message = json!({"type": "audio_data", "call_id": twiml.call_id, "sample_rate": 8000, "encoding": "MULAW",
                             "audio_data": base64::engine::general_purpose::STANDARD.encode(chunk),
                             "timestamp": "2026-12-03T12:00:00Z"});
        on_call.client.send_json(&message).await.unwrap();
        relayed.extend_from_slice(chunk);
    }
    let (transcript, _) = on_call.until("customer_transcript").await.expect("the relayed audio is transcribed");
    assert_eq!(transcript["transcript"], "utterance 1");
    let record = s.dg.wait_until("the relayed audio", |r| r.audio.len() >= relayed.len()).await;
    assert_eq!(record.audio[..relayed.len()], relayed[..], "the vendor got the relayed mu-law as sent");
    // More than the recogniser's queue holds at once is refused, with the reason.
    let long = base64::engine::general_purpose::STANDARD.encode(vec![0x20u8; 12_000]);
    on_call
        .client
        .send_json(&json!({"type": "audio_data", "call_id": twiml.call_id, "sample_rate": 8000, "encoding": "MULAW", "audio_data": long}))
        .await
        .unwrap();
    let (error, _) = on_call.until("telephony_error").await.unwrap();
    assert_eq!(error["error_code"], "STT_ERROR");
    assert!(error["message"].as_str().unwrap().contains("at most 1000 ms"), "{error}");
}
