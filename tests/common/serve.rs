//! `cloister serve` as a child process, for signal, crash, canary and hygiene tests and for the
//! load bench (`benches/load.rs` includes this file with `#[path]`, so it depends on nothing
//! else in `tests/common`).
#![allow(dead_code)]

/// `cloister serve` as a child process (for signal and crash tests).
pub struct ServeProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub log: Vec<String>,
    /// Log lines after start-up (stderr is read until the process closes it).
    lines: std::sync::mpsc::Receiver<String>,
}

impl ServeProcess {
    /// Starts `cloister serve --config <config>` with `CLOISTER_LOG=<log_filter>` and waits
    /// until it listens.
    pub fn start_with(config: &std::path::Path, log_filter: &str) -> ServeProcess {
        Self::start_customized(config, log_filter, |_| {})
    }

    /// [`Self::start_with`], with `customize` applied to the command before it is spawned.
    pub fn start_customized(
        config: &std::path::Path,
        log_filter: &str,
        customize: impl FnOnce(&mut std::process::Command),
    ) -> ServeProcess {
        use std::io::{BufRead, BufReader};
        // `CLOISTER_BIN`: the binary when the tests run on another machine than the one that
        // built them (benches/gpu-check.sh copies both to the GPU machine).
        let bin = std::env::var_os("CLOISTER_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_cloister").into());
        let mut cmd = std::process::Command::new(bin);
        cmd.env("CLOISTER_LOG", log_filter)
            .args(["serve", "--config"])
            .arg(config)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null());
        customize(&mut cmd);
        let mut child = cmd.spawn().expect("spawn serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut log = Vec::new();
        while std::time::Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
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

    /// Port of the admin listener, read from its start-up log line (bounded wait).
    pub fn admin_port(&mut self) -> u16 {
        let find = |log: &[String]| {
            log.iter().find_map(|l| {
                l.split("admin=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse::<u16>()
                    .ok()
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(port) = find(&self.log) {
                return port;
            }
            if let Ok(line) = self
                .lines
                .recv_timeout(std::time::Duration::from_millis(200))
            {
                self.log.push(line);
            }
        }
        panic!("no admin listener in the log:\n{}", self.log.join("\n"));
    }

    /// Moves the log lines written since the last call into [`Self::log`].
    pub fn drain_log(&mut self) -> &[String] {
        self.log.extend(self.lines.try_iter());
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM, waits for the exit, and returns every log line the server wrote (start-up
    /// lines included).
    pub fn stop_and_collect_log(&mut self) -> (std::process::ExitStatus, Vec<String>) {
        self.signal("TERM");
        let status = self.wait(std::time::Duration::from_secs(30));
        let mut all = std::mem::take(&mut self.log);
        // The reader thread ends (and the channel closes) when the process's stderr closes.
        all.extend(self.lines.iter());
        (status, all)
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the server.
    pub fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Waits for the process to exit (bounded).
    pub fn wait(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
