//! Data loss prevention on prompts and responses: finds e-mail addresses, phone numbers,
//! payment card numbers (Luhn-checked), private-key PEM blocks and common API-key and token
//! shapes, and redacts, blocks or only counts each kind as configured. Findings are counted
//! by kind; the matched values are never kept.
//!
//! Matching runs on a normalised copy of the text ([`normalize`]): invisible characters
//! removed, NFKC applied, every decimal digit folded to ASCII. So `jane\u{200b}@example.com`,
//! full-width `４１１１…` and Arabic-Indic digits are found like their plain forms. When a
//! finding is redacted, the normalised text (with the redactions) is what goes on; otherwise
//! the text goes on exactly as it came.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// A kind of sensitive value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A private-key PEM block.
    PrivateKey,
    /// An API key or bearer token of a well-known shape (AWS, GitHub, OpenAI, Slack, Google,
    /// JWT).
    ApiKey,
    /// A payment card number that passes the Luhn check.
    Card,
    /// An e-mail address.
    Email,
    /// A phone number.
    Phone,
}

impl Kind {
    /// Every kind, in the order they are scanned: longer, more specific shapes first, so a
    /// key inside a PEM block is one private-key finding and not also an API key.
    pub const ALL: [Kind; 5] = [
        Kind::PrivateKey,
        Kind::ApiKey,
        Kind::Card,
        Kind::Email,
        Kind::Phone,
    ];

    /// The name used in config files, audit records and redaction markers.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PrivateKey => "private_key",
            Kind::ApiKey => "api_key",
            Kind::Card => "card",
            Kind::Email => "email",
            Kind::Phone => "phone",
        }
    }

    fn pattern(self) -> &'static Regex {
        static PRIVATE_KEY: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----")
                .expect("private key pattern")
        });
        static API_KEY: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(concat!(
                r"\b(?:",
                r"(?:AKIA|ASIA)[0-9A-Z]{16}",     // AWS access key id
                r"|gh[pousr]_[A-Za-z0-9]{36,}",   // GitHub tokens
                r"|github_pat_[A-Za-z0-9_]{60,}", // GitHub fine-grained
                r"|sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}", // OpenAI / Anthropic
                r"|xox[abposr]-[A-Za-z0-9\-]{10,}", // Slack
                r"|AIza[0-9A-Za-z_\-]{35}",       // Google API key
                r"|eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", // JWT
                r")"
            ))
            .expect("api key pattern")
        });
        // ASCII digits only: normalisation folded every other decimal digit, and Luhn counts
        // exactly the digits this matched. Separators: space, hyphen-minus, Unicode dashes.
        static CARD: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"\b[0-9](?:[ \-\u{2010}-\u{2015}]?[0-9]){12,18}\b").expect("card pattern")
        });
        static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b")
                .expect("email pattern")
        });
        static PHONE: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(concat!(
                r"(?:\+\d{1,3}[ \-.]?)?",
                r"(?:\(\d{2,4}\)[ \-.]?|\b\d{2,4}[ \-.])",
                r"\d{3,4}[ \-.]\d{3,4}\b"
            ))
            .expect("phone pattern")
        });
        match self {
            Kind::PrivateKey => &PRIVATE_KEY,
            Kind::ApiKey => &API_KEY,
            Kind::Card => &CARD,
            Kind::Email => &EMAIL,
            Kind::Phone => &PHONE,
        }
    }

    /// Whether a pattern match really is this kind (cards must pass Luhn).
    fn confirm(self, text: &str) -> bool {
        match self {
            Kind::Card => luhn(text),
            _ => true,
        }
    }
}

/// Whether `c` may stand between a card number's digits.
fn is_card_separator(c: char) -> bool {
    matches!(c, ' ' | '-' | '\u{2010}'..='\u{2015}')
}

