//! Times one session creation to its first frame: `POST /api/sessions`, then a WebSocket viewer
//! until the first binary frame. Used by `bench/cache-load.sh`.
//!
//! Usage: first_frame HTTP_BASE ADMIN_TOKEN RACE

use std::time::Instant;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, token, race] = &args[..] else {
        return Err("usage: first_frame HTTP_BASE ADMIN_TOKEN RACE".into());
    };
    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{base}/api/sessions"))
        .bearer_auth(token)
        .json(&serde_json::json!({"race": race, "autoplay": false}))
        .send()
        .await?;
    let status = response.status();
    let created: serde_json::Value = response.json().await?;
    if !status.is_success() {
        return Err(format!("create failed: {status} {created}").into());
    }
    let created_ms = started.elapsed().as_secs_f64() * 1e3;
    let ws_url = created["ws_url"].as_str().ok_or("no ws_url")?;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    while let Some(message) = ws.next().await {
        if let Message::Binary(_) = message? {
            let first_ms = started.elapsed().as_secs_f64() * 1e3;
            println!("{created_ms:.0} {first_ms:.0}");
            return Ok(());
        }
    }
    Err("socket closed before a frame".into())
}
