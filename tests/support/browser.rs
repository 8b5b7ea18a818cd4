//! A headless Chromium driven through Debian's `chromedriver`, for tests that click through
//! web pages. Screenshots are kept under `target/screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use super::redis_server::free_port;

/// A browser session and the chromedriver process behind it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    shots: PathBuf,
    /// What the session looks at (its screenshots' folder), named in failures.
    name: String,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium session. Fails
    /// loudly when they are missing: `apt-get install chromium chromium-driver`.
    pub async fn start(name: &str) -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is missing: apt-get install chromium chromium-driver (scripts/test does)");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1600"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let attempt = ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await;
            match attempt {
                Ok(client) => break client,
                Err(e) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(30),
                        "no browser session: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("screenshots")
            .join(name);
        std::fs::create_dir_all(&shots).expect("create target/screenshots");
        Self {
            client,
            driver,
            shots,
            name: name.to_owned(),
        }
    }

    /// Opens `url` and returns the page's visible text.
    pub async fn open(&self, url: &str) -> String {
        self.client.goto(url).await.expect("open the page");
        self.text().await
    }

    /// The visible text of the page.
    pub async fn text(&self) -> String {
        self.client
            .find(Locator::Css("body"))
            .await
            .expect("a page body")
            .text()
            .await
            .expect("the page's text")
    }

    /// Waits until the page's text contains `needle` (a click's navigation may still be
    /// under way), and returns the text; panics after 30 s with what the page showed.
    pub async fn wait_for_text(&self, needle: &str) -> String {
        let started = Instant::now();
        loop {
            let text = match self.client.find(Locator::Css("body")).await {
                Ok(body) => body.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(needle) {
                return text;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{}: the page never showed {needle:?}; it shows: {text}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element found by `css`, accepting the confirmation dialog it may open.
    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}` on the page: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking `{css}`: {e}"));
        // Sidekiq asks "Are you sure?" before destructive actions.
        let _ = self.client.accept_alert().await;
    }

    /// Saves a screenshot of the page as `<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("save the screenshot");
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}
