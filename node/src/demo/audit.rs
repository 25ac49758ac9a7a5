//! The demos' audit summary: each node's audit log counted per action and outcome, its hash
//! chain verified, and the actions the scenario performed checked to be there.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::Value;

use super::procs::{Org, Timeline};

/// An entry the scenario must have left: (node, action, outcome, actor's organization).
pub type Expected = (&'static str, &'static str, &'static str, &'static str);

/// Counts per (action, outcome) and actor organizations, of one node's log.
struct Counts {
    per: BTreeMap<(String, String), usize>,
    actors: BTreeMap<(String, String), Vec<String>>,
    total: usize,
}

fn counts(entries: &[Value]) -> Counts {
    let mut c = Counts {
        per: BTreeMap::new(),
        actors: BTreeMap::new(),
        total: entries.len(),
    };
    for e in entries {
        let key = (
            e["action"].as_str().unwrap_or("?").to_owned(),
            e["outcome"].as_str().unwrap_or("?").to_owned(),
        );
        let org = e["actor"].as_str().unwrap_or("?").split('/').next();
        let actors = c.actors.entry(key.clone()).or_default();
        actors.extend(org.map(str::to_owned));
        *c.per.entry(key).or_default() += 1;
    }
    c
}

fn line(c: &Counts) -> String {
    let part = |refused: bool| {
        c.per
            .iter()
            .filter(|((_, o), _)| (o == "refused") == refused)
            .map(|((a, _), n)| format!("{a} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let refused = part(true);
    let refused = if refused.is_empty() {
        String::new()
    } else {
        format!("; refused: {refused}")
    };
    format!(
        "{} entries, chain intact: {}{refused}",
        c.total,
        part(false)
    )
}

/// Prints every node's audit summary and fails unless each log verifies and every `expected`
/// entry is in its node's log.
pub fn summary(t: &Timeline, orgs: &[Org], expected: &[Expected]) -> Result<()> {
    println!();
    let mut all = BTreeMap::new();
    for o in orgs {
        let v = o.api.get("/v1/audit/verify")?;
        if v["ok"] != true {
            bail!("{}'s audit log fails verification: {}", o.name, v["bad"]);
        }
        let listed = o.api.get("/v1/audit?limit=10000")?;
        let c = counts(listed["entries"].as_array().map_or(&[][..], |a| a));
        t.say(o.name, format!("audit log: {}", line(&c)));
        all.insert(o.name, c);
    }
    for (node, action, outcome, actor) in expected {
        let key = (action.to_string(), outcome.to_string());
        let found = all.iter().any(|(n, c)| {
            (*node == "any" || n == node)
                && c.actors
                    .get(&key)
                    .is_some_and(|a| a.iter().any(|o| o == actor))
        });
        if !found {
            bail!("no {outcome} {action} by {actor} in the audit log of {node}");
        }
    }
    t.say(
        "all",
        format!(
            "every action of the scenario is in the audit logs ({} checks); every chain verifies",
            expected.len()
        ),
    );
    Ok(())
}
