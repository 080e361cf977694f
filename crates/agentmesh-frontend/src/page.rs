//! The HTML pages: semantic, working without scripts (plain forms work by keyboard), with the
//! stylesheet and the inspector's one script embedded in the binary and served same-origin.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};

use crate::token::User;

/// No inline script, no eval, no frames, no foreign origins: everything the pages use is
/// same-origin CSS, the inspector's same-origin script (and its event stream), and forms
/// posting to the frontend itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
                       style-src 'self'; img-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

const STYLE: &str = include_str!("page/style.css");
const INSPECTOR_JS: &str = include_str!("page/inspector.js");

/// Adds the security headers to every response.
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: under it a browser sends `Origin: null` on the frontend's own
        // form posts, which the CSRF check refuses. `same-origin` still sends nothing to
        // other sites (the issuer, links out).
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// The stylesheet.
pub async fn stylesheet() -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/css; charset=utf-8")
        .header(header::CACHE_CONTROL, "max-age=3600")
        .body(Body::from(STYLE))
        .unwrap_or_default()
}

/// The inspector's script: countdowns and live decisions.
pub async fn inspector_script() -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/javascript; charset=utf-8")
        .header(header::CACHE_CONTROL, "max-age=3600")
        .body(Body::from(INSPECTOR_JS))
        .unwrap_or_default()
}

/// An HTML response.
pub fn html(status: StatusCode, body: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Body::from(body.to_owned()))
        .unwrap_or_default()
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, main: &str) -> String {
    layout_with_script(title, main, None)
}

/// The page frame, with a same-origin script if the page has one.
pub(crate) fn layout_with_script(title: &str, main: &str, script: Option<&str>) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · agentmesh</title><link rel=\"stylesheet\" href=\"/static/style.css\">{js}\
         </head><body><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><p class=\"brand\"><a href=\"/\">agentmesh</a></p></header>\
         <main id=\"main\">{main}</main></body></html>\n",
        t = escape(title),
        js = script
            .map(|s| format!("<script src=\"{}\" defer></script>", escape(s)))
            .unwrap_or_default()
    )
}

const DEV_BANNER: &str = "<p class=\"dev\" role=\"alert\"><strong>Dev login:</strong> no identity \
                          provider is configured; anyone on this machine can log in as anyone, \
                          and every dev login is an administrator who may open the Security \
                          Inspector. Loopback only.</p>";

/// The home page: a login link, or the question form (and the last answer).
pub fn index(
    user: Option<&User>,
    dev: bool,
    inspector: bool,
    answer: Option<(&str, &serde_json::Value)>,
) -> String {
    let mut main = String::new();
    if dev {
        main.push_str(DEV_BANNER);
    }
    match user {
        None => main.push_str(
            "<h1>Ask the mesh</h1><p>Log in to ask a question.</p>\
             <p><a class=\"button\" href=\"/login\">Log in</a></p>",
        ),
        Some(u) => {
            let who = u.name.as_deref().unwrap_or(&u.sub);
            main.push_str(&format!(
                "<h1>Ask the mesh</h1><p>Logged in as <strong>{}</strong>{} \
                 (<span class=\"idp\">{}</span>).</p>\
                 <form method=\"post\" action=\"/logout\"><button type=\"submit\">Log out</button></form>\
                 <form method=\"post\" action=\"/ask\"><label for=\"question\">Question</label>\
                 <textarea id=\"question\" name=\"question\" rows=\"3\" required>{}</textarea>\
                 <button type=\"submit\">Ask</button></form>",
                escape(who),
                u.email
                    .as_deref()
                    .map(|e| format!(" &lt;{}&gt;", escape(e)))
                    .unwrap_or_default(),
                escape(&u.idp),
                answer.map(|(q, _)| escape(q)).unwrap_or_default(),
            ));
            if inspector {
                main.push_str(
                    "<p><a id=\"inspector-link\" href=\"/inspector\">Security Inspector</a></p>",
                );
            }
            if let Some((_, a)) = answer {
                main.push_str(&answer_section(a, inspector));
            }
        }
    }
    layout("Ask", &main)
}

