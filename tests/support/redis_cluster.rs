//! A private Redis Cluster on loopback: three masters with one replica each, from
//! `redis-server --cluster-enabled yes`, joined by `redis-cli --cluster create`, stopped when
//! dropped. Tests may kill a master (its replica takes over) and move slots between masters.
//! When a test fails, the end of every node's log is printed with it.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::redis_server::{free_port, missing_redis_server};

pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
    /// How long a node may go unanswered before the others count it failed.
    node_timeout: Duration,
}

struct Node {
    port: u16,
    bus: u16,
    child: Option<Child>,
}

impl RedisCluster {
    /// Starts six nodes and joins them as three masters with a replica each; returns once
    /// every node sees all slots served and every replica is in sync. A node is counted
    /// failed after 5 s unanswered, so that a busy machine's stalls (parallel tests, a
    /// browser) are not taken for failures and do not start failovers.
    pub fn start() -> Self {
        Self::start_with(1, Duration::from_secs(5))
    }

    /// Starts three masters with `replicas` replicas each; a node unanswered for
    /// `node_timeout` is counted failed (a failover test keeps it short).
    pub fn start_with(replicas: usize, node_timeout: Duration) -> Self {
        // Named by a count, not a port: a port freed by one test may be handed to another,
        // and two clusters sharing a directory would delete each other's files.
        static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
        let n = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("jobqueue-cluster-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a directory for the cluster");
        let mut cluster = Self {
            dir,
            nodes: Vec::new(),
            node_timeout,
        };
        for _ in 0..3 * (1 + replicas) {
            let node = Node {
                port: free_port(),
                bus: free_port(),
                child: None,
            };
            cluster.nodes.push(node);
            let i = cluster.nodes.len() - 1;
            cluster.spawn(i);
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = redis_cli(
            ["--cluster", "create"]
                .into_iter()
                .map(str::to_owned)
                .chain(addresses)
                .chain([
                    "--cluster-replicas".to_owned(),
                    replicas.to_string(),
                    "--cluster-yes".to_owned(),
                ]),
        );
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_until_healthy();
        cluster
    }

    /// The seed nodes, as `ClusterBroker::connect` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports of the nodes that are masters now, with their node ids.
    pub fn masters(&self) -> Vec<(u16, String)> {
        let lines = self.cluster_nodes();
        lines
            .iter()
            .filter(|l| l[2].contains("master") && !l[2].contains("fail"))
            .map(|l| (port_of(&l[1]), l[0].clone()))
            .collect()
    }

    /// How many slots the node `id` serves.
    pub fn slot_count(&self, id: &str) -> usize {
        self.cluster_nodes()
            .iter()
            .filter(|l| l[0] == id)
            .flat_map(|l| l[8..].to_vec())
            .filter(|range| !range.starts_with('['))
            .map(|range| match range.split_once('-') {
                Some((a, b)) => {
                    b.parse::<usize>().unwrap_or(0) + 1 - a.parse::<usize>().unwrap_or(0)
                }
                None => 1,
            })
            .sum()
    }

    /// The number of keys each master holds, by port.
    pub fn keys_per_master(&self) -> Vec<(u16, u64)> {
        self.masters()
            .into_iter()
            .map(|(port, _)| {
                let size = cli(port, &["DBSIZE"]);
                (port, size.trim().parse().unwrap_or(0))
            })
            .collect()
    }

    /// The port of the master serving the slot of `key` (a hash tag such as `{jobqueue}`
    /// names its keys' slot).
    pub fn master_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        let slot: usize = cli(port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        self.cluster_nodes()
            .iter()
            .filter(|l| l[2].contains("master") && !l[2].contains("fail"))
            .find(|l| {
                l[8..].iter().filter(|r| !r.starts_with('[')).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    let (a, b) = (a.parse().unwrap_or(1), b.parse().unwrap_or(0));
                    (a..=b).contains(&slot)
                })
            })
            .map(|l| port_of(&l[1]))
            .expect("a master serves every slot")
    }

    /// The hash slot of `key`.
    pub fn slot_of(&self, key: &str) -> u16 {
        cli(self.live_ports()[0], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// Starts moving `slot` from the master on `from` to the master on `to`, as
    /// `redis-cli --cluster reshard` does: the target imports it, the source migrates it.
    /// Until [`RedisCluster::end_migration`], the source answers `ASK` for its keys that
    /// have moved, and the target serves them to clients that send `ASKING`.
    pub fn begin_migration(&self, slot: u16, from: u16, to: u16) {
        let (from_id, to_id) = (self.id_of(from), self.id_of(to));
        let slot = slot.to_string();
        let reply = cli(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        assert!(reply.contains("OK"), "IMPORTING refused: {reply}");
        let reply = cli(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        assert!(reply.contains("OK"), "MIGRATING refused: {reply}");
    }

    /// Moves every key of `slot` from the master on `from` to the master on `to`
    /// (`MIGRATE`), while the slot is migrating; returns how many moved.
    pub fn migrate_keys(&self, slot: u16, from: u16, to: u16) -> usize {
        let mut moved = 0;
        loop {
            let keys = cli(
                from,
                &["CLUSTER", "GETKEYSINSLOT", &slot.to_string(), "100"],
            );
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                return moved;
            }
            let to_port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().copied());
            let reply = cli(from, &args);
            assert!(
                reply.contains("OK") || reply.contains("NOKEY"),
                "MIGRATE: {reply}"
            );
            moved += keys.len();
        }
    }

    /// Ends the move of `slot` to the master on `to`: every master learns its new owner,
    /// and the source answers `MOVED` for it from then on.
    pub fn end_migration(&self, slot: u16, to: u16) {
        let to_id = self.id_of(to);
        let slot = slot.to_string();
        let mut ports: Vec<u16> = vec![to];
        ports.extend(
            self.masters()
                .into_iter()
                .map(|(p, _)| p)
                .filter(|p| *p != to),
        );
        for port in ports {
            let reply = cli(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            assert!(
                reply.contains("OK"),
                "SETSLOT NODE refused by {port}: {reply}"
            );
        }
    }

    fn id_of(&self, port: u16) -> String {
        self.masters()
            .into_iter()
            .find(|(p, _)| *p == port)
            .map(|(_, id)| id)
            .expect("a master of this cluster")
    }

    /// The keys matching `pattern` on every live master, each with the master's port.
    pub fn keys(&self, pattern: &str) -> Vec<(u16, String)> {
        let mut keys = Vec::new();
        for (port, _) in self.masters() {
            keys.extend(
                cli(port, &["KEYS", pattern])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| (port, l.to_owned())),
            );
        }
        keys
    }

    /// How many times the node on `port` has answered with the error `code` (`MOVED`,
    /// `ASK`, `TRYAGAIN`, ...) since it started, from `INFO errorstats`.
    pub fn errors(&self, port: u16, code: &str) -> u64 {
        let stats = cli(port, &["INFO", "errorstats"]);
        let prefix = format!("errorstat_{code}:count=");
        stats
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
            .and_then(|n| n.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// One command to the node on `port`, through `redis-cli`; its output (empty on failure).
    pub fn command(&self, port: u16, args: &[&str]) -> String {
        cli(port, args)
    }

    /// Commands each live master has run since it started (`INFO commandstats` summed).
    pub fn commands_per_master(&self) -> Vec<(u16, u64)> {
        self.masters()
            .into_iter()
            .map(|(port, _)| {
                let stats = cli(port, &["INFO", "commandstats"]);
                let calls = stats
                    .lines()
                    .filter_map(|l| l.split("calls=").nth(1))
                    .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
                    .sum();
                (port, calls)
            })
            .collect()
    }

    /// Kills the master on `port` at once (SIGKILL); its replica takes over after the node
    /// timeout. Returns once the cluster serves every slot again.
    pub fn kill_master(&mut self, port: u16) {
        let victim = self.kill_node(port);
        self.wait_taken_over(&victim);
    }

    /// Kills the master on `port` at once (SIGKILL) and returns its node id, without
    /// waiting for the failover (see [`RedisCluster::wait_taken_over`]).
    pub fn kill_node(&mut self, port: u16) -> String {
        let victim = self
            .masters()
            .into_iter()
            .find(|(p, _)| *p == port)
            .map(|(_, id)| id)
            .expect("a master of this cluster");
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        victim
    }

    /// Returns once the killed master `victim` (a node id) is marked failed, a replica
    /// serves its slots, and every live node sees the cluster healthy.
    pub fn wait_taken_over(&self, victim: &str) {
        // Until the others have marked it failed (not merely suspected, `fail?`) and
        // promoted its replica, the cluster still reports itself healthy.
        self.wait_for(Duration::from_secs(60), "a replica to take over", |c| {
            let failed = c
                .cluster_nodes()
                .iter()
                .any(|l| l[0] == victim && l[2].split(',').any(|flag| flag == "fail"));
            failed
                && c.masters().len() == 3
                && c.live_ports()
                    .into_iter()
                    .all(|p| cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
    }

    /// Has a replica of the master on `port` take its place, as an operator's
    /// `CLUSTER FAILOVER` does for maintenance: the old master stays up and becomes a
    /// replica. Returns the new master's port once every node agrees.
    pub fn fail_over(&self, port: u16) -> u16 {
        let (_, id) = self
            .masters()
            .into_iter()
            .find(|(p, _)| *p == port)
            .expect("a master of this cluster");
        let replica = self
            .cluster_nodes()
            .iter()
            .find(|l| l[3] == id && l[2].contains("slave"))
            .map(|l| port_of(&l[1]))
            .expect("a replica of that master");
        let reply = cli(replica, &["CLUSTER", "FAILOVER"]);
        assert!(reply.contains("OK"), "CLUSTER FAILOVER refused: {reply}");
        self.wait_for(Duration::from_secs(60), "the replica to take over", |c| {
            let masters: Vec<u16> = c.masters().into_iter().map(|(p, _)| p).collect();
            masters.contains(&replica)
                && !masters.contains(&port)
                && c.live_ports()
                    .into_iter()
                    .all(|p| cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        });
        replica
    }

    /// Starts the node on `port` again, on the same port and configuration file (after
    /// [`RedisCluster::kill_master`]: it rejoins as a replica of the node that replaced it).
    /// Returns once every replica is in sync.
    pub fn restart(&mut self, port: u16) {
        let i = self
            .nodes
            .iter()
            .position(|n| n.port == port)
            .expect("a node of this cluster");
        self.spawn(i);
        self.wait_until_healthy();
    }

    /// Moves `slots` slots from the master on `from` to the master on `to`, keys and all, as
    /// an operator's `redis-cli --cluster reshard` does.
    pub fn reshard(&self, from: &str, to: &str, slots: usize) {
        let seed = format!("127.0.0.1:{}", self.live_ports()[0]);
        let out = redis_cli([
            "--cluster".to_owned(),
            "reshard".to_owned(),
            seed,
            "--cluster-from".to_owned(),
            from.to_owned(),
            "--cluster-to".to_owned(),
            to.to_owned(),
            "--cluster-slots".to_owned(),
            slots.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `CLUSTER NODES` of a live node, split into fields.
    fn cluster_nodes(&self) -> Vec<Vec<String>> {
        let port = self.live_ports()[0];
        cli(port, &["CLUSTER", "NODES"])
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .filter(|f| f.len() >= 8)
            .collect()
    }

    fn wait_until_healthy(&self) {
        self.wait_for(Duration::from_secs(60), "the cluster to be ready", |c| {
            c.live_ports().into_iter().all(|p| {
                let info = cli(p, &["CLUSTER", "INFO"]);
                let replication = cli(p, &["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&format!("cluster_known_nodes:{}", c.nodes.len()))
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            }) && c.masters().len() == 3
        });
    }

    fn wait_for(&self, limit: Duration, what: &str, ready: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        while !ready(self) {
            assert!(
                start.elapsed() < limit,
                "gave up after {limit:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where the node on `port` writes its log.
    fn log_path(&self, port: u16) -> PathBuf {
        self.dir.join(format!("node-{port}.log"))
    }

    /// Prints the end of every node's log (failovers, lost links) beside a failed test's
    /// output.
    fn print_logs(&self) {
        for node in &self.nodes {
            let log = std::fs::read_to_string(self.log_path(node.port)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- the end of cluster node {}'s log ---", node.port);
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
        }
    }

    /// Starts node `i` and waits until it answers. Its ports were free when picked, but a
    /// test starting at the same moment may take them first: then the node fails to bind,
    /// or another test's node answers; either way it starts again on fresh ports.
    fn spawn(&mut self, i: usize) {
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no cluster node could start within 30 s"
            );
            let log = self.log_path(self.nodes[i].port);
            let node = &mut self.nodes[i];
            let mut child = Command::new("redis-server")
                .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-port", &node.bus.to_string()])
                .args(["--cluster-enabled", "yes"])
                .args([
                    "--cluster-config-file",
                    &format!("nodes-{}.conf", node.port),
                ])
                .args([
                    "--cluster-node-timeout",
                    &self.node_timeout.as_millis().to_string(),
                ])
                .arg("--logfile")
                .arg(log)
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| missing_redis_server(e));
            let ours = format!("process_id:{}", child.id());
            let answered = loop {
                if !matches!(child.try_wait(), Ok(None))
                    || start.elapsed() > Duration::from_secs(30)
                {
                    break false;
                }
                if cli(node.port, &["INFO", "server"]).contains(&ours) {
                    break true;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            if answered {
                node.child = Some(child);
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            node.port = free_port();
            node.bus = free_port();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn port_of(address: &str) -> u16 {
    // 127.0.0.1:7000@17000
    address
        .split('@')
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn redis_cli(args: impl IntoIterator<Item = String>) -> Output {
    Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli (apt-get install redis-tools, which redis-server brings)")
}

/// One command through `redis-cli` to the node on `port`; its output, empty on failure.
fn cli(port: u16, args: &[&str]) -> String {
    let out = redis_cli(
        ["-p".to_owned(), port.to_string()]
            .into_iter()
            .chain(args.iter().map(|a| (*a).to_owned())),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
