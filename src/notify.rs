//! Notifications: written to an outbox in the same transaction as their event, delivered after
//! it commits (e-mail through lettre over rustls, a JSON webhook through ureq, or a local
//! command), retried with backoff, and given up after `MAX_ATTEMPTS` with an audit event.

use crate::audit::Event;
use crate::error::Result;
use crate::policy::{NotifyCommand, Policy, Smtp, Webhook};
use crate::store::Db;
use crate::time::rfc3339;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::io::Write;
use std::time::Duration;

/// Deliveries tried before a notification is given up (`notification.fail`).
pub const MAX_ATTEMPTS: i64 = 5;
/// Each step of a delivery may take this long before the delivery counts as failed (for
/// e-mail: connecting, with the relay's greeting and EHLO; STARTTLS; sending the message).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one delivery may take as a whole (each step has `TIMEOUT`; this bounds them
/// all, whatever their number).
pub const DELIVERY: Duration = Duration::from_secs(15);

/// How long a command a person waits for spends delivering what it queued, after which it
/// leaves the rest to `pim sweep` (plus, at most, the one delivery under way).
pub const FOREGROUND: Duration = Duration::from_secs(10);
/// The first retry waits this long; each later one twice as long as the one before.
pub const FIRST_RETRY_SECS: i64 = 60;

/// One notification: what happened, in one readable sentence, and to whom it goes.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    pub event: String,
    pub text: String,
    pub time: String,
    pub user: String,
    pub role: Option<String>,
    pub scope: Option<String>,
    pub request: Option<i64>,
    /// User names or e-mail addresses.
    pub recipients: Vec<String>,
}

impl Notice {
    pub fn new(event: &str, now: DateTime<Utc>, user: &str, text: String) -> Notice {
        Notice {
            event: event.to_string(),
            text,
            time: rfc3339(now),
            user: user.to_string(),
            role: None,
            scope: None,
            request: None,
            recipients: Vec::new(),
        }
    }
    pub fn role(mut self, role: &str, scope: &str) -> Self {
        self.role = Some(role.to_string());
        self.scope = Some(scope.to_string());
        self
    }
    pub fn request(mut self, id: i64) -> Self {
        self.request = Some(id);
        self
    }
    pub fn to(mut self, recipients: impl IntoIterator<Item = String>) -> Self {
        for r in recipients {
            if !self.recipients.contains(&r) {
                self.recipients.push(r);
            }
        }
        self
    }
}

/// Queue a notice on every configured channel. Call it inside the event's transaction.
pub fn enqueue(conn: &Db, policy: &Policy, now: DateTime<Utc>, notice: Notice) -> Result<()> {
    if notice.recipients.is_empty() {
        return Ok(());
    }
    let n = &policy.notifications;
    let t = now.timestamp();
    let payload = serde_json::to_string(&notice).unwrap_or_default();
    let insert = |channel: &str, recipients: &[String], payload: &str| -> Result<()> {
        conn.insert_outgoing(&notice.event, channel, recipients, payload, t)?;
        Ok(())
    };
    if n.smtp.is_some() {
        // E-mail goes to addresses: a user name becomes that user's address, if they have one.
        let mut addresses: Vec<(String, Vec<String>)> = Vec::new();
        for r in &notice.recipients {
            let address = if r.contains('@') {
                Some(r.clone())
            } else {
                conn.email_of(r)?
            };
            let Some(address) = address else { continue };
            match addresses
                .iter_mut()
                .find(|(a, _)| same_mailbox(a, &address))
            {
                Some((_, whom)) => whom.push(r.clone()),
                None => addresses.push((address, vec![r.clone()])),
            }
        }
        // One message (and row) an address, naming only its own recipient: a mailbox the
        // relay refuses fails its own row only, and nobody sees the other recipients.
        for (address, whom) in addresses {
            let own = Notice {
                recipients: whom,
                ..notice.clone()
            };
            let payload = serde_json::to_string(&own).unwrap_or_default();
            insert("smtp", std::slice::from_ref(&address), &payload)?;
        }
    }
    if n.webhook.is_some() {
        insert("webhook", &notice.recipients, &payload)?;
    }
    if n.command.is_some() {
        insert("command", &notice.recipients, &payload)?;
    }
    Ok(())
}

/// Whether two addresses name one mailbox: a domain is the same in any case (a local part
/// may not be, so it is compared as written).
fn same_mailbox(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => a == b,
    }
}

