//! The scheduled, retry and dead sets: list, show, and act on one job or on every job a
//! filter matches.

use std::io::{BufRead, IsTerminal, Write};

use indicatif::ProgressBar;
use jobqueue::admin::SetEntry;
use jobqueue::{Admin, SortedSet};
use serde_json::{json, Value};

use crate::out::{seconds, Out};
use crate::{Failure, Filter, SetAction, Target};

pub(crate) async fn set(
    admin: &Admin,
    out: &Out,
    set: SortedSet,
    action: SetAction,
) -> Result<(), Failure> {
    match action {
        SetAction::List(filter) => {
            let entries = matching(admin, set, &filter).await?;
            let json = Value::Array(entries.iter().map(entry_json).collect());
            let rows = entries
                .iter()
                .map(|e| match &e.job {
                    Ok(job) => vec![
                        job.jid.clone(),
                        job.class.clone(),
                        job.queue.clone(),
                        format!("{:.0}", seconds(e.at)),
                        job.error_message.clone().unwrap_or_default(),
                    ],
                    Err(raw) => vec![
                        String::new(),
                        "(not a job)".into(),
                        String::new(),
                        format!("{:.0}", seconds(e.at)),
                        raw.chars().take(60).collect(),
                    ],
                })
                .collect();
            out.table(&["jid", "class", "queue", "at", "error"], rows, json);
            Ok(())
        }
        SetAction::Show { jid } => {
            let entry = admin
                .find(set, &jid, None)
                .await?
                .ok_or_else(|| not_found(set, &jid))?;
            let value = entry_json(&entry);
            if out.json {
                println!("{value}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            }
            Ok(())
        }
        SetAction::Retry(target) => act(admin, out, set, target, Act::Retry).await,
        SetAction::Delete(target) => act(admin, out, set, target, Act::Delete).await,
        SetAction::Kill(target) => {
            if set == SortedSet::Dead {
                return Err(Failure::Usage("dead jobs are dead already".into()));
            }
            act(admin, out, set, target, Act::Kill).await
        }
    }
}

#[derive(Clone, Copy)]
enum Act {
    Retry,
    Delete,
    Kill,
}

async fn act(
    admin: &Admin,
    out: &Out,
    set: SortedSet,
    target: Target,
    act: Act,
) -> Result<(), Failure> {
    let entries = match &target.jid {
        Some(jid) => vec![admin
            .find(set, jid, None)
            .await?
            .ok_or_else(|| not_found(set, jid))?],
        None => {
            let entries = matching(admin, set, &target.filter).await?;
            let verb = match act {
                Act::Retry => "send to their queue",
                Act::Delete => "delete",
                Act::Kill => "move to the dead set",
            };
            confirm(target.yes, &format!("{verb} {} job(s)?", entries.len()))?;
            entries
        }
    };
    // A progress bar on a terminal, for long bulk actions; nothing for scripts.
    let progress = if std::io::stderr().is_terminal() && entries.len() > 1 {
        ProgressBar::new(entries.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    let mut done = 0;
    for entry in &entries {
        let moved = match act {
            Act::Retry => admin.run_now(set, entry).await?,
            Act::Delete => admin.delete(set, entry).await?,
            Act::Kill => admin.kill(set, entry).await?,
        };
        done += usize::from(moved);
        progress.inc(1);
    }
    progress.finish_and_clear();
    let verb = match act {
        Act::Retry => "sent to their queue",
        Act::Delete => "deleted",
        Act::Kill => "moved to the dead set",
    };
    out.done(&format!("{done} job(s) {verb}"));
    Ok(())
}

async fn matching(
    admin: &Admin,
    set: SortedSet,
    filter: &Filter,
) -> Result<Vec<SetEntry>, Failure> {
    Ok(admin
        .all_entries(set)
        .await?
        .into_iter()
        .filter(|e| {
            e.matches(
                filter.class.as_deref(),
                filter.queue.as_deref(),
                filter.error.as_deref(),
            )
        })
        .collect())
}

/// An entry as JSON, with its sensitive values hidden (the job as the admin shows it).
fn entry_json(entry: &SetEntry) -> Value {
    let job = match &entry.job {
        Ok(job) => serde_json::to_value(job).unwrap_or(Value::Null),
        Err(text) => Value::String(text.clone()),
    };
    json!({ "at": seconds(entry.at), "job": job })
}

fn not_found(set: SortedSet, jid: &str) -> Failure {
    Failure::NotFound(format!(
        "no job {jid} in the {} set; `jobqueue {} list` shows what is there",
        set.key(),
        match set {
            SortedSet::Retry => "retries",
            SortedSet::Schedule => "scheduled",
            SortedSet::Dead => "dead",
        }
    ))
}

/// Asks before a bulk action, on a terminal; elsewhere `--yes` is required.
pub(crate) fn confirm(yes: bool, question: &str) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(format!(
            "{question} Not confirmed: add --yes to do it without a terminal"
        )));
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::Usage("not confirmed; nothing done".into()))
    }
}
