//! A private Redis Cluster on loopback (scripts/cluster.sh: 3 primaries, 3
//! replicas, cluster-node-timeout 1500 ms), for tests that kill its nodes.

use std::process::Command;

use crate::common::{assert_exit, send_signal, unique};

pub struct PrivateCluster {
    pub base: u16,
    state: std::path::PathBuf,
}

fn script(state: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"))
        .args(args)
        .env("FLASHSALE_STATE", state)
        .env("CLUSTER_NODE_TIMEOUT_MS", "1500")
        .output()
        .expect("bash runs")
}

/// Six consecutive ports, and their bus ports (+10000), that nothing holds.
fn free_base() -> u16 {
    loop {
        let base = 20_000 + (rand_u16() % 2_500) * 10;
        let free = (base..base + 6)
            .flat_map(|p| [p, p + 10_000])
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
}

fn rand_u16() -> u16 {
    (uuid::Uuid::new_v4().as_u128() & 0xffff) as u16
}

impl PrivateCluster {
    pub fn start() -> PrivateCluster {
        let state = std::env::temp_dir().join(unique("flashsale-cluster-"));
        std::fs::create_dir_all(&state).unwrap();
        for _ in 0..3 {
            let base = free_base();
            let out = script(&state, &["start", &base.to_string()]);
            if out.status.success() {
                return PrivateCluster { base, state };
            }
            // Another test took a port in between: another base.
            eprintln!("cluster start: {}", String::from_utf8_lossy(&out.stderr));
            script(&state, &["stop", &base.to_string()]);
        }
        panic!("no private cluster could start");
    }

    pub fn ports(&self) -> Vec<u16> {
        (self.base..self.base + 6).collect()
    }

    pub fn nodes(&self) -> Vec<String> {
        self.ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The port of the primary that owns `key`'s slot now, as a live node
    /// sees it.
    pub fn primary_of(&self, key: &str) -> Option<u16> {
        let alive = self
            .ports()
            .into_iter()
            .find(|p| !self.cli(*p, &["ping"]).is_empty())?;
        let slot: u16 = self
            .cli(alive, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .ok()?;
        let nodes = self.cli(alive, &["cluster", "nodes"]);
        nodes.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if !f.get(2)?.contains("master") || f.get(2)?.contains("fail") {
                return None;
            }
            let owns = f[8..].iter().any(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
            });
            let port = f.get(1)?.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            owns.then_some(port)
        })
    }

    /// The slot of `key`.
    pub fn keyslot(&self, key: &str) -> u16 {
        self.cli(self.base, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a slot")
    }

    /// The ports of the primaries that own slots, as the first node sees them.
    pub fn primaries(&self) -> Vec<u16> {
        let nodes = self.cli(self.base, &["cluster", "nodes"]);
        nodes
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let owns = f.get(2)?.contains("master") && f.len() > 8;
                let port = f
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                owns.then_some(port)
            })
            .collect()
    }

    fn id(&self, port: u16) -> String {
        self.cli(port, &["cluster", "myid"]).trim().to_string()
    }

    /// Moves `slot` from the primary on `from` to the one on `to` while it
    /// serves, the way `redis-cli --cluster reshard` moves each slot: the
    /// target imports, the source migrates, the keys go over one at a time
    /// (a pause between them keeps the slot split across both nodes for a
    /// while, the window in which multi-key scripts get ASK and TRYAGAIN),
    /// then both are told the slot's new owner. Returns the keys moved.
    pub fn move_slot(&self, slot: u16, from: u16, to: u16) -> usize {
        let (from_id, to_id) = (self.id(from), self.id(to));
        let slot = slot.to_string();
        let ok = |reply: String| assert_eq!(reply.trim(), "OK", "{reply}");
        ok(self.cli(to, &["cluster", "setslot", &slot, "importing", &from_id]));
        ok(self.cli(from, &["cluster", "setslot", &slot, "migrating", &to_id]));
        let mut moved = 0;
        loop {
            let keys = self.cli(from, &["cluster", "getkeysinslot", &slot, "10"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            for key in keys {
                let to_port = to.to_string();
                let reply = self.cli(from, &["migrate", "127.0.0.1", &to_port, key, "0", "5000"]);
                // NOKEY: a script deleted it since GETKEYSINSLOT.
                assert!(
                    matches!(reply.trim(), "OK" | "NOKEY"),
                    "MIGRATE {key}: {reply}"
                );
                moved += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        ok(self.cli(to, &["cluster", "setslot", &slot, "node", &to_id]));
        ok(self.cli(from, &["cluster", "setslot", &slot, "node", &to_id]));
        for p in self.primaries() {
            if p != from && p != to {
                self.cli(p, &["cluster", "setslot", &slot, "node", &to_id]);
            }
        }
        moved
    }

    /// The port of a replica of the primary on `primary`.
    pub fn replica_of(&self, primary: u16) -> Option<u16> {
        let nodes = self.cli(primary, &["cluster", "nodes"]);
        let id = nodes
            .lines()
            .find(|l| l.contains("myself"))?
            .split_whitespace()
            .next()?
            .to_string();
        nodes.lines().find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(2)?.contains("slave") && *f.get(3)? == id)
                .then(|| {
                    f.get(1)?
                        .split('@')
                        .next()?
                        .rsplit(':')
                        .next()?
                        .parse()
                        .ok()
                })
                .flatten()
        })
    }

    /// SIGKILLs one node: its data is gone.
    pub fn kill(&self, port: u16) {
        let pid = std::fs::read_to_string(
            self.state
                .join(format!("cluster-{}", self.base))
                .join(port.to_string())
                .join("redis.pid"),
        )
        .expect("the node's pid file");
        let pid: u32 = pid.trim().parse().expect("a pid");
        assert!(send_signal(pid, libc::SIGKILL));
    }

    /// Starts a killed node again: it rejoins, as a replica of whoever took over.
    pub fn restart(&self, port: u16) {
        let out = script(
            &self.state,
            &["restart", &self.base.to_string(), &port.to_string()],
        );
        assert_exit(&out, 0);
    }

    /// Whether every slot is served again (`cluster_state:ok` on a live node).
    pub fn healthy(&self) -> bool {
        self.ports().into_iter().any(|p| {
            self.cli(p, &["cluster", "info"])
                .contains("cluster_state:ok")
        })
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        script(&self.state, &["stop", &self.base.to_string()]);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}
