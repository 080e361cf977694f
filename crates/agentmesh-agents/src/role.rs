//! The built-in roles: what each agent is told to be, and whom it needs to call.

use std::fmt;
use std::str::FromStr;

/// Why a role name is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (known: {known})", known = Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", "))]
pub struct UnknownRole(pub String);

/// A built-in AI agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// planner-executor: the entry point; forwards each question to the executor. It has no route to
    /// the gateway, on purpose.
    Planner,
    /// planner-executor: answers the planner's tasks with the gateway.
    Executor,
    /// research-team: searches, then hands its notes to the writer.
    Researcher,
    /// research-team: writes the answer from the researcher's notes with the gateway.
    Writer,
    /// threat-pipeline: sends a security event to the classifier, the validator and the scorer.
    Orchestrator,
    /// threat-pipeline: names the threat category.
    Classifier,
    /// threat-pipeline: checks the classification against the event.
    Validator,
    /// threat-pipeline: gives the final confidence score.
    Scorer,
}

impl Role {
    /// Every role, in the order the docs list them.
    pub const ALL: [Role; 8] = [
        Role::Planner,
        Role::Executor,
        Role::Researcher,
        Role::Writer,
        Role::Orchestrator,
        Role::Classifier,
        Role::Validator,
        Role::Scorer,
    ];

    /// The name used in configs and scenario files.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Planner => "planner",
            Role::Executor => "executor",
            Role::Researcher => "researcher",
            Role::Writer => "writer",
            Role::Orchestrator => "orchestrator",
            Role::Classifier => "classifier",
            Role::Validator => "validator",
            Role::Scorer => "scorer",
        }
    }

    /// The roles of the upstreams this agent calls (`gateway` is the LLM gateway). A config
    /// must name an upstream for each, so a missing route is found at start, not per request.
    pub fn needs(self) -> &'static [&'static str] {
        match self {
            Role::Planner => &["executor"],
            Role::Researcher => &["writer"],
            Role::Orchestrator => &["classifier", "validator", "scorer"],
            Role::Executor | Role::Writer | Role::Classifier | Role::Validator | Role::Scorer => {
                &["gateway"]
            }
        }
    }

    /// The role prompt: the system message this agent sends with every inference, or for the
    /// agents that do not infer themselves, the instructions they pass on.
    pub fn prompt(self) -> &'static str {
        match self {
            Role::Planner => {
                "You are the planner. Break the user's question into one clear task for the \
                 executor and return the executor's answer unchanged."
            }
            Role::Executor => {
                "You are the executor. Carry out the planner's task and answer the user's \
                 question directly and briefly."
            }
            Role::Researcher => {
                "You are the researcher. Find the passages that bear on the question and pass \
                 them on as numbered notes with their sources."
            }
            Role::Writer => {
                "You are the writer. Using only the research notes, write a short answer to the \
                 question and cite the notes you used by number."
            }
            Role::Orchestrator => {
                "You are the orchestrator of a threat-analysis pipeline. Send the security event \
                 to the classifier, the validator and the scorer, and combine their findings."
            }
            Role::Classifier => {
                "You are the threat classifier. Name the threat category of the security event \
                 (for example phishing, malware, credential stuffing, data exfiltration) and say \
                 why in one sentence."
            }
            Role::Validator => {
                "You are the threat validator. Check the classification against the event and \
                 say whether it holds, with a confidence between 0 and 1."
            }
            Role::Scorer => {
                "You are the confidence scorer. From the event, the classification and the \
                 validation, give a final risk score from 0 to 100 and one line of reasoning."
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_name() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert!(!r.prompt().is_empty());
            assert!(!r.needs().is_empty());
        }
    }

    #[test]
    fn an_unknown_role_lists_the_known_ones() {
        let e = "plannr".parse::<Role>().unwrap_err().to_string();
        assert!(
            e.contains("\"plannr\"") && e.contains("planner, executor"),
            "{e}"
        );
    }

    #[test]
    fn only_the_planner_and_entry_roles_stay_off_the_gateway() {
        for r in [Role::Planner, Role::Researcher, Role::Orchestrator] {
            assert!(!r.needs().contains(&"gateway"), "{r}");
        }
    }
}
