//! Headless Chromium driven through `chromedriver` (W3C WebDriver over HTTP, spoken with
//! ureq, the engine's own HTTP client), for the tests of the pages the engine serves (`GET /`,
//! `GET /admin`). Debian's `chromium` and `chromium-driver`; `.ci/run` installs both.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long any one wait in a browser test may take.
const WAIT: Duration = Duration::from_secs(20);
/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process, killed on drop.
pub struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts chromedriver on a free port and waits until it is ready.
    pub fn start() -> Result<Driver, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {CHROMEDRIVER}: {e}"))?;
        let driver = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(status) = driver.call("GET", "/status", None) {
                if status["ready"] == true {
                    return Ok(driver);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("chromedriver did not become ready".into())
    }

    /// One WebDriver command; returns its `value`, or the driver's error text.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(WAIT))
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("http://{}{path}", self.addr);
        let answer = match (method, body) {
            ("POST", body) => agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.map(Value::to_string).unwrap_or_default()),
            ("DELETE", _) => agent.delete(&url).call(),
            _ => agent.get(&url).call(),
        };
        let mut answer = answer.map_err(|e| e.to_string())?;
        let status = answer.status();
        let text = answer
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", value["value"]));
        }
        Ok(value["value"].clone())
    }
}

/// One browser window.
pub struct Page<'d> {
    driver: &'d Driver,
    session: String,
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .call("DELETE", &format!("/session/{}", self.session), None);
    }
}

impl<'d> Page<'d> {
    /// Opens a headless Chromium window at `url`.
    pub fn open(driver: &'d Driver, url: &str) -> Result<Page<'d>, String> {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--no-first-run"]
            }
        }}});
        let created = driver.call("POST", "/session", Some(&capabilities))?;
        let session = created["sessionId"]
            .as_str()
            .ok_or("no session id")?
            .to_owned();
        let page = Page { driver, session };
        page.command("url", json!({ "url": url }));
        Ok(page)
    }

    /// One command of this window's session; panics on an error.
    pub fn command(&self, path: &str, body: Value) -> Value {
        self.driver
            .call(
                "POST",
                &format!("/session/{}/{path}", self.session),
                Some(&body),
            )
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"))
    }

    /// Runs `script` in the page with `args`; its return value.
    pub fn script(&self, script: &str, args: Value) -> Value {
        self.command("execute/sync", json!({ "script": script, "args": args }))
    }

    /// The element `css` selects.
    pub fn element(&self, css: &str) -> String {
        let found = self.command("element", json!({"using": "css selector", "value": css}));
        found[ELEMENT].as_str().expect("an element").to_owned()
    }

    /// Sets the value of input `id` (no input events).
    pub fn set(&self, id: &str, value: &str) {
        self.script(
            "document.getElementById(arguments[0]).value = arguments[1];",
            json!([id, value]),
        );
    }

    /// Types into an input as a user would (fires its input events).
    pub fn type_into(&self, id: &str, text: &str) {
        let element = self.element(&format!("#{id}"));
        self.command(&format!("element/{element}/value"), json!({ "text": text }));
    }

    /// Clicks element `id`.
    pub fn click(&self, id: &str) {
        let element = self.element(&format!("#{id}"));
        self.command(&format!("element/{element}/click"), json!({}));
    }

    /// Polls `script` (a boolean expression) until it holds.
    pub fn wait_for(&self, what: &str, script: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if self.script(&format!("return !!({script});"), json!([])) == true {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let page = self.script("return document.body.innerText;", json!([]));
        panic!("timed out waiting for {what}; the page shows: {page}");
    }
}

/// chromedriver, or `None` after saying why it cannot run (outside CI, where a missing
/// browser fails the test `test`).
pub fn driver(test: &str) -> Option<Driver> {
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists() {
        skip(
            test,
            &format!("{CHROMIUM} or {CHROMEDRIVER} is not installed (apt install chromium chromium-driver)"),
        );
        return None;
    }
    Driver::start().map_err(|e| skip(test, &e)).ok()
}

/// Passes without a browser outside CI, saying so where it shows: straight to the
/// process's stderr, which the test harness does not capture (its `eprintln!` capture
/// would hide the skip of a passing test).
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{test} cannot run under CI: {why}");
    }
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}
