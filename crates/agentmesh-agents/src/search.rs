//! The researcher's search tool. `offline` ranks sections of a corpus embedded in the binary
//! (the project's own README and ARCHITECTURE), so the research-team scenario works with no
//! network and gives the same notes every time. `tavily` asks Tavily's search API (the search
//! service research-team was specified with) with a key from the environment.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use agentmesh_proto::https::{ClientSettings, HttpClient, webpki_tls};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};

/// One search hit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hit {
    /// The section's title.
    pub title: String,
    /// Where it came from (a file in the repo, or a URL).
    pub source: String,
    /// The start of the section's text.
    pub snippet: String,
}

/// Why a search gave nothing usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// The query has no words worth searching for.
    #[error("the question has no words to search for")]
    EmptyQuery,
    /// Tavily is not usable as configured (no key, a bad URL).
    #[error("tavily: {0}")]
    TavilyConfig(String),
    /// Tavily gave no usable answer.
    #[error("tavily search failed: {0}")]
    Tavily(String),
}

/// Tavily's search API (`POST {url}/search`, `Authorization: Bearer KEY`).
pub struct TavilySearch {
    client: HttpClient,
    uri: Uri,
    key: String,
}

impl std::fmt::Debug for TavilySearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TavilySearch")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// The largest answer read from Tavily; a page of results is a few KiB.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// How long one search may take.
const TAVILY_TIMEOUT: Duration = Duration::from_secs(30);

impl TavilySearch {
    /// A client for `base` (default `https://api.tavily.com`) with `key`.
    ///
    /// # Errors
    /// An empty key or a URL that is not http(s).
    pub fn new(base: Option<&str>, key: String) -> Result<Self, SearchError> {
        if key.trim().is_empty() {
            return Err(SearchError::TavilyConfig("the API key is empty".into()));
        }
        let base = base
            .unwrap_or("https://api.tavily.com")
            .trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(SearchError::TavilyConfig(format!(
                "url {base:?} is not http(s)"
            )));
        }
        let uri: Uri = format!("{base}/search")
            .parse()
            .map_err(|e| SearchError::TavilyConfig(format!("url {base:?}: {e}")))?;
        let tls = webpki_tls().map_err(|e| SearchError::TavilyConfig(e.to_string()))?;
        let settings = ClientSettings {
            http2: true,
            nodelay: true,
            pool_idle: Some(Duration::from_secs(30)),
            ..ClientSettings::new(
                concat!("agentmesh-agents/", env!("CARGO_PKG_VERSION")),
                Duration::from_secs(5),
                MAX_ANSWER_BYTES,
            )
        };
        Ok(Self {
            client: HttpClient::new(tls, settings),
            uri,
            key,
        })
    }

    /// The `limit` best web results for `query`.
    ///
    /// # Errors
    /// Tavily refused, failed, or answered something that is not its result shape.
    pub async fn search(&self, query: &str, limit: usize) -> Result<Vec<Hit>, SearchError> {
        let body = serde_json::json!({ "query": query, "max_results": limit });
        let auth = HeaderValue::from_str(&format!("Bearer {}", self.key)).map_err(|_| {
            SearchError::TavilyConfig("the API key is not a valid header value".into())
        })?;
        let call = self.client.post_json(
            &self.uri,
            vec![(HeaderName::from_static("authorization"), auth)],
            Bytes::from(body.to_string()),
        );
        let (status, bytes) = tokio::time::timeout(TAVILY_TIMEOUT, call)
            .await
            .map_err(|_| SearchError::Tavily(format!("no answer within {TAVILY_TIMEOUT:?}")))?
            .map_err(|e| SearchError::Tavily(e.to_string()))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| SearchError::Tavily(format!("{status}: the answer is not JSON: {e}")))?;
        if !status.is_success() {
            let detail = v
                .pointer("/detail/error")
                .or_else(|| v.get("detail"))
                .or_else(|| v.get("error"))
                .map_or_else(|| status.to_string(), |d| d.to_string());
            return Err(SearchError::Tavily(format!("{status}: {detail}")));
        }
        let results = v["results"]
            .as_array()
            .ok_or_else(|| SearchError::Tavily("the answer has no results list".into()))?;
        Ok(results
            .iter()
            .take(limit)
            .filter_map(|r| {
                Some(Hit {
                    title: r["title"].as_str()?.to_owned(),
                    source: r["url"].as_str()?.to_owned(),
                    snippet: r["content"]
                        .as_str()
                        .unwrap_or_default()
                        .chars()
                        .take(SNIPPET_CHARS)
                        .collect(),
                })
            })
            .collect())
    }
}

/// The documents the offline search knows, as (source, markdown).
const CORPUS: &[(&str, &str)] = &[
    ("README.md", include_str!("../../../README.md")),
    ("ARCHITECTURE.md", include_str!("../../../ARCHITECTURE.md")),
];

/// How much of a section a hit carries.
const SNIPPET_CHARS: usize = 600;