pub use crate::store::outbox::Outgoing;

/// The outbox, or only what was given up.
pub fn list(conn: &Db, failed_only: bool) -> Result<Vec<Outgoing>> {
    conn.outbox(failed_only)
}

/// What one round of delivery did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    pub sent: Vec<i64>,
    pub retrying: Vec<i64>,
    pub failed: Vec<i64>,
    /// Due, but not tried: the scope's time budget ran out first (the next sweep sends them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<i64>,
}

/// Which due notifications a process delivers.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// Only the outbox rows in these ranges (start exclusive, end inclusive): what this
    /// process itself queued. `None`: every due row (`pim sweep`).
    pub only: Option<&'a [(i64, i64)]>,
    /// Whether command-channel notifications run here. In the installed pim a command runs
    /// as root (only root configures them), so they wait for root's `pim sweep`.
    pub commands: bool,
    /// How long this process may spend delivering: the command a person waits for stops
    /// claiming rows after it (a relay that never answers costs each row `TIMEOUT`).
    /// `None`: all that are due (`pim sweep`).
    pub budget: Option<std::time::Duration>,
}

impl Scope<'_> {
    fn covers(&self, o: &Outgoing) -> bool {
        (self.commands || o.channel != "command")
            && self
                .only
                .is_none_or(|ranges| ranges.iter().any(|&(a, b)| o.id > a && o.id <= b))
    }
}

/// How long a row claimed for a delivery is left to the process that claimed it: longer than
/// any one delivery takes (each step of one has `TIMEOUT`), short enough that a process
/// stopped after claiming holds a notice back by at most this long.
pub const LEASE_SECS: i64 = 60;

/// Deliver the due notifications in `scope`. Each row is claimed just before it is sent (its
/// next attempt pushed out by `LEASE_SECS`, in a short transaction, only if it is still due)
/// so that two processes never send the same one, and no lock is held while the network is
/// slow.
pub fn deliver_due(
    conn: &mut Db,
    policy: &Policy,
    now: DateTime<Utc>,
    actor: &str,
    scope: Scope<'_>,
) -> Result<Delivery> {
    let started = std::time::Instant::now();
    let t = now.timestamp();
    // Now, for this row: the run's own time plus how long it has gone on.
    let current = || t + started.elapsed().as_secs() as i64;
    let mut due = conn.outbox_due(t)?;
    due.retain(|o| scope.covers(o));
    let mut report = Delivery::default();
    for o in due {
        if scope.budget.is_some_and(|b| started.elapsed() >= b) {
            // Out of time: left due, unclaimed, for the next sweep.
            report.left.push(o.id);
            continue;
        }
        let claim = {
            let at = current();
            let tx = conn.write()?;
            let claim = tx.claim_outgoing(o.id, at, at + LEASE_SECS)?;
            tx.commit()?;
            claim
        };
        let Some(claim) = claim else {
            // Another process claimed or sent it since the list was read.
            continue;
        };
        // A delivery that fails in an unexpected way (a thread that cannot start, say) is a
        // failed try like any other: counted, retried, and recorded when given up.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // A checkpoint goes to the witnesses, not to the notification channels.
            if o.event == "audit.checkpoint" {
                return match o.channel.as_str() {
                    "webhook" => {
                        policy.witness.webhook.as_ref().map(|url| {
                            post_webhook(&crate::policy::Webhook { url: url.clone() }, &o)
                        })
                    }
                    "command" => policy.witness.command.as_ref().map(|argv| {
                        run_command(&crate::policy::NotifyCommand { argv: argv.clone() }, &o)
                    }),
                    _ => None,
                }
                .unwrap_or_else(|| Err("the witness is no longer configured".to_string()));
            }
            match o.channel.as_str() {
                "smtp" => policy.notifications.smtp.as_ref().map(|c| send_mail(c, &o)),
                "webhook" => policy
                    .notifications
                    .webhook
                    .as_ref()
                    .map(|c| post_webhook(c, &o)),
                "command" => policy
                    .notifications
                    .command
                    .as_ref()
                    .map(|c| run_command(c, &o)),
                _ => None,
            }
            .unwrap_or_else(|| Err(format!("the {} channel is no longer configured", o.channel)))
        }))
        .unwrap_or_else(|_| Err("the delivery failed unexpectedly".to_string()));
        // Recorded only while the claim holds: a delivery that outlasted it (a slow relay)
        // leaves the row to the process that claimed it since.
        let at = current();
        let tx = conn.write()?;
        let attempts = claim.attempts + 1;
        match result {
            Ok(()) => {
                tx.outgoing_sent(&claim, at)?;
                report.sent.push(o.id);
            }
            Err(why) if attempts >= MAX_ATTEMPTS => {
                if tx.outgoing_failed(&claim, &why)? {
                    crate::ops::Recorder::new(&tx, now, policy).record(
                        Event::new(actor, "notification.fail")
                            .refused(&format!("Delivery failed {attempts} times: {why}"))
                            .detail("notification", o.id)
                            .detail("channel", o.channel.clone())
                            .detail("event", o.event.clone())
                            .detail("recipients", o.recipients.clone()),
                    )?;
                    report.failed.push(o.id);
                }
            }
            Err(why) => {
                let wait = FIRST_RETRY_SECS << (attempts - 1);
                if tx.outgoing_retry(&claim, &why, at + wait)? {
                    report.retrying.push(o.id);
                }
            }
        }
        tx.commit()?;
    }
    Ok(report)
}

