//! `cloister serve` as a child process, for signal and crash tests and for the load bench
//! (`benches/load.rs` includes this file with `#[path]`, so it depends on nothing else in
//! `tests/common`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// A running `cloister serve`; killed (SIGKILL) on drop.
pub struct ServeProcess {
    pub child: Child,
    pub port: u16,
    /// Log lines up to and including the one that reported the address; [`Self::drain_log`]
    /// appends what came after.
    pub log: Vec<String>,
    lines: Receiver<String>,
}

impl ServeProcess {
    /// Starts `cloister serve --config <config>` and waits (bounded) until it listens.
    pub fn start_with(config: &Path) -> ServeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloister"))
            .env("CLOISTER_LOG", "info")
            .args(["serve", "--config"])
            .arg(config)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut log = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                let port = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|rest| rest.trim().rsplit(':').next()?.parse::<u16>().ok());
                log.push(line);
                if let Some(port) = port {
                    return ServeProcess {
                        child,
                        port,
                        log,
                        lines: rx,
                    };
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("server did not report its address:\n{}", log.join("\n"));
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Moves the log lines written since the last call into [`Self::log`].
    pub fn drain_log(&mut self) -> &[String] {
        self.log.extend(self.lines.try_iter());
        &self.log
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the server.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits for the process to exit (bounded).
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
