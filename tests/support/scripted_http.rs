//! A stand-in for a third-party HTTP service that fails on purpose, on loopback.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP server answering each request with the next status of its script (the last one
/// repeats), recording the `Idempotency-Key` header of each.
pub struct ScriptedServer {
    pub url: String,
    pub keys: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve(script: &[u16]) -> ScriptedServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notify", listener.local_addr().unwrap());
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    let script = script.to_vec();
    let seen = keys.clone();
    let task = tokio::spawn(async move {
        let mut served = 0usize;
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request).to_lowercase();
            let key = text
                .lines()
                .find_map(|l| l.strip_prefix("idempotency-key:"))
                .map(|k| k.trim().to_owned())
                .unwrap_or_default();
            seen.lock().unwrap().push(key);
            let status = script[served.min(script.len() - 1)];
            served += 1;
            let reply = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    ScriptedServer { url, keys, task }
}
