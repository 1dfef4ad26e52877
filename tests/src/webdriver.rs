//! A small WebDriver client for the browser tests: Debian's headless `chromium` driven by
//! `chromedriver` over the W3C WebDriver protocol with plain HTTP ([`crate::http_request`]).
//!
//! [`Driver::start`] fails the test when `chromium` or `chromedriver` is missing (`apt-get
//! install chromium chromium-driver`; `make test` installs them). Sessions still open when the
//! [`Driver`] is dropped (a test that failed half-way) are deleted, so no browser outlives it.

use crate::{PATIENCE, free_port, http_request};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Its WebDriver server.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key W3C WebDriver names an element reference with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Flags of every browser: headless, and quiet (no first-run UI, no background requests to
/// Google's services, no component updates) so that only the test's traffic goes out.
const BASE_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
];

/// A WebDriver command the driver refused: its W3C `error` code and message.
#[derive(Debug)]
pub struct WebDriverError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

/// A `chromedriver` process; its sessions are deleted and the process killed on drop.
pub struct Driver {
    child: Child,
    addr: SocketAddr,
    /// Sessions not closed yet.
    sessions: Mutex<Vec<String>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let sessions = std::mem::take(&mut *self.sessions.lock().unwrap_or_else(|e| e.into_inner()));
        for session in sessions {
            delete_session_blocking(self.addr, &session);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DELETE /session/<id>` without an async runtime (for [`Drop`]); errors are ignored.
fn delete_session_blocking(addr: SocketAddr, session: &str) {
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("DELETE /session/{session} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_ok() {
        let _ = s.read_to_end(&mut Vec::new());
    }
}

impl Driver {
    /// Start `chromedriver` on a free loopback port and wait until it is ready.
    pub async fn start() -> Driver {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).is_file(),
                "{bin} is missing: install it with `apt-get install chromium chromium-driver` (`make test` does)"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let driver = Driver { child, addr, sessions: Mutex::new(Vec::new()) };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(r) = http_request(addr, "GET", "/status", None, None).await
                && r.body["value"]["ready"] == true
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready on {addr} in {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A WebDriver command; Err: the driver's error answer.
    pub async fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        let r = http_request(self.addr, method, path, None, body.as_ref())
            .await
            .unwrap_or_else(|e| panic!("webdriver {method} {path}: {e:#}"));
        if r.status == 200 {
            return Ok(r.body["value"].clone());
        }
        let text = |k: &str| r.body["value"][k].as_str().unwrap_or_default().to_string();
        Err(WebDriverError { status: r.status, error: text("error"), message: text("message") })
    }

    /// A WebDriver command that must succeed.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).await.unwrap_or_else(|e| panic!("webdriver {method} {path}: {e:?}"))
    }

    /// A new headless Chromium with its own profile directory, the common flags and `extra_args`.
    pub async fn browser(&self, profile: &Path, extra_args: &[&str]) -> Page<'_> {
        let args = BASE_ARGS
            .iter()
            .chain(extra_args)
            .map(|a| a.to_string())
            .chain([format!("--user-data-dir={}", profile.display())])
            .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let v = self.call("POST", "/session", Some(caps)).await;
        let session = v["sessionId"].as_str().expect("sessionId").to_string();
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).push(session.clone());
        Page { driver: self, session }
    }
}

/// One browser session.
pub struct Page<'a> {
    driver: &'a Driver,
    session: String,
}

impl Page<'_> {
    fn path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Load `url` (returns once the page has loaded).
    pub async fn goto(&self, url: &str) {
        self.driver.call("POST", &self.path("/url"), Some(json!({"url": url}))).await;
    }

    /// Run `script` (a function body; `arguments` are `args`) and return what it returns.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.driver.call("POST", &self.path("/execute/sync"), Some(json!({"script": script, "args": args}))).await
    }

    /// Run `script` until `done` accepts what it returns; fails after [`PATIENCE`] naming `what`
    /// and showing the last value.
    pub async fn wait_for<T>(&self, what: &str, script: &str, done: impl Fn(&Value) -> Option<T>) -> T {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.run(script, json!([])).await;
            if let Some(t) = done(&v) {
                return t;
            }
            assert!(Instant::now() < deadline, "no {what} within {PATIENCE:?}; the page shows: {v:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The reference of the element matching the CSS selector `css`; Err: none (or a driver
    /// error).
    async fn find(&self, css: &str) -> Result<String, WebDriverError> {
        let v = self
            .driver
            .try_call("POST", &self.path("/element"), Some(json!({"using": "css selector", "value": css})))
            .await?;
        Ok(v[ELEMENT].as_str().unwrap_or_else(|| panic!("an element reference for `{css}`: {v}")).to_string())
    }

    /// Do `action` on the element matching `css` as a user would, retrying while it does not
    /// exist yet or was replaced between finding and acting (a page re-rendering a list); fails
    /// after [`PATIENCE`].
    async fn act(&self, css: &str, action: &str, body: Value) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let result = match self.find(css).await {
                Ok(element) => {
                    self.driver
                        .try_call("POST", &self.path(&format!("/element/{element}/{action}")), Some(body.clone()))
                        .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => return,
                Err(e) if matches!(e.error.as_str(), "no such element" | "stale element reference") => {
                    assert!(Instant::now() < deadline, "could not {action} `{css}` within {PATIENCE:?}: {e:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{action} `{css}`: {e:?}"),
            }
        }
    }

    /// Click the element matching `css`.
    pub async fn click(&self, css: &str) {
        self.act(css, "click", json!({})).await;
    }

    /// Type `text` into the element matching `css` (keystrokes, as a user would).
    pub async fn type_text(&self, css: &str, text: &str) {
        self.act(css, "value", json!({"text": text})).await;
    }

    /// End the session (the browser quits).
    pub async fn close(self) {
        self.driver.call("DELETE", &self.path(""), None).await;
        self.driver.sessions.lock().unwrap_or_else(|e| e.into_inner()).retain(|s| *s != self.session);
    }
}