fn send_mail(cfg: &Smtp, o: &Outgoing) -> Result<(), String> {
    use lettre::message::{header::ContentType, Mailbox};
    use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
    use lettre::transport::smtp::extension::ClientId;
    use lettre::Message;
    let notice: serde_json::Value = serde_json::from_str(&o.payload).map_err(|e| e.to_string())?;
    let text = notice["text"].as_str().unwrap_or_default();
    let from: Mailbox = cfg
        .from
        .parse()
        .map_err(|e| format!("bad from address: {e}"))?;
    let mut builder = Message::builder().from(from).subject(format!(
        "[pim] {}: {}",
        o.event,
        text.chars().take(120).collect::<String>()
    ));
    for r in &o.recipients {
        builder = builder.to(r
            .parse::<Mailbox>()
            .map_err(|e| format!("bad address {r}: {e}"))?);
    }
    let body = format!(
        "{text}\n\n{}\n",
        serde_json::to_string_pretty(&notice).unwrap_or_default()
    );
    let message = builder
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| e.to_string())?;
    // Each step (connecting, to each address in turn; the greeting and EHLO; STARTTLS;
    // sending) has `TIMEOUT`, and the delivery as a whole, the lookup included, `DELIVERY`
    // (well within a claim's `LEASE_SECS`): a relay that answers a line at a time, each in
    // time, is given up on there. A delivery given up on is dropped with its connection, which
    // is reset (`SO_LINGER` 0), so that what pim had not sent yet never leaves: nothing more
    // of it reaches the relay later, when another process may have claimed the row.
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the delivery: {e}"))?;
    let hello = ClientId::default();
    let addresses = resolve(&cfg.host, cfg.port)?;
    let delivery = async {
        let stream = connect(&addresses).await?;
        let mut conn = step(AsyncSmtpConnection::connect_with_transport(
            Box::new(stream),
            &hello,
        ))
        .await?;
        if cfg.starttls {
            let tls = TlsParameters::new(cfg.host.clone()).map_err(|e| e.to_string())?;
            step(conn.starttls(tls, &hello)).await?;
        }
        let sent = step(conn.send(message.envelope(), &message.formatted())).await;
        Ok::<_, String>((conn, sent))
    };
    let sent = runtime.block_on(async {
        match tokio::time::timeout(DELIVERY.saturating_sub(started.elapsed()), delivery).await {
            Err(_) => Err(format!(
                "the relay took longer than {} s",
                DELIVERY.as_secs()
            )),
            Ok(Err(e)) => Err(e),
            Ok(Ok((mut conn, sent))) => {
                // Sent or refused, the outcome is known: QUIT (outside `DELIVERY`, so that a
                // slow goodbye cannot turn a sent message into a failed try, sent again).
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.abort()).await;
                sent.map(|_| ())
            }
        }
    });
    runtime.shutdown_background();
    sent
}

/// A connection to the first of `addresses` that takes one within `TIMEOUT`, reset rather
/// than closed when dropped.
async fn connect(addresses: &[std::net::SocketAddr]) -> Result<tokio::net::TcpStream, String> {
    let mut last = String::from("no address to connect to");
    for address in addresses {
        match tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                stream
                    .set_zero_linger()
                    .map_err(|e| format!("cannot set up the connection to {address}: {e}"))?;
                return Ok(stream);
            }
            Ok(Err(e)) => last = format!("cannot connect to {address}: {e}"),
            Err(_) => last = format!("cannot connect to {address} within {} s", TIMEOUT.as_secs()),
        }
    }
    Err(last)
}

