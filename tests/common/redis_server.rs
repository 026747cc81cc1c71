//! A private `redis-server` on a free port in a temp dir, for tests that
//! freeze, stop or count the commands of a server (never the shared one).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, send_signal, unique};

pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
    dir: std::path::PathBuf,
    persistence: Vec<String>,
}

impl PrivateRedis {
    /// Without persistence: a restarted server comes back empty.
    pub fn start() -> PrivateRedis {
        PrivateRedis::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// With these persistence options (`--appendonly yes`, ...): a server
    /// restarted after a kill reloads what it persisted in its dir.
    pub fn start_with(persistence: &[&str]) -> PrivateRedis {
        let dir = std::env::temp_dir().join(unique("flashsale-redis-"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = PrivateRedis {
            child: None,
            port: free_port(),
            dir,
            persistence: persistence.iter().map(|a| a.to_string()).collect(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port, and waits until it answers.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(&self.persistence)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server: without persistence its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("server running").id();
        assert!(send_signal(pid, sig), "signal {sig}");
    }

    /// How many times Redis ran `command` (from INFO commandstats).
    pub async fn calls(&self, command: &str) -> u64 {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            send_signal(c.id(), libc::SIGCONT);
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