/// An answer as people read it: the text, then short badges (who handled it, whose
/// signatures verified, its timeline in the inspector), and the raw JSON folded away for
/// whoever needs the rest.
fn answer_section(a: &serde_json::Value, inspector: bool) -> String {
    let mut m =
        String::from("<section aria-labelledby=\"answer-h\"><h2 id=\"answer-h\">Answer</h2>");
    match (a["answer"].as_str(), a["error"].as_str()) {
        (Some(text), _) => m.push_str(&format!(
            "<p id=\"answer-text\" class=\"answer-text\">{}</p>",
            escape(text)
        )),
        (None, Some(e)) => m.push_str(&format!(
            "<p id=\"answer-text\" class=\"answer-text\" role=\"alert\">Error: {}</p>",
            escape(e)
        )),
        (None, None) => m.push_str(
            "<p id=\"answer-text\" class=\"answer-text\" role=\"alert\">The answer holds no text; see the raw JSON.</p>",
        ),
    }
    let agents: String = a["agents"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(serde_json::Value::as_str)
                .map(|n| format!("<li>{}</li>", escape(n)))
                .collect()
        })
        .unwrap_or_default();
    if !agents.is_empty() {
        m.push_str(&format!(
            "<div class=\"badge-row\"><span class=\"label\" id=\"agents-l\">Handled by</span>\
             <ul class=\"badges\" id=\"agents\" aria-labelledby=\"agents-l\">{agents}</ul></div>"
        ));
    }
    let signatures: String = match a["verified"].as_array().filter(|l| !l.is_empty()) {
        Some(list) => list
            .iter()
            .map(|v| {
                let id = v["agent"].as_str().unwrap_or("?");
                let agent = escape(&crate::inspector::mesh::short(id));
                if v["ok"].as_bool() == Some(true) {
                    format!(
                        "<li data-verified=\"true\" title=\"JWS verified: {}\">✓ {agent}</li>",
                        escape(id)
                    )
                } else {
                    format!(
                        "<li data-verified=\"false\" title=\"{}\">✗ {agent}</li>",
                        escape(v["reason"].as_str().unwrap_or("not verified"))
                    )
                }
            })
            .collect(),
        None => "<li data-verified=\"false\">✗ none: the answer is unsigned</li>".into(),
    };
    m.push_str(&format!(
        "<div class=\"badge-row\"><span class=\"label\" id=\"sig-l\">Signatures</span>\
         <ul class=\"badges\" id=\"signatures\" aria-labelledby=\"sig-l\">{signatures}</ul></div>"
    ));
    if inspector && let Some(t) = a["trace_id"].as_str() {
        m.push_str(&format!(
            "<div class=\"badge-row\"><span class=\"label\">Trace</span>\
             <a id=\"request-link\" class=\"badge\" href=\"/inspector/requests/{t}\">timeline of this request</a></div>",
            t = escape(t)
        ));
    }
    let pretty = serde_json::to_string_pretty(a).unwrap_or_default();
    m.push_str(&format!(
        "<details id=\"raw\"><summary>Raw JSON</summary><pre id=\"answer\">{}</pre></details></section>",
        escape(&pretty)
    ));
    m
}

/// The dev login form.
pub fn dev_login() -> String {
    let main = format!(
        "{DEV_BANNER}<h1>Dev login</h1><form method=\"post\" action=\"/login\">\
         <label for=\"name\">Name</label><input id=\"name\" name=\"name\" required maxlength=\"100\" autocomplete=\"name\">\
         <label for=\"email\">Email</label><input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"email\">\
         <label for=\"groups\">Groups (comma-separated, optional)</label><input id=\"groups\" name=\"groups\" placeholder=\"finance, eng\">\
         <button type=\"submit\">Log in (dev)</button></form>"
    );
    layout("Dev login", &main)
}

/// A refusal page with its reason.
pub fn error(what: &str, reason: &str) -> String {
    let main = format!(
        "<h1>{} refused</h1><p id=\"reason\" role=\"alert\">{}</p><p><a href=\"/\">Back</a></p>",
        escape(&capitalize(what)),
        escape(reason)
    );
    layout("Refused", &main)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}