/// The addresses of `host`, looked up on a thread of its own (the system's resolver has no
/// timeout of ours) and given `TIMEOUT`: a lookup given up on sends nothing. A process that
/// may start no thread gets an error, not a panic (tokio's own lookup would panic).
fn resolve(host: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![std::net::SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::Builder::new()
        .name("pim-resolve".to_string())
        .spawn(move || {
            let _ = tx.send(
                (name.as_str(), port)
                    .to_socket_addrs()
                    .map(Iterator::collect::<Vec<_>>),
            );
        })
        .map_err(|e| format!("cannot look up {host}: {e}"))?;
    match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(found)) if !found.is_empty() => Ok(found),
        Ok(Ok(_)) => Err(format!("{host} has no address")),
        Ok(Err(e)) => Err(format!("cannot look up {host}: {e}")),
        Err(_) => Err(format!(
            "cannot look up {host} within {} s",
            TIMEOUT.as_secs()
        )),
    }
}

/// One step of an SMTP delivery, given `TIMEOUT`.
async fn step<T>(
    f: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(done) => done.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the relay did not answer within {} s",
            TIMEOUT.as_secs()
        )),
    }
}

fn post_webhook(cfg: &Webhook, o: &Outgoing) -> Result<(), String> {
    // No proxy from the environment: the caller's HTTP_PROXY must not receive other
    // people's notices.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .proxy(None)
        .build()
        .into();
    agent
        .post(&cfg.url)
        .header("Content-Type", "application/json")
        .send(o.payload.as_str())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn run_command(cfg: &NotifyCommand, o: &Outgoing) -> Result<(), String> {
    // The caller's own identity, no pim group, and an environment of pim's choosing: the
    // caller's PATH must not pick the program, nor anything else of theirs reach it.
    // A group of its own: a command that runs over its time is ended with whatever it
    // started (its children went on, as root's from a root sweep, with each retry), and it
    // never reads the caller's terminal.
    let mut child = crate::privilege::command_alone(&cfg.argv[0])
        .args(&cfg.argv[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C.UTF-8")
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", cfg.argv[0]))?;
    // The payload is written as the command reads it, under the same deadline: a command
    // that never reads its stdin (or a large payload into a full pipe) cannot hold pim.
    let mut stdin = child.stdin.take();
    if let Some(pipe) = &stdin {
        crate::privilege::set_nonblocking(pipe);
    }
    let mut left = o.payload.as_bytes();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(pipe) = stdin.as_mut() {
            match pipe.write(left) {
                Ok(n) => left = &left[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The command closed its stdin (or ended): nothing more to write.
                Err(_) => left = &[],
            }
            if left.is_empty() {
                stdin = None;
            }
        }
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(format!("{} exited with {status}", cfg.argv[0])),
            None if std::time::Instant::now() >= deadline => {
                if let Ok(group) = i32::try_from(child.id()) {
                    // SAFETY: kill has no memory effects; the group is the command's own.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} took longer than {}s",
                    cfg.argv[0],
                    TIMEOUT.as_secs()
                ));
            }
            None if stdin.is_some() => std::thread::sleep(Duration::from_millis(1)),
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_mailbox;

    /// A relay's addresses are tried in turn: one that refuses (or, given 5 s, never
    /// answers) does not keep the message from the next.
    #[test]
    fn the_next_address_is_tried_when_one_fails() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let good = listener.local_addr().unwrap();
        // A port just closed: connecting to it is refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let stream = runtime.block_on(super::connect(&[closed, good])).unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good);
        let e = runtime.block_on(super::connect(&[closed])).unwrap_err();
        assert!(e.contains(&format!("cannot connect to {closed}")), "{e}");
    }

    #[test]
    fn one_mailbox_is_told_once_whatever_the_case_of_its_domain() {
        assert!(same_mailbox("carol@Example.COM", "carol@example.com"));
        // A local part may be case-sensitive: two mailboxes, as written.
        assert!(!same_mailbox("Carol@example.com", "carol@example.com"));
        assert!(!same_mailbox("carol@example.com", "carol@example.org"));
    }
}
