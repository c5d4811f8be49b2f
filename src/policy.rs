//! The policy file: roles and their settings. Parsed from TOML with every value checked and
//! every error tied to its line; the database keeps the applied text as the source of truth.

use crate::limits;
use crate::time::{parse_duration, policy_duration};
use chrono::Duration;
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use toml::Spanned;

/// The repository's example policy, built into the binary for `pim init`.
pub const EXAMPLE: &str = include_str!("../policies.toml");

/// Rights inside pim that a role grants within the scope of its active assignment.
pub const PERMISSIONS: [&str; 7] = [
    "users", "assign", "approve", "review", "audit", "policy", "*",
];

/// How long an assignment may last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Permanent,
    Max(Duration),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Permanent => f.write_str("permanent"),
            Limit::Max(d) => f.write_str(&policy_duration(*d)),
        }
    }
}

/// The effective settings of one role (the defaults with the role's overrides).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub max_activation: Duration,
    pub require_mfa: bool,
    pub require_justification: bool,
    pub justification_pattern: Option<String>,
    /// The pattern in words, with an example, shown before a justification is typed
    /// ("a change number first, e.g. CHG-1234: reason").
    pub justification_hint: Option<String>,
    pub require_ticket: bool,
    pub require_approval: bool,
    pub approvers: Vec<String>,
    pub min_approvals: u32,
    pub approval_timeout: Duration,
    pub max_eligible: Limit,
    pub max_active: Limit,
    pub require_justification_on_assign: bool,
    pub notify: Vec<String>,
}

impl Default for Settings {
    /// Entra's defaults.
    fn default() -> Self {
        Settings {
            max_activation: Duration::hours(8),
            require_mfa: true,
            require_justification: true,
            justification_pattern: None,
            justification_hint: None,
            require_ticket: false,
            require_approval: false,
            approvers: Vec::new(),
            min_approvals: 1,
            approval_timeout: Duration::hours(24),
            max_eligible: Limit::Max(Duration::days(365)),
            max_active: Limit::Max(Duration::days(180)),
            require_justification_on_assign: true,
            notify: Vec::new(),
        }
    }
}

impl Settings {
    /// Every setting as it would be written in the policy file, in the file's order.
    pub fn entries(&self) -> Vec<(&'static str, toml::Value)> {
        use toml::Value::{Array, Boolean, Integer, String as S};
        let list = |v: &[String]| Array(v.iter().cloned().map(S).collect());
        vec![
            ("max_activation", S(policy_duration(self.max_activation))),
            ("require_mfa", Boolean(self.require_mfa)),
            ("require_justification", Boolean(self.require_justification)),
            (
                "justification_pattern",
                S(self.justification_pattern.clone().unwrap_or_default()),
            ),
            (
                "justification_hint",
                S(self.justification_hint.clone().unwrap_or_default()),
            ),
            ("require_ticket", Boolean(self.require_ticket)),
            ("require_approval", Boolean(self.require_approval)),
            ("approvers", list(&self.approvers)),
            ("min_approvals", Integer(self.min_approvals.into())),
            (
                "approval_timeout",
                S(policy_duration(self.approval_timeout)),
            ),
            ("max_eligible", S(self.max_eligible.to_string())),
            ("max_active", S(self.max_active.to_string())),
            (
                "require_justification_on_assign",
                Boolean(self.require_justification_on_assign),
            ),
            ("notify", list(&self.notify)),
        ]
    }

    /// Whether a justification satisfies `justification_pattern`.
    pub fn justification_matches(&self, justification: &str) -> bool {
        match &self.justification_pattern {
            None => true,
            // The pattern was compiled when the policy was parsed; a failure here cannot
            // happen for a stored policy, and refusing is the safe answer if it did.
            Some(p) => Regex::new(p).is_ok_and(|re| re.is_match(justification)),
        }
    }
}

/// One role of the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub key: String,
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    pub protected: bool,
    pub settings: Settings,
}

impl Role {
    /// Whether the role grants a permission inside pim.
    pub fn grants(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == "*" || p == permission)
    }
}

/// Where notifications go: any of e-mail, a webhook, a local command.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Notifications {
    pub smtp: Option<Smtp>,
    pub webhook: Option<Webhook>,
    pub command: Option<NotifyCommand>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub from: String,
    pub starttls: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub url: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NotifyCommand {
    pub argv: Vec<String>,
}

/// Where each new signed checkpoint of the audit log goes (`pim sweep` publishes one whenever
/// the log grew): places out of the database owner's reach, so that a fork is caught.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Witness {
    /// A file each checkpoint is appended to (created if missing, never through a link).
    pub file: Option<String>,
    /// A command that gets each checkpoint (as a notice: JSON on stdin, `text` the note).
    pub command: Option<Vec<String>>,
    /// A URL each checkpoint is POSTed to (the same JSON).
    pub webhook: Option<String>,
}

