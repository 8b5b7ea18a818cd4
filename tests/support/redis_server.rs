//! A private `redis-server` on a free loopback port, started by the test and stopped when
//! dropped, so tests are isolated and may kill and restart it. A server counts as started
//! only when the one answering on its port is the process the test started (its pid, as
//! `INFO server` gives it): a port another test took between the look for a free port and
//! the start is given up for another.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    append_only: bool,
    tls_port: Option<u16>,
}

impl RedisServer {
    /// Starts a server; panics with install instructions when `redis-server` is missing.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server that writes every command to its append-only file before answering,
    /// so a restart after `kill` keeps everything it acknowledged.
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    fn start_with(append_only: bool) -> Self {
        const TRIES: usize = 10;
        for _ in 0..TRIES {
            match Self::try_start_on(free_port(), append_only) {
                Ok(server) => return server,
                Err(why) => eprintln!("{why}; trying another port"),
            }
        }
        panic!("redis-server did not start on any of {TRIES} free ports");
    }

    /// Starts a server on `port`, or says why it is not the one answering there.
    pub fn try_start_on(port: u16, append_only: bool) -> Result<Self, String> {
        let dir =
            std::env::temp_dir().join(format!("jobqueue-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a directory for redis-server");
        let mut server = Self {
            port,
            dir,
            child: None,
            append_only,
            tls_port: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// The pid of the server process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts a server that also takes TLS connections, with a certificate for 127.0.0.1
    /// signed by a CA made for the test; returns the server and the CA certificate (PEM).
    pub fn start_tls() -> (Self, Vec<u8>) {
        let mut server = Self::start();
        let dir = server.dir.clone();
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stderr(Stdio::null())
                .status()
                .expect("run openssl (apt-get install openssl)");
            assert!(status.success(), "openssl {args:?} failed");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=jobqueue test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ]);
        server.tls_port = Some(free_port());
        server.restart();
        let ca = std::fs::read(dir.join("ca.crt")).unwrap();
        (server, ca)
    }

    /// The `rediss://` URL of a server from [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://127.0.0.1:{}/",
            self.tls_port.expect("a TLS server")
        )
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(why) = self.spawn() {
            panic!("{why}");
        }
    }

    /// Starts `redis-server` and waits until it answers on its port, as itself.
    fn spawn(&mut self) -> Result<(), String> {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .args(if self.append_only {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "everysec"]
            })
            .args(
                self.tls_port
                    .map(|port| {
                        vec![
                            "--tls-port".to_owned(),
                            port.to_string(),
                            "--tls-cert-file".to_owned(),
                            "server.crt".to_owned(),
                            "--tls-key-file".to_owned(),
                            "server.key".to_owned(),
                            "--tls-ca-cert-file".to_owned(),
                            "ca.crt".to_owned(),
                            "--tls-auth-clients".to_owned(),
                            "no".to_owned(),
                        ]
                    })
                    .unwrap_or_default(),
            )
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| missing_redis_server(e));
        let port = self.port;
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let refused = |mut child: Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("redis-server on port {port}: {why}"))
        };
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "redis-server on port {port} exited ({status}): the port may be taken"
                ));
            }
            let answering = server_pid(port);
            // Ours, and done loading its data (until then PING is refused).
            if answering == Some(pid) && ping(port) {
                break;
            }
            if let Some(other) = answering.filter(|other| *other != pid) {
                return refused(child, format!("another server (pid {other}) answers"));
            }
            if Instant::now() >= deadline {
                return refused(child, "no answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Fails a test that could not start `redis-server`, saying how to install it.
pub fn missing_redis_server(e: std::io::Error) -> ! {
    panic!(
        "cannot start redis-server ({e}). The tests need a real Redis: install it with \
         `apt-get install redis-server` (or run scripts/test, which does)"
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

/// The pid of the Redis server answering on `port`, if one answers (`INFO server`).
pub fn server_pid(port: u16) -> Option<u32> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    // A bulk reply: `$<length>\r\n<text>\r\n`.
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&reply);
        let (header, body) = text.split_once("\r\n")?;
        let length: usize = header.strip_prefix('$')?.parse().ok()?;
        if body.len() >= length {
            return body[..length]
                .lines()
                .find_map(|line| line.strip_prefix("process_id:"))
                .and_then(|pid| pid.trim().parse().ok());
        }
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