/// The Luhn checksum over a card candidate as the card pattern matched it: 13 to 19 ASCII
/// digits with separators (space, hyphen-minus, Unicode dashes) between them. Any other
/// character refuses, so the digits counted are exactly the digits matched.
pub fn luhn(text: &str) -> bool {
    let mut digits = Vec::with_capacity(19);
    for c in text.chars() {
        match c.to_digit(10) {
            Some(d) if c.is_ascii_digit() => digits.push(d),
            _ if is_card_separator(c) => {}
            _ => return false,
        }
    }
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Characters that render as nothing (Unicode's Default_Ignorable_Code_Point: zero-width
/// space, joiners, word joiner, BOM, soft hyphen, bidi controls, variation selectors, tags…),
/// which would otherwise split a value so that no pattern sees it.
static INVISIBLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\p{Default_Ignorable_Code_Point}+").expect("invisible pattern"));

/// Decimal digits of any script other than ASCII's.
static OTHER_DIGIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\p{Nd}&&[^0-9]]").expect("digit pattern"));

/// The ASCII digit for a decimal digit of any script. Unicode encodes every script's decimal
/// digits as runs of ten, zero first, so a digit's value is its distance from the start of
/// its run of digits, modulo ten (some blocks hold several runs back to back).
fn ascii_digit(c: char) -> char {
    let is_digit = |cp: u32| {
        char::from_u32(cp).is_some_and(|c| OTHER_DIGIT.is_match(c.encode_utf8(&mut [0; 4])))
    };
    let mut first = c as u32;
    while first > 0 && is_digit(first - 1) {
        first -= 1;
    }
    char::from_digit((c as u32 - first) % 10, 10).unwrap_or(c)
}

/// The text DLP matches against: invisible characters removed, NFKC (full-width letters and
/// digits, ligatures, no-break spaces become their plain forms), and every decimal digit as
/// ASCII. ASCII text comes back as it is.
pub fn normalize(text: &str) -> Cow<'_, str> {
    use unicode_normalization::UnicodeNormalization as _;
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    let visible = INVISIBLE.replace_all(text, "");
    let nfkc: String = visible.nfkc().collect();
    // NFKC can map a character onto an ignorable one; remove those too.
    let nfkc = INVISIBLE.replace_all(&nfkc, "");
    let folded = OTHER_DIGIT.replace_all(&nfkc, |caps: &regex::Captures<'_>| {
        caps[0].chars().map(ascii_digit).collect::<String>()
    });
    Cow::Owned(folded.into_owned())
}

/// What to do with a kind of finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Replace the value with `[REDACTED:<kind>]` and carry on.
    #[default]
    Redact,
    /// Refuse the whole request (or response).
    Block,
    /// Count it in the audit record and pass it through unchanged.
    Log,
}

/// `[dlp]` in gateway.toml: the action per kind. Every kind defaults to `redact`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DlpConfig {
    /// E-mail addresses.
    #[serde(default)]
    pub email: Action,
    /// Phone numbers.
    #[serde(default)]
    pub phone: Action,
    /// Payment card numbers.
    #[serde(default)]
    pub card: Action,
    /// Private-key PEM blocks.
    #[serde(default)]
    pub private_key: Action,
    /// API keys and tokens.
    #[serde(default)]
    pub api_key: Action,
}

impl DlpConfig {
    /// The action for `kind`.
    pub fn action(&self, kind: Kind) -> Action {
        match kind {
            Kind::Email => self.email,
            Kind::Phone => self.phone,
            Kind::Card => self.card,
            Kind::PrivateKey => self.private_key,
            Kind::ApiKey => self.api_key,
        }
    }
}

/// Findings counted by kind.
pub type Counts = BTreeMap<Kind, u32>;

/// The result of scanning one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The text with every `redact` finding replaced.
    pub text: String,
    /// How many of each kind were found (whatever the action).
    pub counts: Counts,
    /// The first kind whose action is `block`, if any was found.
    pub blocked: Option<Kind>,
}

/// Scans `text` under `config`. Matching runs on [`normalize`]d text; the text returned is
/// that normalised text with its redactions when something was redacted, else `text`
/// unchanged.
pub fn scan(text: &str, config: &DlpConfig) -> Scan {
    let normal = normalize(text);
    let mut found = scan_normalized(&normal, config);
    if !found
        .counts
        .keys()
        .any(|k| config.action(*k) == Action::Redact)
    {
        found.text = text.to_owned();
    }
    found
}

