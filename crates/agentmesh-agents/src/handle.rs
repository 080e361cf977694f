//! What each role does with a question: the planner, researcher and orchestrator pass it on
//! (the researcher with notes it found), every other role asks the model through the gateway.

use agentmesh_telemetry::{Span, SpanKind, attr};
use http::StatusCode;

use crate::search::Hit;
use crate::tools::{self, ToolUse};
use crate::{Agent, AgentFailure, AskRequest, AskResponse, MCP_ROLE, NOTES, Onward, Role, Search};

impl Agent {
    /// Answers `req` as this agent's role.
    pub(crate) async fn handle(
        &self,
        req: AskRequest,
        trace: &Span,
        onward: &Onward,
    ) -> Result<AskResponse, AgentFailure> {
        let answer = Answerer {
            me: self.name(),
            trace_id: trace.context().trace_id_hex(),
        };
        match self.cfg.role {
            Role::Planner => self.plan(req, &answer, trace, onward).await,
            Role::Researcher => self.research(req, &answer, trace, onward).await,
            Role::Orchestrator => self.orchestrate(req, &answer, trace, onward).await,
            Role::Executor if self.cfg.upstream(MCP_ROLE).is_some() => {
                self.execute_with_tools(req, &answer, trace, onward).await
            }
            Role::Executor | Role::Writer | Role::Classifier | Role::Validator | Role::Scorer => {
                let text = self.infer(with_context(&req), trace, onward).await?;
                Ok(answer.answer(text, vec!["gateway".into()], Some(self.cfg.model.clone())))
            }
        }
    }

    /// The planner hands the question to the executor as a task.
    async fn plan(
        &self,
        req: AskRequest,
        answer: &Answerer,
        trace: &Span,
        onward: &Onward,
    ) -> Result<AskResponse, AgentFailure> {
        let task = AskRequest {
            question: req.question.clone(),
            context: Some(
                format!(
                    "Task from the planner: answer this question. {}",
                    req.context.unwrap_or_default()
                )
                .trim()
                .to_owned(),
            ),
        };
        let r = self.delegate("executor", &task, trace, onward).await?;
        let mut out = answer.answer(r.answer, r.agents, r.model);
        out.signatures = r.signatures;
        out.delegation = r.delegation;
        out.tools = r.tools;
        Ok(out)
    }

    /// The executor with an MCP server: the tools the question asks for first (see
    /// [`tools`]), then the model with what they returned. The calls and their outcomes,
    /// refusals included, end the answer, so they are signed with it.
    async fn execute_with_tools(
        &self,
        req: AskRequest,
        answer: &Answerer,
        trace: &Span,
        onward: &Onward,
    ) -> Result<AskResponse, AgentFailure> {
        let Some(up) = self.cfg.upstream(MCP_ROLE) else {
            return Err(AgentFailure {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: "bug: no MCP upstream".into(),
                refusal: None,
            });
        };
        let mut uses: Vec<ToolUse> = Vec::new();
        for (n, tool) in tools::tools_for(&req.question).iter().enumerate() {
            let mut span = trace.child(
                format!("call {} tools/call {tool}", up.name),
                SpanKind::Client,
            );
            span.set_str(attr::DESTINATION, &up.name);
            span.set_str("mcp.tool.name", tool);
            let extra = self.onward_headers(up, onward)?;
            let id = u64::try_from(n).unwrap_or(u64::MAX).saturating_add(1);
            let used = tools::call(
                &self.upstreams,
                up,
                id,
                tool,
                &req.question,
                &span.context().header(),
                &extra,
            )
            .await;
            if let Some(i) = &used.intention {
                span.set_str(attr::DECISION, "denied_by_destination");
                span.set_str(attr::INTENTION_ID, i);
            }
            if !used.ok {
                span.set_error(&used.text);
            }
            tracing::info!(server = %up.name, tool = %tool, ok = used.ok, "MCP tool called");
            uses.push(used);
        }
        let lines: Vec<String> = uses.iter().map(ToolUse::line).collect();
        let context = format!(
            "{}\n\nTool results from {}:\n{}",
            req.context.as_deref().unwrap_or_default(),
            up.name,
            lines.join("\n")
        );
        let task = AskRequest {
            question: req.question,
            context: Some(context.trim().to_owned()),
        };
        let text = self.infer(with_context(&task), trace, onward).await?;
        let text = format!(
            "{}\n\nTools on {}:\n{}",
            text.trim_end(),
            up.name,
            lines.join("\n")
        );
        let mut out = answer.answer(
            text,
            vec![up.name.clone(), "gateway".into()],
            Some(self.cfg.model.clone()),
        );
        out.tools = uses;
        Ok(out)
    }

