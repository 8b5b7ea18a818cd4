//! How to reach Redis: the URL (`redis://`, or `rediss://` with TLS), timeouts and the key
//! namespace.

use std::time::Duration;

use redis::{IntoConnectionInfo, ProtocolVersion};

use crate::error::{redact_secrets, redact_url, BrokerError};

/// How to reach Redis and where the keys live. Its `Debug` output hides the URL's password.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`.
    pub url: String,
    /// A prefix for every key (`NAMESPACE:queue:default`), as redis-namespace writes them.
    pub namespace: Option<String>,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// How long to wait for an answer to a command.
    pub response_timeout: Duration,
    /// For `rediss://` URLs: a CA certificate (PEM) to trust instead of the system's trust
    /// store, as for a server with a self-signed certificate.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// Replicas each push waits for, and for how long: see [`RedisConfig::wait_for_replicas`].
    pub wait_for_replicas: Option<(usize, Duration)>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("namespace", &self.namespace)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field(
                "tls_ca_pem",
                &self
                    .tls_ca_pem
                    .as_ref()
                    .map(|pem| format!("{} bytes", pem.len())),
            )
            .field("wait_for_replicas", &self.wait_for_replicas)
            .finish()
    }
}

impl RedisConfig {
    /// The defaults for `url`: no namespace, 5 s to connect, 30 s to answer.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            tls_ca_pem: None,
            wait_for_replicas: None,
        }
    }

    /// Makes every push wait until `replicas` replicas have its writes (Redis `WAIT`), for
    /// at most `timeout`. Replication is asynchronous: without this, a job acknowledged by
    /// the master is lost if the master dies before a replica copies it and the replica
    /// takes over. A push that `timeout` leaves short fails with
    /// [`BrokerError::NotReplicated`]; its jobs are queued on the master all the same.
    pub fn wait_for_replicas(mut self, replicas: usize, timeout: Duration) -> Self {
        self.wait_for_replicas = Some((replicas, timeout));
        self
    }

    /// Trusts the CA certificate `pem` for `rediss://` connections.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Prefixes every key with `namespace:`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }
}

/// A client for the configured URL: `redis://`, or `rediss://` with TLS (user and password,
/// for Redis ACLs, come from the URL either way).
pub(super) fn open_client(
    config: &RedisConfig,
    protocol: ProtocolVersion,
) -> Result<redis::Client, BrokerError> {
    let invalid = |e: redis::RedisError| BrokerError::InvalidUrl {
        url: redact_url(&config.url),
        reason: redact_secrets(&e.to_string(), &config.url),
    };
    let info = config
        .url
        .as_str()
        .into_connection_info()
        .map_err(invalid)?;
    let settings = info.redis_settings().clone().set_protocol(protocol);
    let info = info.set_redis_settings(settings);
    #[cfg(feature = "tls")]
    if config.url.starts_with("rediss://") {
        // rustls needs a crypto provider chosen once per process; another may be installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(pem) = &config.tls_ca_pem {
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            };
            return redis::Client::build_with_tls(info, certs).map_err(invalid);
        }
    }
    redis::Client::open(info).map_err(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_debug_nor_an_invalid_url_error_shows_the_password() {
        let config = RedisConfig::new("redis://ann:hunter2@host:notaport/0");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("redis://ann:***@host:notaport/0"),
            "{debug}"
        );
        let Err(e) = open_client(&config, ProtocolVersion::RESP2) else {
            panic!("a port that is not a number is refused");
        };
        let (shown, debug) = (e.to_string(), format!("{e:?}"));
        assert!(matches!(e, BrokerError::InvalidUrl { .. }), "{debug}");
        assert!(
            !shown.contains("hunter2") && shown.contains("ann:***@host"),
            "{shown}"
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