/// Words too common to say anything about a section.
const STOPWORDS: &[&str] = &[
    "the", "and", "for", "with", "that", "this", "what", "how", "does", "are", "is", "was", "its",
    "from", "into", "who", "why", "when", "which", "can", "you", "your", "not", "but", "all",
    "any", "has", "have", "will", "one", "each", "our", "out", "use", "about", "there", "their",
    "they", "them", "then", "than", "also", "more", "only", "over", "some", "such",
];

struct Section {
    title: String,
    source: &'static str,
    text: String,
    terms: HashMap<String, u32>,
}

/// The embedded corpus, split into sections at markdown headings.
pub struct OfflineSearch {
    sections: Vec<Section>,
    /// In how many sections each term appears (for inverse document frequency).
    document_frequency: HashMap<String, u32>,
}

fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '-')
        .map(|w| w.trim_matches('-').to_lowercase())
        .filter(|w| w.chars().count() >= 3 && !STOPWORDS.contains(&w.as_str()))
        .collect()
}

impl Default for OfflineSearch {
    fn default() -> Self {
        Self::new(CORPUS)
    }
}

impl OfflineSearch {
    /// Indexes `docs`, each a (source, markdown) pair.
    pub fn new(docs: &[(&'static str, &str)]) -> Self {
        let mut sections = Vec::new();
        for (source, text) in docs {
            let mut title = (*source).to_owned();
            let mut body = String::new();
            let mut in_code = false;
            let mut flush = |title: &str, body: &mut String| {
                if !body.trim().is_empty() {
                    let text = std::mem::take(body);
                    let mut tf = HashMap::new();
                    for t in terms(&format!("{title} {text}")) {
                        *tf.entry(t).or_insert(0) += 1;
                    }
                    sections.push(Section {
                        title: title.to_owned(),
                        source,
                        text: text.trim().to_owned(),
                        terms: tf,
                    });
                }
                body.clear();
            };
            for line in text.lines() {
                if line.starts_with("```") {
                    in_code = !in_code;
                }
                if !in_code && line.starts_with('#') {
                    flush(&title, &mut body);
                    title = line.trim_start_matches('#').trim().to_owned();
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
            flush(&title, &mut body);
        }
        let mut document_frequency = HashMap::new();
        for s in &sections {
            for t in s.terms.keys() {
                *document_frequency.entry(t.clone()).or_insert(0) += 1;
            }
        }
        Self {
            sections,
            document_frequency,
        }
    }

    /// The `limit` best sections for `query`, best first (TF-IDF over whole words).
    ///
    /// # Errors
    /// The query has no searchable words.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<Hit>, SearchError> {
        let wanted: HashSet<String> = terms(query).into_iter().collect();
        if wanted.is_empty() {
            return Err(SearchError::EmptyQuery);
        }
        let n = self.sections.len() as f64;
        let mut scored: Vec<(f64, usize)> = self
            .sections
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let score: f64 = wanted
                    .iter()
                    .filter_map(|t| {
                        let tf = f64::from(*s.terms.get(t)?);
                        let df = f64::from(self.document_frequency.get(t).copied().unwrap_or(1));
                        Some((1.0 + tf.ln()) * (n / df).ln().max(0.1))
                    })
                    .sum();
                (score > 0.0).then_some((score, i))
            })
            .collect();
        // Ties go to the earlier section so results are stable across runs.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        Ok(scored
            .into_iter()
            .take(limit)
            .map(|(_, i)| {
                let s = &self.sections[i];
                let mut snippet: String = s.text.chars().take(SNIPPET_CHARS).collect();
                if s.text.chars().count() > SNIPPET_CHARS {
                    snippet.push('…');
                }
                Hit {
                    title: s.title.clone(),
                    source: s.source.to_owned(),
                    snippet,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_docs_answer_questions_about_the_project() {
        let s = OfflineSearch::default();
        let hits = s
            .search("How are intentions enforced by the proxy?", 3)
            .unwrap();
        assert!(!hits.is_empty());
        assert!(
            hits.iter()
                .any(|h| h.snippet.to_lowercase().contains("intention")
                    || h.title.to_lowercase().contains("intention")),
            "{hits:?}"
        );
        // Deterministic: the same question gives the same notes.
        assert_eq!(
            hits,
            s.search("How are intentions enforced by the proxy?", 3)
                .unwrap()
        );
    }

    #[test]
    fn rarer_words_outrank_common_ones() {
        let s = OfflineSearch::new(&[(
            "doc.md",
            "# Alpha\nmesh mesh mesh\n# Beta\nmesh rotation\n# Gamma\nmesh\n",
        )]);
        let hits = s.search("mesh rotation", 3).unwrap();
        assert_eq!(hits[0].title, "Beta");
    }

    #[test]
    fn a_query_of_only_stopwords_is_refused() {
        let s = OfflineSearch::default();
        assert!(matches!(
            s.search("what is the", 3),
            Err(SearchError::EmptyQuery)
        ));
    }

    #[test]
    fn code_blocks_do_not_start_sections() {
        let s = OfflineSearch::new(&[("d.md", "# Real\n```sh\n# a comment\nrun thing\n```\n")]);
        let hits = s.search("comment", 3).unwrap();
        assert_eq!(hits[0].title, "Real");
    }
}
