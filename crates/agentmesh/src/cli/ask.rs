//! `agentmesh ask "question"`: asks the running mesh through its entry point and prints the
//! answer, who handled it and the trace id.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use serde_json::Value;

use super::DEFAULT_DATA_DIR;
use super::output::TextOrJson;
use super::up::{MeshInfo, agents_path, ask_entry, mesh_file};

/// `agentmesh ask` flags.
#[derive(Debug, Clone, Args)]
pub struct AskArgs {
    /// The question
    pub question: String,
    /// The data dir of the running mesh (`agentmesh up --data-dir`)
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The entry point's URL, instead of finding it through the data dir
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = TextOrJson::Text)]
    pub output: TextOrJson,
}

/// How long a question may take; a real model on CPU is slow, and every hop has its own
/// shorter timeouts that answer first.
const ASK_TIMEOUT: Duration = Duration::from_secs(330);

fn random_hex(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; bytes];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs `agentmesh ask`.
///
/// # Errors
/// No running mesh, an empty question, or the mesh's error answer.
pub async fn run(args: AskArgs) -> anyhow::Result<()> {
    if args.question.trim().is_empty() {
        bail!("the question is empty");
    }
    let (url, via_frontend) = match &args.url {
        Some(u) => (u.trim_end_matches('/').to_owned(), false),
        None => {
            let path = mesh_file(&args.data_dir);
            let text = std::fs::read_to_string(&path).map_err(|_| {
                anyhow!(
                    "no running mesh in {} ({} is missing); start one with `agentmesh up`, or \
                     give --data-dir or --url",
                    args.data_dir.display(),
                    path.display()
                )
            })?;
            let info: MeshInfo = serde_json::from_str(&text)
                .with_context(|| format!("{} is not what `agentmesh up` writes", path.display()))?;
            (info.entry_url, info.entry_kind == "frontend")
        }
    };
    // Start the trace here, so the id printed is the one every hop logs (a frontend starts
    // its own; the answer's trace_id is the one printed).
    let trace_id = random_hex(16);
    let traceparent = format!("00-{trace_id}-{}-01", random_hex(8));
    let ask = |via_frontend| {
        ask_entry(
            &url,
            via_frontend,
            &args.question,
            Some(&traceparent),
            ASK_TIMEOUT,
        )
    };
    let unreachable = |e: anyhow::Error| anyhow!("{e:#}; is `agentmesh up` running?");
    let (mut status, mut body) = ask(via_frontend).await.map_err(unreachable)?;
    // A bare --url does not say whether it is a frontend (a Compose deployment's is); one
    // that answers 401 is, so log in with its dev login, as with --data-dir, and ask again.
    if status == 401 && !via_frontend && args.url.is_some() {
        (status, body) = ask(true).await.map_err(unreachable)?;
    }
    if status != 200 {
        let msg = body
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| body.to_string(), str::to_owned);
        bail!("the mesh answered {status}: {msg} (trace {trace_id})");
    }
    match args.output {
        TextOrJson::Json => super::output::print_json(&body)?,
        TextOrJson::Text => {
            let agents = agents_path(&body);
            println!(
                "{}\n",
                body["answer"].as_str().unwrap_or_default().trim_end()
            );
            println!("handled by: {agents}");
            // A frontend checks each agent's signature on the answer and says so.
            if let Some(list) = body["verified"].as_array().filter(|l| !l.is_empty()) {
                let marks: Vec<String> = list
                    .iter()
                    .map(|v| {
                        let who = v["agent"].as_str().unwrap_or("?");
                        let who = who.rsplit('/').next().unwrap_or(who);
                        if v["ok"].as_bool() == Some(true) {
                            format!("{who} ✓")
                        } else {
                            format!(
                                "{who} ✗ ({})",
                                v["reason"].as_str().unwrap_or("not verified")
                            )
                        }
                    })
                    .collect();
                println!("signed by:  {}", marks.join(", "));
            }
            println!(
                "trace id:   {}",
                body["trace_id"].as_str().unwrap_or(&trace_id)
            );
        }
    }
    Ok(())
}