impl Witness {
    pub fn any(&self) -> bool {
        self.file.is_some() || self.command.is_some() || self.webhook.is_some()
    }
}

/// Thresholds of `pim alerts`.
#[derive(Debug, Clone, PartialEq)]
pub struct Alerts {
    /// More holders than this of one protected role is too many.
    pub max_protected_holders: u32,
    /// Fewer permanent holders of protected roles than this is too few break-glass accounts.
    pub min_break_glass: u32,
    /// Eligible and not activated for this long is unused.
    pub unused_after: Duration,
    /// More activations than this of one role by one user within `frequent_window`...
    pub frequent_activations: u32,
    pub frequent_window: Duration,
    /// Lockouts and failed sign-ins within this window are an alert.
    pub failure_window: Duration,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            max_protected_holders: 5,
            min_break_glass: 2,
            unused_after: Duration::days(30),
            frequent_activations: 10,
            frequent_window: Duration::days(1),
            failure_window: Duration::days(7),
        }
    }
}

// How many times this thread parsed a policy (tests: the store's policy is parsed once while
// its text stays the same).
#[cfg(test)]
thread_local! {
    pub(crate) static PARSES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// A parsed, valid policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub source: String,
    pub defaults: Settings,
    pub roles: BTreeMap<String, Role>,
    pub notifications: Notifications,
    pub alerts: Alerts,
    pub witness: Witness,
}

/// A problem in a policy file, tied to its line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The settings that `[defaults]` and each role may carry. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Option<Spanned<String>>,
    description: Option<Spanned<String>>,
    permissions: Option<Spanned<Vec<Spanned<String>>>>,
    protected: Option<Spanned<bool>>,
    max_activation: Option<Spanned<String>>,
    require_mfa: Option<bool>,
    require_justification: Option<bool>,
    justification_pattern: Option<Spanned<String>>,
    justification_hint: Option<Spanned<String>>,
    require_ticket: Option<bool>,
    require_approval: Option<bool>,
    approvers: Option<Vec<Spanned<String>>>,
    min_approvals: Option<Spanned<i64>>,
    approval_timeout: Option<Spanned<String>>,
    max_eligible: Option<Spanned<String>>,
    max_active: Option<Spanned<String>>,
    require_justification_on_assign: Option<bool>,
    notify: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    defaults: Option<Spanned<RawEntry>>,
    #[serde(default)]
    roles: BTreeMap<Spanned<String>, Spanned<RawEntry>>,
    notifications: Option<RawNotifications>,
    alerts: Option<RawAlerts>,
    witness: Option<Spanned<RawWitness>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWitness {
    file: Option<String>,
    command: Option<Vec<String>>,
    webhook: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    max_protected_holders: Option<Spanned<i64>>,
    min_break_glass: Option<Spanned<i64>>,
    unused_after: Option<Spanned<String>>,
    frequent_activations: Option<Spanned<i64>>,
    frequent_window: Option<Spanned<String>>,
    failure_window: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifications {
    smtp: Option<Spanned<RawSmtp>>,
    webhook: Option<Spanned<RawWebhook>>,
    command: Option<Spanned<RawCommand>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    host: Spanned<String>,
    #[serde(default = "default_smtp_port")]
    port: Spanned<i64>,
    from: Spanned<String>,
    #[serde(default)]
    starttls: bool,
}

fn default_smtp_port() -> Spanned<i64> {
    Spanned::new(0..0, 25)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommand {
    argv: Spanned<Vec<String>>,
}

/// Whether a text is a valid user handle (also used for role keys).
pub fn valid_handle(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A new user's e-mail address: one pim can send to, as lettre (which sends it) reads an
/// address, and of the shape below, without controls or invisible characters. (The shape
/// check alone let `e(@x.y` in, which then failed every message it was among, and control
/// characters.) The policy keeps the shape check alone: a stored policy that passed it must
/// still load.
pub fn sendable_email(text: &str) -> bool {
    looks_like_email(text)
        && text.parse::<lettre::Address>().is_ok()
        && !text.chars().any(crate::text::unsafe_char)
}

/// A minimal e-mail shape check: something@domain.tld, no spaces.
pub fn looks_like_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !text.chars().any(|c| c.is_whitespace() || c == ',')
                && !domain.contains('@')
        }
        None => false,
    }
}

struct Parser<'a> {
    source: &'a str,
    problems: Vec<Problem>,
}

