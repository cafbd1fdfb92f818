//! The udev rules in `udev/`, checked without a udev daemon. `udevadm verify` (systemd ≥ 253)
//! runs when the installed udevadm has it; Debian 12's systemd 252 does not, and `udevadm test`
//! needs a real device and the system's rules directories, so the rules are also checked here by
//! our own parser of the rules syntax (udev(7)): every line is comma-separated
//! `KEY[{attr}] OP "value"` with known keys and operators, assignment keys never compare,
//! match keys never assign, quotes close, every GOTO has its LABEL. It cannot tell whether udev
//! would match a real device: that takes a machine with the device plugged in.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;

const MATCH: &[&str] = &[
    "ACTION",
    "DEVPATH",
    "KERNEL",
    "KERNELS",
    "NAME",
    "SYMLINK",
    "SUBSYSTEM",
    "SUBSYSTEMS",
    "DRIVER",
    "DRIVERS",
    "ATTR",
    "ATTRS",
    "SYSCTL",
    "ENV",
    "CONST",
    "TAG",
    "TAGS",
    "TEST",
    "PROGRAM",
    "RESULT",
];
const ASSIGN: &[&str] = &[
    "NAME", "SYMLINK", "OWNER", "GROUP", "MODE", "SECLABEL", "ATTR", "SYSCTL", "ENV", "TAG", "RUN",
    "LABEL", "GOTO", "IMPORT", "OPTIONS",
];
const WITH_ATTR: &[&str] = &[
    "ATTR", "ATTRS", "SYSCTL", "ENV", "CONST", "TEST", "IMPORT", "RUN", "SECLABEL",
];

/// The problems in one rules file's text (empty: none found).
fn check_rules(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let (mut gotos, mut labels) = (Vec::new(), HashSet::new());
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.ends_with('\\') {
            problems.push(format!("line {n}: continuation lines are not used here"));
            continue;
        }
        let mut rest = line;
        let mut assigns = 0;
        while !rest.is_empty() {
            let key_len = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(rest.len());
            let key = &rest[..key_len];
            rest = &rest[key_len..];
            let mut has_attr = false;
            if let Some(r) = rest.strip_prefix('{') {
                let Some(end) = r.find('}') else {
                    problems.push(format!("line {n}: `{key}{{` is not closed"));
                    break;
                };
                has_attr = true;
                rest = &r[end + 1..];
            }
            let op = ["==", "!=", "+=", "-=", ":=", "="]
                .into_iter()
                .find(|op| rest.starts_with(op));
            let Some(op) = op else {
                problems.push(format!("line {n}: no operator after `{key}`"));
                break;
            };
            rest = &rest[op.len()..];
            let Some(r) = rest.strip_prefix('"') else {
                problems.push(format!("line {n}: the value of `{key}` is not quoted"));
                break;
            };
            let Some(end) = r.find('"') else {
                problems.push(format!("line {n}: the value of `{key}` is not closed"));
                break;
            };
            let value = &r[..end];
            rest = r[end + 1..].trim_start();
            let compare = op == "==" || op == "!=";
            let known = if compare {
                MATCH.contains(&key)
            } else {
                ASSIGN.contains(&key)
            };
            if !known {
                problems.push(format!(
                    "line {n}: `{key}` cannot be used with `{op}` (unknown key or wrong operator)"
                ));
            }
            if WITH_ATTR.contains(&key) != has_attr && !(key == "IMPORT" || key == "RUN") {
                problems.push(format!(
                    "line {n}: `{key}` {} an {{attribute}}",
                    if has_attr { "takes no" } else { "needs" }
                ));
            }
            if !compare {
                assigns += 1;
            }
            match key {
                "GOTO" => gotos.push((n, value.to_string())),
                "LABEL" => {
                    labels.insert(value.to_string());
                }
                _ => {}
            }
            if !rest.is_empty() {
                match rest.strip_prefix(',') {
                    Some(r) => rest = r.trim_start(),
                    None => {
                        problems.push(format!("line {n}: expected `,` before `{rest}`"));
                        break;
                    }
                }
            }
        }
        if assigns == 0
            && !problems
                .iter()
                .any(|p| p.starts_with(&format!("line {n}:")))
        {
            problems.push(format!("line {n}: a rule that only matches does nothing"));
        }
    }
    for (n, label) in gotos {
        if !labels.contains(&label) {
            problems.push(format!("line {n}: GOTO \"{label}\" has no LABEL"));
        }
    }
    problems
}

fn rules_files() -> Vec<PathBuf> {
    let dir = super::repo().join("udev");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rules"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rules in {}", dir.display());
    files
}

#[test]
fn udev_rules_parse_and_do_what_the_readme_says() {
    let udevadm = super::need("udevadm");
    let has_verify = Command::new(&udevadm)
        .args(["verify", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    for f in rules_files() {
        let text = std::fs::read_to_string(&f).unwrap();
        let problems = check_rules(&text);
        assert!(problems.is_empty(), "{}: {problems:#?}", f.display());
        if has_verify {
            let out = Command::new(&udevadm)
                .arg("verify")
                .arg(&f)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "udevadm verify {}: {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // What the rules are for.
        assert!(text.contains(r#"TAG+="systemd", ENV{SYSTEMD_USER_WANTS}+="keywardd.service""#));
        assert!(
            text.contains(r#"ENV{ID_USB_INTERFACES}=="*:0b????:*""#),
            "CCID readers"
        );
        assert!(
            text.contains(r#"ATTR{idVendor}=="1050", ATTR{idProduct}=="0030", TAG+="uaccess""#),
            "YubiHSM 2"
        );
        assert!(text.contains(r#"ACTION=="remove", GOTO="keyward_end""#));
    }
}

#[test]
fn udev_rule_checker_catches_mistakes() {
    assert!(check_rules("ACTION==\"add\", TAG+=\"uaccess\"\n").is_empty());
    for (bad, why) in [
        ("ACTION=\"add\", TAG+=\"x\"", "cannot be used"),
        ("ACTION==\"add\" TAG+=\"x\"", "expected `,`"),
        ("ATTR{idVendor}==\"1050, TAG+=\"x\"", "`,`"),
        ("ATRS{idVendor}==\"1050\", TAG+=\"x\"", "unknown key"),
        ("ENV==\"x\", TAG+=\"x\"", "needs an"),
        ("GOTO=\"nowhere\"", "has no LABEL"),
        ("ACTION==\"add\"", "does nothing"),
        ("ACTION==add, TAG+=\"x\"", "not quoted"),
    ] {
        let p = check_rules(bad);
        assert!(p.iter().any(|p| p.contains(why)), "{bad}: {p:?}");
    }
}
