//! Debian's Chromium, headless, driven through ChromeDriver's WebDriver
//! API (plain HTTP and JSON on loopback): load a page, read what a person
//! would see, type, click, take a screenshot. ChromeDriver and the browser
//! it starts run in a process group of their own, under `timeout`, and
//! are ended together by that group's id.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::Method;
use serde_json::{json, Value};

use super::http::send;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Nothing a test starts here lives longer.
const HARD_LIFETIME: &str = "300";

/// A browser session.
pub struct Browser {
    driver: Child,
    base: String,
    _profile: tempfile::TempDir,
}

/// An element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts ChromeDriver and a headless Chromium session, `width` x
    /// `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "chromium and chromium-driver are missing: the README's test command installs them"
        );
        let port = super::free_port();
        let mut command = Command::new("timeout");
        command
            .args(["-s", "KILL", HARD_LIFETIME, CHROMEDRIVER])
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command.spawn().expect("start chromedriver");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !browser.driver_ready().await {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = browser._profile.path().display().to_string();
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={profile}"),
                    format!("--window-size={width},{height}"),
                ],
            },
        } } });
        let session = browser.call(Method::POST, "/session", capabilities).await;
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"));
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    async fn driver_ready(&self) -> bool {
        let url = format!("{}/status", self.base);
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        match client.get(url.parse().unwrap()).await {
            Ok(response) => response.status().is_success(),
            Err(_) => false,
        }
    }

    /// One WebDriver command; its `value`.
    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let body = if method == Method::GET {
            String::new()
        } else {
            body.to_string()
        };
        let headers = [("content-type", "application/json")];
        let reply = send(method, &url, &body, &headers).await;
        let value: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
        assert!(
            reply.status.is_success(),
            "webdriver {path}: {} {value}",
            reply.status
        );
        value["value"].clone()
    }

    /// Loads a page and waits until it is loaded.
    pub async fn open(&self, url: &str) {
        self.call(Method::POST, "/url", json!({ "url": url })).await;
    }

    /// Sets the window's size, as a phone or a laptop.
    pub async fn resize(&self, width: u32, height: u32) {
        let rect = json!({ "width": width, "height": height });
        self.call(Method::POST, "/window/rect", rect).await;
    }

    /// The elements `selector` finds now.
    pub async fn find_all(&self, selector: &str) -> Vec<Element> {
        let query = json!({ "using": "css selector", "value": selector });
        let found = self.call(Method::POST, "/elements", query).await;
        found
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The element `selector` finds; fails the test when there is none.
    pub async fn find(&self, selector: &str) -> Element {
        let mut all = self.find_all(selector).await;
        assert!(!all.is_empty(), "nothing on the page matches {selector}");
        all.remove(0)
    }

    /// The text a person sees in an element (hidden text excluded).
    pub async fn text(&self, element: &Element) -> String {
        let path = format!("/element/{}/text", element.0);
        self.call(Method::GET, &path, Value::Null)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The visible text of the element `selector` finds.
    pub async fn text_of(&self, selector: &str) -> String {
        let element = self.find(selector).await;
        self.text(&element).await
    }

    /// Clicks an element.
    pub async fn click(&self, element: &Element) {
        let path = format!("/element/{}/click", element.0);
        self.call(Method::POST, &path, json!({})).await;
    }

    /// Empties a text field.
    pub async fn clear(&self, element: &Element) {
        let path = format!("/element/{}/clear", element.0);
        self.call(Method::POST, &path, json!({})).await;
    }

    /// Types into an element.
    pub async fn type_into(&self, element: &Element, text: &str) {
        let path = format!("/element/{}/value", element.0);
        self.call(Method::POST, &path, json!({ "text": text }))
            .await;
    }

    /// Runs a script in the page; what it returns.
    pub async fn script(&self, script: &str) -> Value {
        let body = json!({ "script": script, "args": [] });
        self.call(Method::POST, "/execute/sync", body).await
    }

    /// Waits (up to 20 s) until `selector`'s text contains `wanted`; the text.
    pub async fn wait_for_text(&self, selector: &str, wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.find_all(selector).await;
            if let Some(element) = found.first() {
                let text = self.text(element).await;
                if text.contains(wanted) {
                    return text;
                }
                assert!(
                    Instant::now() < deadline,
                    "{selector} never showed {wanted:?}; it shows {text:?}"
                );
            }
            assert!(Instant::now() < deadline, "{selector} never appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.call(Method::GET, "/screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .expect("a base64 PNG")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver's group: timeout, chromedriver and the browser.
        if let Some(group) = rustix::process::Pid::from_raw(self.driver.id() as i32) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.driver.wait();
    }
}
