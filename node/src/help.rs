//! Examples shown at the end of every command's `--help`, kept in one table so that a test can
//! hold each of them to the parser and find a command without one.

use clap::Command;

/// `(command path, examples)`: one example per line, each a whole `fogmesh` command line.
const EXAMPLES: &[(&str, &str)] = &[
    (
        "init",
        "fogmesh init --home /var/lib/fogmesh --org hospital --mesh flu-response",
    ),
    ("run", "fogmesh run --home /var/lib/fogmesh"),
    ("id", "fogmesh id --home /var/lib/fogmesh"),
    ("status", "fogmesh status --json"),
    ("invite", "fogmesh invite --ttl 3600"),
    ("join", "fogmesh join --home ./pharmacy fm-invite-..."),
    ("peers", "fogmesh peers --json"),
    ("member", "fogmesh member list"),
    ("member list", "fogmesh member list --json"),
    ("member remove", "fogmesh member remove insurer"),
    ("member role", "fogmesh member role pharmacy admin"),
    ("key", "fogmesh key rotate"),
    ("key rotate", "fogmesh key rotate"),
    (
        "app",
        "fogmesh app add restock --rights read:hospital/flu-cases --save-token restock.token",
    ),
    (
        "app add",
        "fogmesh app add restock --rights read:hospital/flu-cases,query:hospital/*",
    ),
    ("app list", "fogmesh app list"),
    ("app remove", "fogmesh app remove restock"),
    (
        "app rotate",
        "fogmesh app rotate restock --save-token restock.token",
    ),
    (
        "app rights",
        "fogmesh app rights restock --rights read:hospital/flu-cases",
    ),
    ("admin", "fogmesh admin rotate-token"),
    ("admin rotate-token", "fogmesh admin rotate-token"),
    (
        "dataset",
        "fogmesh dataset create flu-cases --shared --readers pharmacy,agency",
    ),
    (
        "dataset create",
        "fogmesh dataset create flu-cases --shared --readers pharmacy,agency --priority high\n\
         fogmesh dataset create patients --retention-days 365",
    ),
    ("dataset list", "fogmesh dataset list --json"),
    ("flow", "fogmesh flow list"),
    (
        "flow add",
        "fogmesh flow add flu-daily --source hospital/patients --target hospital/flu-daily \
         --group-by segment:0,bucket:1d --agg count --min-rows 5",
    ),
    ("flow list", "fogmesh flow list"),
    ("flow remove", "fogmesh flow remove flu-daily"),
    (
        "grant",
        "fogmesh grant hospital/flu-cases --to pharmacy/restock --rights read,query --expires 30d\n\
         fogmesh grant hospital/beds --to pharmacy/* --rights read,write --prefix district-7",
    ),
    ("revoke", "fogmesh revoke 01JF0000000000000000000000"),
    ("grants", "fogmesh grants --json"),
    (
        "publish",
        "fogmesh publish hospital/flu-cases --name district-7/ward-3/flu-admission --data '{\"cases\": 4}'\n\
         fogmesh publish hospital/flu-cases --batch 1000 < cases.ndjson",
    ),
    (
        "query",
        "fogmesh query hospital/flu-cases --where 'cases>=5' --order desc\n\
         fogmesh query hospital/flu-daily --group-by segment:0 --agg count,sum:count\n\
         fogmesh query hospital/flu-cases --format ndjson --limit 1000000 > all.ndjson",
    ),
    (
        "sql",
        "fogmesh sql \"SELECT segment(1) AS district, sum(cases) FROM \\\"hospital/flu-cases\\\" GROUP BY district\"\n\
         fogmesh sql --federated \"SELECT bucket('1d') AS day, count(*) FROM \\\"hospital/flu-cases\\\" GROUP BY day\"\n\
         fogmesh sql --explain \"SELECT id, cases FROM \\\"hospital/flu-cases\\\" WHERE cases > 3 OR district IN ('d1', 'd2')\"",
    ),
    ("watch", "fogmesh watch hospital/flu-cases --count 10"),
    (
        "search",
        "fogmesh search sightings --where 'child=ab12' --location-segment 0 --timeout-ms 3000",
    ),
    (
        "demo",
        "fogmesh demo\n\
         fogmesh demo --lost-child",
    ),
    (
        "audit",
        "fogmesh audit --since 24h --action grant\n\
         fogmesh audit --org insurer --refused",
    ),
    ("audit verify", "fogmesh audit verify"),
];

/// `cmd` with the examples of the table after the help of it and of each of its subcommands.
pub(crate) fn with_examples(cmd: Command) -> Command {
    add_examples(cmd, "")
}

fn add_examples(cmd: Command, path: &str) -> Command {
    let mut cmd = match EXAMPLES.iter().find(|(p, _)| *p == path) {
        Some((_, ex)) => cmd.after_help(format!("Examples:\n  {}", ex.replace('\n', "\n  "))),
        None => cmd,
    };
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        let sub = if path.is_empty() {
            name.clone()
        } else {
            format!("{path} {name}")
        };
        cmd = cmd.mut_subcommand(&name, |c| add_examples(c, &sub));
    }
    cmd
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::cli::Cli;

    /// Every command path under `cmd` (its own subcommands' names, space-separated).
    fn paths(cmd: &Command, prefix: &str, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands() {
            let path = format!("{prefix}{}", sub.get_name());
            paths(sub, &format!("{path} "), out);
            out.push(path);
        }
    }

    /// Splits a command line as a shell would, cut at a redirection.
    fn words(line: &str) -> Vec<String> {
        let mut out = shlex::split(line).unwrap_or_else(|| panic!("{line}: unbalanced quotes"));
        if let Some(at) = out.iter().position(|w| w == "<" || w == ">") {
            out.truncate(at);
        }
        out
    }

    #[test]
    fn every_command_has_examples_and_every_example_parses() {
        let mut all = Vec::new();
        paths(&Cli::command(), "", &mut all);
        assert_eq!(all.len(), EXAMPLES.len(), "one entry per command: {all:?}");
        for path in &all {
            assert!(
                EXAMPLES.iter().any(|(p, _)| p == path),
                "`fogmesh {path}` has no example"
            );
        }
        for (path, examples) in EXAMPLES {
            assert!(all.contains(&path.to_string()), "no command `{path}`");
            for line in examples.lines() {
                let args = words(line);
                let parsed = Cli::command().try_get_matches_from(&args);
                assert!(parsed.is_ok(), "{line}: {:?}", parsed.err());
                let mut named = args[1..].iter().take_while(|a| !a.starts_with('-'));
                for word in path.split(' ') {
                    assert_eq!(named.next().map(String::as_str), Some(word), "{line}");
                }
            }
        }
    }

    #[test]
    fn help_ends_with_the_examples() {
        let mut cmd = with_examples(Cli::command());
        let query = cmd.find_subcommand_mut("query").expect("query");
        let help = query.render_help().to_string();
        assert!(
            help.contains("Examples:\n  fogmesh query hospital/flu-cases --where"),
            "{help}"
        );
    }
}