impl Parser<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.source.len());
        self.source.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn problem(&mut self, span: std::ops::Range<usize>, message: String) {
        let line = self.line(span.start);
        self.problems.push(Problem { line, message });
    }

    fn duration(
        &mut self,
        key: &str,
        value: &Spanned<String>,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        match parse_duration(value.get_ref()) {
            Ok(d) if d < min || d > max => {
                self.problem(
                    value.span(),
                    format!(
                        "{key} = \"{}\" is out of range ({}..={}).",
                        value.get_ref(),
                        policy_duration(min),
                        policy_duration(max)
                    ),
                );
                None
            }
            Ok(d) => Some(d),
            Err(_) => {
                self.problem(
                    value.span(),
                    format!(
                        "{key} = \"{}\" is not a duration; write it like 30m, 8h or 90d.",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn limit(&mut self, key: &str, value: &Spanned<String>) -> Option<Limit> {
        if value.get_ref() == "permanent" {
            return Some(Limit::Permanent);
        }
        self.duration(key, value, Duration::hours(1), Duration::days(3650))
            .map(Limit::Max)
    }

    fn names(&mut self, key: &str, values: &[Spanned<String>], emails: bool) -> Vec<String> {
        let mut out = Vec::new();
        for v in values {
            let text = v.get_ref();
            if valid_handle(text) || (emails && looks_like_email(text)) {
                if !out.contains(text) {
                    out.push(text.clone());
                }
            } else {
                let what = if emails {
                    "a user name or an e-mail address"
                } else {
                    "a user name"
                };
                self.problem(v.span(), format!("{key}: '{text}' is not {what}."));
            }
        }
        out
    }

    /// Apply the settings of `raw` over `base`.
    fn settings(&mut self, raw: &RawEntry, base: &Settings) -> Settings {
        let mut s = base.clone();
        if let Some(v) = &raw.max_activation {
            if let Some(d) = self.duration(
                "max_activation",
                v,
                Duration::minutes(30),
                Duration::hours(24),
            ) {
                s.max_activation = d;
            }
        }
        if let Some(v) = raw.require_mfa {
            s.require_mfa = v;
        }
        if let Some(v) = raw.require_justification {
            s.require_justification = v;
        }
        if let Some(v) = &raw.justification_pattern {
            self.length("justification_pattern", v, limits::PATTERN);
            if v.get_ref().is_empty() {
                s.justification_pattern = None;
            } else if let Err(e) = Regex::new(v.get_ref()) {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                self.problem(
                    v.span(),
                    format!("justification_pattern is not a valid regular expression ({first})."),
                );
            } else {
                s.justification_pattern = Some(v.get_ref().clone());
            }
        }
        if let Some(v) = &raw.justification_hint {
            self.length("justification_hint", v, limits::PATTERN);
            if v.get_ref().chars().any(char::is_control) {
                self.problem(
                    v.span(),
                    "justification_hint must be one line without control characters.".to_string(),
                );
            } else if v.get_ref().trim().is_empty() {
                s.justification_hint = None;
            } else {
                s.justification_hint = Some(v.get_ref().trim().to_string());
            }
        }
        if let Some(v) = raw.require_ticket {
            s.require_ticket = v;
        }
        if let Some(v) = raw.require_approval {
            s.require_approval = v;
        }
        if let Some(v) = &raw.approvers {
            s.approvers = self.names("approvers", v, false);
        }
        if let Some(v) = &raw.min_approvals {
            match u32::try_from(*v.get_ref()) {
                Ok(n @ 1..=10) => s.min_approvals = n,
                _ => self.problem(
                    v.span(),
                    format!("min_approvals = {} is out of range (1..=10).", v.get_ref()),
                ),
            }
        }
        if let Some(v) = &raw.approval_timeout {
            if let Some(d) = self.duration(
                "approval_timeout",
                v,
                Duration::minutes(10),
                Duration::days(30),
            ) {
                s.approval_timeout = d;
            }
        }
        if let Some(v) = &raw.max_eligible {
            if let Some(l) = self.limit("max_eligible", v) {
                s.max_eligible = l;
            }
        }
        if let Some(v) = &raw.max_active {
            if let Some(l) = self.limit("max_active", v) {
                s.max_active = l;
            }
        }
        if let Some(v) = raw.require_justification_on_assign {
            s.require_justification_on_assign = v;
        }
        if let Some(v) = &raw.notify {
            s.notify = self.names("notify", v, true);
        }
        s
    }
}

impl Parser<'_> {
    /// A string longer than its limit is a problem at its line.
    fn length(&mut self, key: &str, value: &Spanned<String>, max: usize) {
        let n = value.get_ref().chars().count();
        if n > max {
            self.problem(
                value.span(),
                format!("{key} is {n} characters long; the limit is {max}."),
            );
        }
    }

    fn count(&mut self, key: &str, v: &Spanned<i64>, min: i64, max: i64) -> Option<u32> {
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            Some(n as u32)
        } else {
            self.problem(
                v.span(),
                format!("alerts.{key} = {n} is out of range ({min}..={max})."),
            );
            None
        }
    }

    fn alerts(&mut self, raw: &RawAlerts) -> Alerts {
        let mut a = Alerts::default();
        if let Some(n) = raw
            .max_protected_holders
            .as_ref()
            .and_then(|v| self.count("max_protected_holders", v, 1, 1000))
        {
            a.max_protected_holders = n;
        }
        if let Some(n) = raw
            .min_break_glass
            .as_ref()
            .and_then(|v| self.count("min_break_glass", v, 1, 100))
        {
            a.min_break_glass = n;
        }
        if let Some(n) = raw
            .frequent_activations
            .as_ref()
            .and_then(|v| self.count("frequent_activations", v, 1, 10_000))
        {
            a.frequent_activations = n;
        }
        if let Some(v) = &raw.unused_after {
            if let Some(d) = self.duration(
                "alerts.unused_after",
                v,
                Duration::days(1),
                Duration::days(3650),
            ) {
                a.unused_after = d;
            }
        }
        if let Some(v) = &raw.frequent_window {
            if let Some(d) = self.duration(
                "alerts.frequent_window",
                v,
                Duration::hours(1),
                Duration::days(365),
            ) {
                a.frequent_window = d;
            }
        }
        if let Some(v) = &raw.failure_window {
            if let Some(d) = self.duration(
                "alerts.failure_window",
                v,
                Duration::hours(1),
                Duration::days(365),
            ) {
                a.failure_window = d;
            }
        }
        a
    }

    fn notifications(&mut self, raw: &RawNotifications) -> Notifications {
        let mut out = Notifications::default();
        if let Some(smtp) = &raw.smtp {
            let s = smtp.get_ref();
            self.length("notifications.smtp.host", &s.host, limits::POLICY_STRING);
            self.length("notifications.smtp.from", &s.from, limits::EMAIL);
            if s.host.get_ref().trim().is_empty() {
                self.problem(
                    s.host.span(),
                    "notifications.smtp.host is empty.".to_string(),
                );
            }
            let port = match u16::try_from(*s.port.get_ref()) {
                Ok(port) if port > 0 => port,
                _ => {
                    self.problem(
                        s.port.span(),
                        format!(
                            "notifications.smtp.port = {} is out of range (1..=65535).",
                            s.port.get_ref()
                        ),
                    );
                    25
                }
            };
            if !looks_like_email(s.from.get_ref()) {
                self.problem(
                    s.from.span(),
                    format!(
                        "notifications.smtp.from = \"{}\" is not an e-mail address.",
                        s.from.get_ref()
                    ),
                );
            }
            out.smtp = Some(Smtp {
                host: s.host.get_ref().trim().to_string(),
                port,
                from: s.from.get_ref().clone(),
                starttls: s.starttls,
            });
        }
        if let Some(hook) = &raw.webhook {
            self.length(
                "notifications.webhook.url",
                &hook.get_ref().url,
                limits::POLICY_STRING,
            );
            let url = hook.get_ref().url.get_ref();
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.contains(char::is_whitespace)
            {
                self.problem(
                    hook.get_ref().url.span(),
                    format!(
                        "notifications.webhook.url = \"{url}\" is not an http:// or https:// URL."
                    ),
                );
            }
            out.webhook = Some(Webhook { url: url.clone() });
        }
        if let Some(cmd) = &raw.command {
            let argv = cmd.get_ref().argv.get_ref();
            if argv.len() > 64
                || argv
                    .iter()
                    .any(|a| a.chars().count() > limits::POLICY_STRING)
            {
                self.problem(
                    cmd.get_ref().argv.span(),
                    format!(
                        "notifications.command.argv is too long (at most 64 arguments of {} characters).",
                        limits::POLICY_STRING
                    ),
                );
            }
            if argv.is_empty() || argv[0].trim().is_empty() {
                self.problem(
                    cmd.get_ref().argv.span(),
                    "notifications.command.argv needs at least the program to run.".to_string(),
                );
            }
            out.command = Some(NotifyCommand { argv: argv.clone() });
        }
        out
    }
}

impl Policy {
    /// Parse and check a policy file. On failure, every problem found, ordered by line.
    pub fn parse(source: &str) -> Result<Policy, Vec<Problem>> {
        #[cfg(test)]
        PARSES.set(PARSES.get() + 1);
        if source.len() > limits::POLICY_BYTES {
            return Err(vec![Problem {
                line: 1,
                message: format!(
                    "the policy is {} bytes long; the limit is {} KiB.",
                    source.len(),
                    limits::POLICY_BYTES / 1024
                ),
            }]);
        }
        let mut p = Parser {
            source,
            problems: Vec::new(),
        };
        let raw: RawPolicy = match toml::from_str(source) {
            Ok(raw) => raw,
            Err(e) => {
                let line = e.span().map(|s| p.line(s.start)).unwrap_or(1);
                let mut message = e.message().trim().replace('\n', " ");
                // serde lists every allowed key; name the wrong one and where the list is.
                if let Some(rest) = message.strip_prefix("unknown field `") {
                    if let Some((key, _)) = rest.split_once('`') {
                        message = format!(
                            "unknown key `{key}` (see the policy reference in README.md for the keys a role or [defaults] may have)."
                        );
                    }
                }
                return Err(vec![Problem { line, message }]);
            }
        };

        let defaults = match &raw.defaults {
            Some(d) => {
                let entry = d.get_ref();
                for (key, span) in [
                    ("name", entry.name.as_ref().map(|v| v.span())),
                    ("description", entry.description.as_ref().map(|v| v.span())),
                    ("permissions", entry.permissions.as_ref().map(|v| v.span())),
                    ("protected", entry.protected.as_ref().map(|v| v.span())),
                ] {
                    if let Some(span) = span {
                        p.problem(
                            span,
                            format!("'{key}' belongs to a role, not to [defaults]."),
                        );
                    }
                }
                p.settings(entry, &Settings::default())
            }
            None => Settings::default(),
        };

        let mut roles = BTreeMap::new();
        let mut display_names: BTreeMap<String, String> = BTreeMap::new();
        let mut role_lines = BTreeMap::new();
        for (key, entry) in &raw.roles {
            let span = key.span();
            role_lines.insert(key.get_ref().clone(), p.line(span.start));
            let key_text = key.get_ref().clone();
            let e = entry.get_ref();
            if !valid_handle(&key_text) {
                p.problem(
                    span.clone(),
                    format!(
                        "role key '{key_text}' may use only letters, digits, '.', '_' and '-'."
                    ),
                );
            }
            if let Some(n) = &e.name {
                p.length("name", n, limits::ROLE_NAME);
                if n.get_ref().chars().any(limits::breaks_a_line) {
                    p.problem(
                        n.span(),
                        format!("role '{key_text}' has a display name of more than one line or with control characters; a name is shown on one line of every table, prompt and e-mail subject."),
                    );
                } else if n
                    .get_ref()
                    .chars()
                    .any(|c| crate::text::unsafe_char(c) || (c.is_whitespace() && c != ' '))
                {
                    // A name that looks like another's ("Global\u{a0}Administrator") is not
                    // the protected role a reader takes it for.
                    p.problem(
                        n.span(),
                        format!("role '{key_text}' has a display name with an invisible character or a blank other than a space; write it with plain spaces."),
                    );
                }
            }
            if let Some(d) = &e.description {
                p.length("description", d, limits::DESCRIPTION);
            }
            let name = match &e.name {
                Some(n) if !n.get_ref().trim().is_empty() => n.get_ref().trim().to_string(),
                _ => {
                    p.problem(
                        span.clone(),
                        format!("role '{key_text}' has no display name; add name = \"...\"."),
                    );
                    String::new()
                }
            };
            if !name.is_empty() {
                // Names that differ in case or in how many blanks part their words read alike.
                let folded = name
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase();
                if let Some(other) = display_names.insert(folded, key_text.clone()) {
                    p.problem(
                        span.clone(),
                        format!(
                            "roles '{other}' and '{key_text}' share the display name '{name}'."
                        ),
                    );
                }
            }
            let mut permissions = Vec::new();
            if let Some(list) = &e.permissions {
                for perm in list.get_ref() {
                    if PERMISSIONS.contains(&perm.get_ref().as_str()) {
                        if !permissions.contains(perm.get_ref()) {
                            permissions.push(perm.get_ref().clone());
                        }
                    } else {
                        p.problem(
                            perm.span(),
                            format!(
                                "permission '{}' is unknown; use {}.",
                                perm.get_ref(),
                                PERMISSIONS.join(", ")
                            ),
                        );
                    }
                }
            }
            let settings = p.settings(e, &defaults);
            if !settings.approvers.is_empty()
                && settings.min_approvals as usize > settings.approvers.len()
            {
                p.problem(
                    span.clone(),
                    format!(
                        "role '{key_text}' needs {} approvals but names only {} approver(s).",
                        settings.min_approvals,
                        settings.approvers.len()
                    ),
                );
            }
            roles.insert(
                key_text.clone(),
                Role {
                    key: key_text,
                    name,
                    description: e
                        .description
                        .as_ref()
                        .map(|d| d.get_ref().trim().to_string())
                        .unwrap_or_default(),
                    permissions,
                    protected: e.protected.as_ref().is_some_and(|v| *v.get_ref()),
                    settings,
                },
            );
        }
        // A display name may not be another role's key: `pim activate X` must be unambiguous.
        for role in roles.values() {
            if let Some(other) = roles.get(&role.name.to_lowercase()) {
                if other.key != role.key {
                    p.problems.push(Problem {
                        line: role_lines.get(&role.key).copied().unwrap_or(1),
                        message: format!(
                            "role '{}' has the display name '{}', which is the key of another role.",
                            role.key, role.name
                        ),
                    });
                }
            }
        }

        let notifications = match &raw.notifications {
            Some(n) => p.notifications(n),
            None => Notifications::default(),
        };
        let alerts = match &raw.alerts {
            Some(a) => p.alerts(a),
            None => Alerts::default(),
        };
        let witness = match &raw.witness {
            Some(w) => {
                let span = w.span();
                let w = w.get_ref();
                let mut bad = |m: &str| p.problem(span.clone(), m.to_string());
                if w.file
                    .as_ref()
                    .is_some_and(|f| !f.starts_with('/') || f.len() > limits::POLICY_STRING)
                {
                    bad("witness.file must be an absolute path.");
                }
                if w.command
                    .as_ref()
                    .is_some_and(|c| c.is_empty() || c[0].trim().is_empty() || c.len() > 64)
                {
                    bad("witness.command needs the program to run (at most 64 arguments).");
                }
                if w.webhook.as_ref().is_some_and(|u| {
                    !(u.starts_with("http://") || u.starts_with("https://"))
                        || u.contains(char::is_whitespace)
                }) {
                    bad("witness.webhook is not an http:// or https:// URL.");
                }
                Witness {
                    file: w.file.clone(),
                    command: w.command.clone(),
                    webhook: w.webhook.clone(),
                }
            }
            None => Witness::default(),
        };

        if p.problems.is_empty() {
            Ok(Policy {
                source: source.to_string(),
                defaults,
                roles,
                notifications,
                alerts,
                witness,
            })
        } else {
            let mut problems = p.problems;
            problems.sort();
            problems.dedup();
            Err(problems)
        }
    }

    /// Find a role by key, or by display name case-insensitively.
    pub fn role(&self, key_or_name: &str) -> Option<&Role> {
        self.roles.get(key_or_name).or_else(|| {
            self.roles
                .values()
                .find(|r| r.name.eq_ignore_ascii_case(key_or_name))
        })
    }

    /// Every user name the policy refers to (approvers and notify recipients that are not
    /// e-mail addresses), with the role that names it.
    pub fn named_users(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for role in self.roles.values() {
            for name in role.settings.approvers.iter().chain(&role.settings.notify) {
                if !name.contains('@') {
                    out.push((role.key.clone(), name.clone()));
                }
            }
        }
        out
    }
}

/// How one role changes between two policies.
#[derive(Debug, Clone, PartialEq)]
pub enum RoleChange {
    Added(String),
    Removed(String),
    Changed(String, Vec<(String, String, String)>),
}

/// What applying `new` over `old` changes, role by role.
pub fn diff(old: Option<&Policy>, new: &Policy) -> Vec<RoleChange> {
    let empty = BTreeMap::new();
    let old_roles = old.map(|p| &p.roles).unwrap_or(&empty);
    let mut out = Vec::new();
    for (key, role) in &new.roles {
        match old_roles.get(key) {
            None => out.push(RoleChange::Added(key.clone())),
            Some(before) if before != role => {
                let fields = |r: &Role| {
                    let mut v = vec![
                        ("name", toml::Value::String(r.name.clone())),
                        ("description", toml::Value::String(r.description.clone())),
                        (
                            "permissions",
                            toml::Value::Array(
                                r.permissions
                                    .iter()
                                    .cloned()
                                    .map(toml::Value::String)
                                    .collect(),
                            ),
                        ),
                        ("protected", toml::Value::Boolean(r.protected)),
                    ];
                    v.extend(r.settings.entries());
                    v
                };
                let changes = fields(before)
                    .into_iter()
                    .zip(fields(role))
                    .filter(|((_, a), (_, b))| a != b)
                    .map(|((k, a), (_, b))| (k.to_string(), a.to_string(), b.to_string()))
                    .collect();
                out.push(RoleChange::Changed(key.clone(), changes));
            }
            Some(_) => {}
        }
    }
    for key in old_roles.keys() {
        if !new.roles.contains_key(key) {
            out.push(RoleChange::Removed(key.clone()));
        }
    }
    let alerts_before = old.map(|p| p.alerts.clone()).unwrap_or_default();
    if alerts_before != new.alerts {
        let fields = |a: &Alerts| {
            vec![
                ("max_protected_holders", a.max_protected_holders.to_string()),
                ("min_break_glass", a.min_break_glass.to_string()),
                ("unused_after", policy_duration(a.unused_after)),
                ("frequent_activations", a.frequent_activations.to_string()),
                ("frequent_window", policy_duration(a.frequent_window)),
                ("failure_window", policy_duration(a.failure_window)),
            ]
        };
        let changes = fields(&alerts_before)
            .into_iter()
            .zip(fields(&new.alerts))
            .filter(|((_, a), (_, b))| a != b)
            .map(|((k, a), (_, b))| (k.to_string(), a, b))
            .collect();
        out.push(RoleChange::Changed("[alerts]".to_string(), changes));
    }
    let witness_before = old.map(|p| p.witness.clone()).unwrap_or_default();
    if witness_before != new.witness {
        let describe = |w: &Witness| {
            let mut parts = Vec::new();
            if let Some(f) = &w.file {
                parts.push(format!("file {f}"));
            }
            if let Some(c) = &w.command {
                parts.push(format!("command {}", c.join(" ")));
            }
            if let Some(u) = &w.webhook {
                parts.push(format!("webhook {u}"));
            }
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(", ")
            }
        };
        out.push(RoleChange::Changed(
            "[witness]".to_string(),
            vec![(
                "witness".to_string(),
                describe(&witness_before),
                describe(&new.witness),
            )],
        ));
    }
    let before = old.map(|p| p.notifications.clone()).unwrap_or_default();
    if before != new.notifications {
        let describe = |n: &Notifications| {
            let mut parts = Vec::new();
            if let Some(s) = &n.smtp {
                parts.push(format!("smtp {}:{} from {}", s.host, s.port, s.from));
            }
            if let Some(w) = &n.webhook {
                parts.push(format!("webhook {}", w.url));
            }
            if let Some(c) = &n.command {
                parts.push(format!("command {}", c.argv.join(" ")));
            }
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(", ")
            }
        };
        out.push(RoleChange::Changed(
            "[notifications]".to_string(),
            vec![(
                "channels".to_string(),
                describe(&before),
                describe(&new.notifications),
            )],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_users_address_is_one_lettre_can_send_to() {
        for ok in ["bob@example.com", "first.last+pim@mail.example.org"] {
            assert!(sendable_email(ok), "{ok}");
        }
        for bad in [
            "e(@x.y",
            "bob@example",
            "d\u{1b}]0;x\u{7}@x.y",
            "bob@@example.com",
            "bo b@example.com",
            "@example.com",
            // Shown to approvers and in mail headers: nothing that turns text around or
            // hides in it.
            "moc.elpmaxe\u{202e}@bob.example.com",
            "bob\u{200b}@example.com",
            "bob@exa\u{2066}mple.com",
        ] {
            assert!(!sendable_email(bad), "{bad:?}");
        }
    }

    fn problems(src: &str) -> Vec<Problem> {
        Policy::parse(src).unwrap_err()
    }

    /// A display name is one line (tables, prompts, e-mail subjects): no control
    /// character, line separator or bidirectional control. A description may have lines.
    #[test]
    fn a_role_display_name_is_one_line() {
        for bad in [
            "DB\\npim: Note: pre-approved",
            "DB\\u001b[31m",
            "DB\\u2028x",
            "DB\\u202ex",
        ] {
            let found = problems(&format!("[roles.a]\nname = \"{bad}\"\n"));
            assert!(
                found
                    .iter()
                    .any(|p| p.message.contains("more than one line")),
                "{bad}: {found:?}"
            );
        }
        assert!(Policy::parse(
            "[roles.a]\nname = \"Database Administrator\"\ndescription = \"one\\ntwo\"\n"
        )
        .is_ok());
    }

    /// A display name that looks like another role's is refused: one with an invisible
    /// character or another blank than a space, or one that differs only in spacing.
    #[test]
    fn a_display_name_cannot_pass_for_another() {
        for bad in [
            "Global\\u00a0Administrator",
            "Global\\u200bAdministrator",
            "DB\\ufe0f",
        ] {
            let found = problems(&format!("[roles.a]\nname = \"{bad}\"\n"));
            assert!(
                found
                    .iter()
                    .any(|p| p.message.contains("invisible character")),
                "{bad}: {found:?}"
            );
        }
        let found = problems(
            "[roles.a]\nname = \"Global Administrator\"\n[roles.b]\nname = \"global  administrator\"\n",
        );
        assert!(
            found
                .iter()
                .any(|p| p.message.contains("share the display name")),
            "{found:?}"
        );
    }

    #[test]
    fn the_example_policy_is_valid() {
        let p = Policy::parse(EXAMPLE).unwrap();
        let ga = p.role("global-admin").unwrap();
        assert!(ga.protected);
        assert!(ga.grants("users"));
        assert_eq!(p.role("global administrator").unwrap().key, "global-admin");
    }

    #[test]
    fn defaults_are_entras_and_roles_override_them() {
        let p = Policy::parse(
            "[defaults]\nmax_activation = \"4h\"\n[roles.a]\nname = \"A\"\n[roles.b]\nname = \"B\"\nmax_activation = \"1h\"\nrequire_mfa = false\n",
        )
        .unwrap();
        assert_eq!(p.roles["a"].settings.max_activation, Duration::hours(4));
        assert!(p.roles["a"].settings.require_mfa);
        assert_eq!(p.roles["b"].settings.max_activation, Duration::hours(1));
        assert!(!p.roles["b"].settings.require_mfa);
        assert_eq!(
            p.roles["b"].settings.max_eligible,
            Limit::Max(Duration::days(365))
        );
    }

    #[test]
    fn out_of_range_activation_names_its_line() {
        let e = problems("[roles.a]\nname = \"A\"\nmax_activation = \"25h\"\n");
        assert_eq!(e[0].line, 3);
        assert!(e[0].message.contains("out of range"), "{}", e[0]);
    }

    #[test]
    fn unknown_keys_bad_durations_and_missing_names_are_errors() {
        let e = problems("[roles.a]\nname = \"A\"\nmax_activaton = \"2h\"\n");
        assert_eq!(e[0].line, 3);
        assert!(e[0].message.contains("max_activaton"), "{}", e[0]);

        let e = problems("[roles.a]\nname = \"A\"\n\napproval_timeout = \"soon\"\n");
        assert_eq!(e[0].line, 4);
        assert!(e[0].message.contains("not a duration"));

        let e = problems("[roles.a]\ndescription = \"x\"\n");
        assert_eq!(e[0].line, 1);
        assert!(e[0].message.contains("no display name"));

        let e = problems("[roles.a]\nname = \"A\"\npermissions = [\"root\"]\n");
        assert!(e[0].message.contains("permission 'root'"));

        let e = problems("[roles.a]\nname = \"A\"\njustification_pattern = \"(\"\n");
        assert_eq!(e[0].line, 3);

        let e = problems("[roles.a]\nname = \"A\"\nmin_approvals = 0\n");
        assert!(e[0].message.contains("min_approvals"));

        let e = problems("[roles.a]\nname = \"A\"\napprovers = [\"c\"]\nmin_approvals = 2\n");
        assert!(e[0].message.contains("needs 2 approvals"));

        let e = problems("[defaults]\nname = \"x\"\n");
        assert!(e[0].message.contains("[defaults]"));

        let e = problems("[roles.a]\nname = \"Same\"\n[roles.b]\nname = \"same\"\n");
        assert!(e[0].message.contains("share the display name"));

        let e = problems("[roles.a]\nname = \"A\"\nnotify = [\"not an address\"]\n");
        assert!(e[0].message.contains("notify"));
    }

    #[test]
    fn notification_channels_are_parsed_and_checked() {
        let p = Policy::parse(
            "[notifications.smtp]\nhost = \"127.0.0.1\"\nport = 2525\nfrom = \"pim@example.com\"\n\
             [notifications.webhook]\nurl = \"http://127.0.0.1:8080/pim\"\n\
             [notifications.command]\nargv = [\"/bin/cat\"]\n",
        )
        .unwrap();
        assert_eq!(p.notifications.smtp.unwrap().port, 2525);
        assert_eq!(
            p.notifications.webhook.unwrap().url,
            "http://127.0.0.1:8080/pim"
        );
        assert_eq!(p.notifications.command.unwrap().argv, vec!["/bin/cat"]);
        let e = problems("[notifications.webhook]\nurl = \"ftp://x\"\n");
        assert_eq!(e[0].line, 2);
        let e = problems("[notifications.smtp]\nhost = \"h\"\nport = 70000\nfrom = \"nope\"\n");
        assert_eq!(e.len(), 2);
        let e = problems("[notifications.slack]\nurl = \"http://x\"\n");
        assert!(e[0].message.contains("slack"), "{}", e[0]);
    }

    #[test]
    fn limits_accept_permanent() {
        let p = Policy::parse("[roles.a]\nname = \"A\"\nmax_eligible = \"permanent\"\n").unwrap();
        assert_eq!(p.roles["a"].settings.max_eligible, Limit::Permanent);
    }

    #[test]
    fn diff_reports_role_by_role() {
        let a = Policy::parse("[roles.a]\nname = \"A\"\n[roles.b]\nname = \"B\"\n").unwrap();
        let b = Policy::parse(
            "[roles.a]\nname = \"A\"\nmax_activation = \"2h\"\n[roles.c]\nname = \"C\"\n",
        )
        .unwrap();
        let d = diff(Some(&a), &b);
        assert!(d.contains(&RoleChange::Added("c".into())));
        assert!(d.contains(&RoleChange::Removed("b".into())));
        assert!(d.contains(&RoleChange::Changed(
            "a".into(),
            vec![("max_activation".into(), "\"8h\"".into(), "\"2h\"".into())]
        )));
    }

    #[test]
    fn justification_pattern_is_enforced() {
        let p = Policy::parse(
            "[roles.a]\nname = \"A\"\njustification_pattern = \"^(INC|CHG)[0-9]+\"\n",
        )
        .unwrap();
        let s = &p.roles["a"].settings;
        assert!(s.justification_matches("INC123 fix"));
        assert!(!s.justification_matches("because"));
    }
}