fn scan_normalized(text: &str, config: &DlpConfig) -> Scan {
    let mut out = text.to_owned();
    let mut counts = Counts::new();
    let mut blocked = None;
    for kind in Kind::ALL {
        let action = config.action(kind);
        let pattern = kind.pattern();
        let mut found = 0_u32;
        let replaced = pattern.replace_all(&out, |caps: &regex::Captures<'_>| {
            let m = &caps[0];
            if !kind.confirm(m) {
                return m.to_owned();
            }
            found += 1;
            match action {
                Action::Redact => format!("[REDACTED:{}]", kind.as_str()),
                Action::Block | Action::Log => m.to_owned(),
            }
        });
        let replaced = replaced.into_owned();
        if found > 0 {
            *counts.entry(kind).or_default() += found;
            if action == Action::Block && blocked.is_none() {
                blocked = Some(kind);
            }
            // Values that stay in the text (log, block) must not be found again as another
            // kind (a card number is not also a phone number); mask them for later kinds.
            if action != Action::Redact {
                out = mask_for_later_kinds(&replaced, kind);
                continue;
            }
        }
        out = replaced;
    }
    // Restore masked values for kinds that were only logged.
    Scan {
        text: unmask(&out),
        counts,
        blocked,
    }
}

/// Marks matches of `kind` so that later, broader patterns skip them. The marks are private
/// use characters that `unmask` maps back to the original text.
fn mask_for_later_kinds(text: &str, kind: Kind) -> String {
    kind.pattern()
        .replace_all(text, |caps: &regex::Captures<'_>| {
            let m = &caps[0];
            if !kind.confirm(m) {
                return m.to_owned();
            }
            m.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        char::from_u32(0xF0000 + c as u32).unwrap_or(c)
                    } else {
                        c
                    }
                })
                .collect()
        })
        .into_owned()
}

fn unmask(text: &str) -> String {
    text.chars()
        .map(|c| {
            let v = c as u32;
            if (0xF0000..0xF0080).contains(&v) {
                char::from_u32(v - 0xF0000).unwrap_or(c)
            } else {
                c
            }
        })
        .collect()
}

