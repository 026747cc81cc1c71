//! A headless Debian Chromium driven through chromedriver's WebDriver HTTP
//! protocol, for the pages' end-to-end tests. The flags keep Chromium off
//! the network (this machine has none beyond loopback).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{free_port, unique};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Installed before any script of every document (a listener a test adds
/// after load would miss what the parse itself broke); kept in session
/// storage, so what a page broke outlives navigating to the next one.
const RECORD_CSP_VIOLATIONS: &str = r#"
window.flashsaleCspWatch = true;
document.addEventListener("securitypolicyviolation", (e) => {
  const seen = JSON.parse(sessionStorage.getItem("flashsale-csp-violations") || "[]");
  seen.push(`${e.effectiveDirective}: ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber} ${e.sample}`);
  sessionStorage.setItem("flashsale-csp-violations", JSON.stringify(seen));
}, true);
"#;

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    pub async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            // Its own process group, with Chromium in it, for `Drop`.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test.sh installs chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let profile = std::env::temp_dir().join(unique("chromium-"));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=390,844",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let deadline = Instant::now() + Duration::from_secs(30);
        let session = loop {
            if let Ok(res) = http
                .post(format!("{base}/session"))
                .json(&caps)
                .send()
                .await
            {
                let v: Value = res.json().await.unwrap_or_default();
                if let Some(id) = v["value"]["sessionId"].as_str() {
                    break id.to_string();
                }
                assert!(Instant::now() < deadline, "no browser session: {v}");
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let browser = Browser {
            driver,
            base,
            session,
            http,
        };
        let installed = browser
            .call(
                reqwest::Method::POST,
                "/goog/cdp/execute",
                Some(json!({"cmd": "Page.addScriptToEvaluateOnNewDocument",
                            "params": {"source": RECORD_CSP_VIOLATIONS}})),
            )
            .await;
        assert!(
            installed["identifier"].is_string(),
            "the CSP watch is not installed: {installed}"
        );
        browser
    }

    /// Fails the test if a page it opened broke its Content-Security-Policy
    /// (an inline script or style, a `style=` attribute...): each screens
    /// test ends with it.
    pub async fn assert_no_csp_violations(&self) {
        let v = self
            .call(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({"args": [], "script":
                    "return [window.flashsaleCspWatch === true, sessionStorage.getItem('flashsale-csp-violations')];"})),
            )
            .await;
        assert_eq!(v[0], true, "the page was not watched for violations: {v}");
        let seen: Vec<String> = match &v[1] {
            Value::Null => Vec::new(),
            Value::String(s) => serde_json::from_str(s).expect("a list of violations"),
            other => panic!("cannot read the violations: {other}"),
        };
        assert!(
            seen.is_empty(),
            "the pages broke their Content-Security-Policy: {seen:#?}"
        );
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn element(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT].as_str().map(String::from)
    }

    pub async fn text(&self, css: &str) -> String {
        match self.element(css).await {
            Some(e) => self
                .call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
                .await
                .as_str()
                .unwrap_or("")
                .to_string(),
            None => String::new(),
        }
    }

    pub async fn click(&self, css: &str) {
        let e = self
            .element(css)
            .await
            .unwrap_or_else(|| panic!("no {css}"));
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Runs a script in the page and returns what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Runs a script in the page.
    pub async fn execute(&self, script: &str) {
        self.eval(script).await;
    }

    /// Waits (up to 10 s) until the element's text satisfies `ok`.
    pub async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.text(css).await;
            if ok(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never matched; last text: {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Browser {
    /// chromedriver does not take its Chromium down when it is killed, so
    /// the whole process group goes: nothing outlives the test.
    fn drop(&mut self) {
        let group = self.driver.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals our own child's group.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}
