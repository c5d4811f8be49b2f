//! Dynamic shell completion (`source <(COMPLETE=bash pim)`): roles, users, scopes and
//! request ids from the database, as the caller may see them. A completion never prompts,
//! never prints an error and never writes anything.

use super::context::Ctx;
use super::output::safe;
use super::Cli;
use clap::Parser;
use clap_complete::CompletionCandidate;

/// Open the database the way a plain command would (PIM_DB, PIM_USER) and ask it.
fn with_pim<T>(f: impl FnOnce(&crate::Pim, &str) -> crate::Result<Vec<T>>) -> Vec<T> {
    let Ok(cli) = Cli::try_parse_from(["pim", "--no-input", "-q", "whoami"]) else {
        return Vec::new();
    };
    let Ok(ctx) = Ctx::new(&cli) else {
        return Vec::new();
    };
    let Ok((pim, actor)) = ctx.open() else {
        return Vec::new();
    };
    f(&pim, &actor).unwrap_or_default()
}

/// Role keys, with their display names as help.
pub fn roles() -> Vec<CompletionCandidate> {
    with_pim(|pim, _| {
        Ok(pim
            .policy()?
            .roles
            .values()
            .map(|r| CompletionCandidate::new(&r.key).help(Some(safe(&r.name).into_owned().into())))
            .collect())
    })
}

/// User names, for those who oversee someone (others learn no names this way); always
/// the caller's own.
pub fn users() -> Vec<CompletionCandidate> {
    with_pim(|pim, actor| {
        let viewer = pim.viewer(actor)?;
        if !viewer.oversees_anyone() {
            return Ok(vec![CompletionCandidate::new(actor)]);
        }
        Ok(pim
            .users()?
            .into_iter()
            .map(|u| {
                let help = u.display_name.clone().unwrap_or_else(|| u.kind.clone());
                CompletionCandidate::new(u.name).help(Some(safe(&help).into_owned().into()))
            })
            .collect())
    })
}

/// The scopes of the caller's eligibilities and holdings (the root always).
pub fn scopes() -> Vec<CompletionCandidate> {
    let mut scopes = with_pim(|pim, actor| {
        let s = pim.status(actor)?;
        Ok(s.eligible
            .iter()
            .map(|a| a.scope.clone())
            .chain(s.active.iter().map(|h| h.scope.clone()))
            .collect())
    });
    scopes.push("/".to_string());
    scopes.sort();
    scopes.dedup();
    scopes.into_iter().map(CompletionCandidate::new).collect()
}

/// Request ids: the caller's own, and those they may decide.
pub fn requests() -> Vec<CompletionCandidate> {
    with_pim(|pim, actor| {
        let viewer = pim.viewer(actor)?;
        let mut list = pim.requests_seen_by(&viewer, Some(actor))?;
        list.extend(pim.decidable(actor)?);
        list.sort_by_key(|r| r.id);
        list.dedup_by_key(|r| r.id);
        Ok(list
            .into_iter()
            .rev()
            .map(|r| {
                let help = format!("{} {} at {} ({})", r.user, r.role, r.scope, r.status);
                CompletionCandidate::new(r.id.to_string())
                    .help(Some(safe(&help).into_owned().into()))
            })
            .collect())
    })
}

/// Review ids the caller may see.
pub fn reviews() -> Vec<CompletionCandidate> {
    with_pim(|pim, actor| {
        let viewer = pim.viewer(actor)?;
        Ok(pim
            .reviews_seen_by(&viewer)?
            .into_iter()
            .map(|r| {
                let help = format!("{} ({}, {})", r.name, r.role, r.state);
                CompletionCandidate::new(r.id.to_string())
                    .help(Some(safe(&help).into_owned().into()))
            })
            .collect())
    })
}