/// Adds `more` into `total`.
pub fn add_counts(total: &mut Counts, more: &Counts) {
    for (k, v) in more {
        *total.entry(*k).or_default() += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact_all() -> DlpConfig {
        DlpConfig::default()
    }

    #[test]
    fn finds_and_redacts_each_kind_without_keeping_values() {
        let cases: &[(&str, Kind)] = &[
            ("mail me at jane.doe+x@example.co.uk today", Kind::Email),
            ("call +1 415-555-0132 now", Kind::Phone),
            ("call (020) 7946 0958", Kind::Phone),
            ("card 4111 1111 1111 1111 exp", Kind::Card),
            ("card 4111-1111-1111-1111", Kind::Card),
            ("key AKIAIOSFODNN7EXAMPLE here", Kind::ApiKey),
            (
                "token ghp_abcdefghijklmnopqrstuvwxyz0123456789 ok",
                Kind::ApiKey,
            ),
            ("sk-proj-abcdefghijklmnopqrstuvwx", Kind::ApiKey),
            (
                "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIAbc\n-----END EC PRIVATE KEY-----",
                Kind::PrivateKey,
            ),
            (
                "jwt eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2ln",
                Kind::ApiKey,
            ),
        ];
        for (text, kind) in cases {
            let s = scan(text, &redact_all());
            assert_eq!(s.counts.get(kind), Some(&1), "{text:?} -> {s:?}");
            assert_eq!(s.counts.values().sum::<u32>(), 1, "{text:?} -> {s:?}");
            assert!(
                s.text.contains(&format!("[REDACTED:{}]", kind.as_str())),
                "{s:?}"
            );
            assert_eq!(s.blocked, None);
        }
    }

    #[test]
    fn leaves_ordinary_text_and_non_luhn_numbers_alone() {
        for text in [
            "the meeting is at 10:30 in room 4",
            "order 1234567890123 shipped", // 13 digits, fails Luhn
            "version 1.2.3 released",
            "an @ sign alone",
        ] {
            let s = scan(text, &redact_all());
            assert!(s.counts.is_empty(), "{text:?} -> {s:?}");
            assert_eq!(s.text, text);
        }
    }

    #[test]
    fn luhn_counts_exactly_the_digits_matched() {
        for (text, want) in [
            ("4111111111111111", true),
            ("5500 0000 0000 0004", true),
            ("4111-1111-1111-1111", true),
            ("4111\u{2013}1111\u{2013}1111\u{2013}1111", true),
            ("378282246310005", true),
            ("4111111111111112", false),
            ("123", false),
            // 12 and 20 digits: outside what a card number can be.
            ("411111111111", false),
            ("41111111111111111111", false),
            // Digits outside the match never count toward it.
            ("4111 1111 1111 1111 x 0", false),
            ("card 4111111111111111", false),
            // Only ASCII digits: others are folded to ASCII before matching, never skipped.
            ("\u{0664}111111111111111", false),
            ("４111111111111111", false),
        ] {
            assert_eq!(luhn(text), want, "{text:?}");
        }
    }

    #[test]
    fn hidden_and_compatibility_forms_are_found() {
        let cases: &[(&str, Kind)] = &[
            ("mail a\u{200b}@example.com", Kind::Email),
            ("mail jane\u{00ad}.doe@exa\u{2060}mple.com", Kind::Email),
            ("mail \u{feff}jane@example\u{200c}.\u{200d}com", Kind::Email),
            ("mail ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ", Kind::Email),
            ("card ４１１１ １１１１ １１１１ １１１１", Kind::Card),
            ("card ٤١١١ ١١١١ ١١١١ ١١١١", Kind::Card),
            ("card ४१११-११११-११११-११११", Kind::Card),
            ("card 𝟒𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏𝟏", Kind::Card),
            ("card 4111\u{00a0}1111\u{00a0}1111\u{00a0}1111", Kind::Card),
            ("card 4111\u{200d}1111\u{2060}1111\u{feff}1111", Kind::Card),
            ("key AKIA\u{200b}IOSFODNN7EXAMPLE", Kind::ApiKey),
            ("key ＡＫＩＡＩＯＳＦＯＤＮＮ７ＥＸＡＭＰＬＥ", Kind::ApiKey),
            ("call +1 ４１５-５５５-０１３２", Kind::Phone),
        ];
        for (text, kind) in cases {
            let s = scan(text, &redact_all());
            assert_eq!(s.counts.get(kind), Some(&1), "{text:?} -> {s:?}");
            assert_eq!(s.counts.values().sum::<u32>(), 1, "{text:?} -> {s:?}");
            assert!(
                s.text.contains(&format!("[REDACTED:{}]", kind.as_str())),
                "{s:?}"
            );
            let blocked = scan(
                text,
                &DlpConfig {
                    email: Action::Block,
                    card: Action::Block,
                    api_key: Action::Block,
                    phone: Action::Block,
                    private_key: Action::Block,
                },
            );
            assert_eq!(blocked.blocked, Some(*kind), "{text:?}");
        }
    }

    #[test]
    fn normalisation_removes_invisibles_and_folds_compatibility_forms() {
        for (text, want) in [
            ("plain ascii", "plain ascii"),
            (
                "a\u{200b}b\u{200c}c\u{200d}d\u{2060}e\u{feff}f\u{00ad}g",
                "abcdefg",
            ),
            ("ｆｕｌｌ　ｗｉｄｔｈ", "full width"),
            ("\u{fb01}le", "file"),
            ("٠١٢٣٤٥٦٧٨٩ ०१२३४५६७८९ ０１２", "0123456789 0123456789 012"),
            ("café", "café"),
        ] {
            assert_eq!(normalize(text), want, "{text:?}");
        }
    }

    #[test]
    fn text_without_a_redaction_goes_on_exactly_as_it_came() {
        for text in [
            "café ﬁ ① ｆｕｌｌ",
            "zero\u{200b}width",
            "mail a\u{200b}@example.com",
        ] {
            let logged = scan(
                text,
                &DlpConfig {
                    email: Action::Log,
                    ..DlpConfig::default()
                },
            );
            assert_eq!(logged.text, text);
        }
        let redacted = scan("ｈｉ a\u{200b}@example.com", &redact_all());
        assert_eq!(redacted.text, "hi [REDACTED:email]");
    }

    #[test]
    fn block_and_log_keep_the_text_and_count() {
        let cfg = DlpConfig {
            card: Action::Block,
            email: Action::Log,
            ..DlpConfig::default()
        };
        let text = "pay 4111 1111 1111 1111, mail a@b.io, key AKIAIOSFODNN7EXAMPLE";
        let s = scan(text, &cfg);
        assert_eq!(s.blocked, Some(Kind::Card));
        assert_eq!(s.counts.get(&Kind::Card), Some(&1));
        assert_eq!(s.counts.get(&Kind::Email), Some(&1));
        assert_eq!(s.counts.get(&Kind::ApiKey), Some(&1));
        // A logged card is not counted again as a phone number.
        assert_eq!(s.counts.get(&Kind::Phone), None, "{s:?}");
        assert!(s.text.contains("4111 1111 1111 1111"));
        assert!(s.text.contains("a@b.io"));
        assert!(s.text.contains("[REDACTED:api_key]"));
    }
}