    /// The researcher looks the question up and hands it to the writer with what it found,
    /// answering with those sources.
    async fn research(
        &self,
        req: AskRequest,
        answer: &Answerer,
        trace: &Span,
        onward: &Onward,
    ) -> Result<AskResponse, AgentFailure> {
        let hits = self.find_notes(&req.question).await?;
        let task = AskRequest {
            question: req.question.clone(),
            context: Some(research_notes(&hits)),
        };
        let r = self.delegate("writer", &task, trace, onward).await?;
        let mut out = answer.answer(r.answer, r.agents, r.model);
        out.sources = hits;
        out.signatures = r.signatures;
        out.delegation = r.delegation;
        Ok(out)
    }

    /// The configured search's hits; an offline search that finds nothing usable is no
    /// error (the writer is told so), a web search that fails is.
    async fn find_notes(&self, question: &str) -> Result<Vec<Hit>, AgentFailure> {
        Ok(match &self.search {
            Some(Search::Offline(s)) => s.search(question, NOTES).unwrap_or_default(),
            Some(Search::Tavily(t)) => {
                t.search(question, NOTES).await.map_err(|e| AgentFailure {
                    status: StatusCode::BAD_GATEWAY,
                    message: e.to_string(),
                    refusal: None,
                })?
            }
            None => Vec::new(),
        })
    }

    /// The orchestrator runs the event through the classifier, validator and scorer in turn,
    /// each seeing the findings before it, and reports all three.
    async fn orchestrate(
        &self,
        req: AskRequest,
        answer: &Answerer,
        trace: &Span,
        onward: &Onward,
    ) -> Result<AskResponse, AgentFailure> {
        let event = req.question.clone();
        let classified = self
            .delegate(
                "classifier",
                &AskRequest {
                    question: event.clone(),
                    context: None,
                },
                trace,
                onward,
            )
            .await?;
        let validated = self
            .delegate(
                "validator",
                &AskRequest {
                    question: event.clone(),
                    context: Some(format!("Classification: {}", classified.answer)),
                },
                trace,
                onward,
            )
            .await?;
        let scored = self
            .delegate(
                "scorer",
                &AskRequest {
                    question: event,
                    context: Some(format!(
                        "Classification: {}\nValidation: {}",
                        classified.answer, validated.answer
                    )),
                },
                trace,
                onward,
            )
            .await?;
        let report = format!(
            "Classification: {}\nValidation: {}\nScore: {}",
            classified.answer, validated.answer, scored.answer
        );
        let mut agents = classified.agents.clone();
        agents.extend(validated.agents.clone());
        agents.extend(scored.agents.clone());
        let mut signatures = classified.signatures.clone();
        signatures.extend(validated.signatures.clone());
        signatures.extend(scored.signatures.clone());
        let model = scored.model.clone();
        let delegation = scored.delegation.clone();
        let mut parts = Vec::new();
        for r in [classified, validated, scored] {
            parts.extend(r.parts);
            parts.push(r.answer);
        }
        let mut out = answer.answer(report, agents, model);
        out.signatures = signatures;
        out.parts = parts;
        out.delegation = delegation;
        Ok(out)
    }
}

/// Builds this agent's answer: it names itself ahead of the agents after it, under the
/// trace the question came in on.
struct Answerer {
    me: String,
    trace_id: String,
}

impl Answerer {
    fn answer(
        &self,
        answer: String,
        mut agents: Vec<String>,
        model: Option<String>,
    ) -> AskResponse {
        agents.insert(0, self.me.clone());
        AskResponse {
            answer,
            agents,
            trace_id: self.trace_id.clone(),
            model,
            sources: Vec::new(),
            signatures: Vec::new(),
            parts: Vec::new(),
            delegation: Vec::new(),
            tools: Vec::new(),
        }
    }
}

/// The question as the model sees it: the caller's context, if any, after a blank line.
fn with_context(req: &AskRequest) -> String {
    match &req.context {
        Some(c) => format!("{}\n\n{c}", req.question),
        None => req.question.clone(),
    }
}

/// The writer's context: the hits numbered, one line each.
fn research_notes(hits: &[Hit]) -> String {
    if hits.is_empty() {
        "Research notes: nothing in the corpus matched.".to_owned()
    } else {
        let mut n = String::from("Research notes:");
        for (i, h) in hits.iter().enumerate() {
            n.push_str(&format!(
                "\n[{}] {} ({}): {}",
                i + 1,
                h.title,
                h.source,
                h.snippet.replace('\n', " ")
            ));
        }
        n
    }
}
