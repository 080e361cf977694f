//! The OTLP/HTTP receiver for the tracing tests: tests/py/otlp_receiver.py decodes what the
//! mesh exports with the official `opentelemetry-proto` package and writes one JSON line per
//! span. Included with `#[path]` next to mesh.rs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mesh::{PATIENCE, Proc, python};

fn receiver_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/otlp_receiver.py")
}

/// The OTLP receiver process and the JSON lines it writes, one per span.
pub struct Receiver {
    _proc: Proc,
    port: u16,
    spans: PathBuf,
}

impl Receiver {
    /// Starts tests/py/otlp_receiver.py and reads the port it listens on. Fails naming the
    /// missing package when opentelemetry-proto is not installed.
    pub fn start(dir: &Path) -> Self {
        let spans = dir.join("spans.jsonl");
        let mut child = std::process::Command::new(python())
            .arg(receiver_py())
            .arg(&spans)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run otlp_receiver.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(PATIENCE).unwrap_or_default();
        let Some(port) = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!(
                "the OTLP receiver (tests/py/otlp_receiver.py) did not start; it needs the \
                 opentelemetry-proto Python package (scripts/test installs it from \
                 scripts/requirements-test.txt): {}",
                err.trim()
            );
        };
        // Its request log goes nowhere from here on; a full pipe must not block it.
        if let Some(mut e) = child.stderr.take() {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut e, &mut std::io::sink());
            });
        }
        Self {
            _proc: Proc(child),
            port,
            spans,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far, by trace id.
    pub fn traces(&self) -> HashMap<String, Vec<Value>> {
        let mut by_trace: HashMap<String, Vec<Value>> = HashMap::new();
        for line in std::fs::read_to_string(&self.spans)
            .unwrap_or_default()
            .lines()
        {
            let span: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("receiver line is not JSON ({e}): {line}"));
            let trace = span["trace_id"].as_str().unwrap_or_default().to_owned();
            by_trace.entry(trace).or_default().push(span);
        }
        by_trace
    }

    /// The spans of `trace_id` once `done` holds for them, or a failure listing what came.
    pub fn wait_for(
        &self,
        trace_id: &str,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let spans = self.traces().remove(trace_id).unwrap_or_default();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id}: {what} never arrived; its spans: {spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The span of `trace` recorded by `service` with `kind`, or a failure naming what is missing.
pub fn span<'a>(trace: &'a [Value], service: &str, kind: &str) -> &'a Value {
    trace
        .iter()
        .find(|s| s["service_name"] == service && s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span from {service} in the trace: {trace:#?}"))
}

pub fn has(trace: &[Value], service: &str, kind: &str) -> bool {
    trace
        .iter()
        .any(|s| s["service_name"] == service && s["kind"] == kind)
}
