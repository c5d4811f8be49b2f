//! Proofs, not just logs: signed checkpoints of the audit log's Merkle tree catch what the
//! hash chain alone cannot (the newest events cut off, the whole chain rewritten
//! consistently), on both backends.

use crate::support::{Env, Run};

/// A database with some history, and a signed checkpoint of it in `cp.txt`.
fn with_checkpoint() -> Env {
    let env = Env::new();
    env.init();
    for i in 0..120 {
        env.as_("admin", &["user", "add", &format!("user{i:03}")])
            .expect(0);
    }
    env.as_("admin", &["audit", "checkpoint", "--output", "cp.txt"])
        .expect(0);
    env
}

fn verify(env: &Env, checkpoint: bool) -> Run {
    if checkpoint {
        env.as_("admin", &["audit", "verify", "--checkpoint", "cp.txt"])
    } else {
        env.as_("admin", &["audit", "verify"])
    }
}

#[test]
fn a_checkpoint_is_a_signed_note_its_key_verifies() {
    let env = with_checkpoint();
    let note = std::fs::read_to_string(env.path("cp.txt")).unwrap();
    let key = env.as_("admin", &["audit", "key"]).expect(0).stdout;
    let name = key.split('+').next().unwrap();
    let lines: Vec<&str> = note.lines().collect();
    assert_eq!(lines[0], name, "origin line");
    let events = env.count("SELECT count(*) FROM audit_events");
    assert_eq!(lines[1], events.to_string(), "tree size");
    assert_eq!(lines[2].len(), 44, "base64 of 32 bytes");
    assert_eq!(lines[3], "");
    assert!(lines[4].starts_with(&format!("\u{2014} {name} ")), "{note}");
    // More events later: still an extension of the checkpoint.
    env.as_("admin", &["user", "add", "late"]).expect(0);
    let ok = verify(&env, true).expect(0);
    assert!(
        ok.stdout.contains("extends the 1 signed checkpoint"),
        "{}",
        ok.stdout
    );
    // A changed byte in the checkpoint: refused, named.
    // (The size line itself: the origin's random hex may hold the same digits.)
    let mut forged_lines = lines.clone();
    let smaller = (events - 1).to_string();
    forged_lines[1] = &smaller;
    let forged = forged_lines.join("\n") + "\n";
    assert_ne!(forged, note);
    std::fs::write(env.path("cp.txt"), forged).unwrap();
    let r = verify(&env, true).expect(1);
    assert!(r.stderr.contains("cp.txt"), "{}", r.stderr);
}

#[test]
fn truncation_by_one_and_by_a_hundred_fools_verify_but_not_the_checkpoint() {
    for cut in [1, 100] {
        let env = with_checkpoint();
        env.drop_audit_triggers();
        env.sql(&format!(
            "DELETE FROM audit_events WHERE seq > (SELECT max(seq) FROM audit_events) - {cut}; \
             DELETE FROM merkle_nodes"
        ));
        let plain = verify(&env, false).expect(0);
        assert!(plain.stdout.contains("holds"), "{}", plain.stdout);
        let r = verify(&env, true).expect(1);
        assert!(r.stderr.contains("cut off"), "cut {cut}: {}", r.stderr);
        assert!(r.stderr.contains("cp.txt"), "{}", r.stderr);
    }
}

#[test]
fn a_consistent_rewrite_fools_verify_but_not_the_checkpoint() {
    let env = with_checkpoint();
    env.drop_audit_triggers();
    // Blame moved to someone else, and every hash after it recomputed: the chain holds.
    let db = if crate::support::on_postgres() {
        pim::store::pg::open(env.url(), false).unwrap().conn
    } else {
        pim::store::open(&env.db).unwrap().conn
    };
    let mut events = Vec::new();
    pim::audit::for_each(&db, &pim::audit::Filter::default(), None, |e| {
        events.push(e);
        Ok(())
    })
    .unwrap();
    let mut prev = pim::audit::GENESIS.to_string();
    for e in &mut events {
        if e.seq == 5 {
            e.actor = "carol".to_string();
        }
        e.prev_hash = prev.clone();
        e.hash = e.compute_hash();
        prev = e.hash.clone();
        env.sql(&format!(
            "UPDATE audit_events SET actor = '{}', prev_hash = '{}', hash = '{}' WHERE seq = {}",
            e.actor, e.prev_hash, e.hash, e.seq
        ));
    }
    env.sql("DELETE FROM merkle_nodes");
    drop(db);
    verify(&env, false).expect(0);
    let r = verify(&env, true).expect(1);
    assert!(r.stderr.contains("rewritten"), "{}", r.stderr);
}

/// An independent verifier of the C2SP format (the `signed_note` crate, a port of Go's
/// sumdb/note) reads pim's checkpoint with pim's verifier key, and refuses a changed one.
#[test]
fn the_signed_note_crate_verifies_pims_checkpoint() {
    use signed_note::{Note, StandardVerifier, VerifierList};
    let env = with_checkpoint();
    let note = std::fs::read(env.path("cp.txt")).unwrap();
    let vkey = env.as_("admin", &["audit", "key"]).expect(0).stdout;
    let verifier = StandardVerifier::new(vkey.trim()).expect("a C2SP verifier key");
    let known = VerifierList::new(vec![Box::new(verifier)]);
    let parsed = Note::from_bytes(&note).expect("a C2SP signed note");
    let (verified, _) = parsed.verify(&known).expect("signed by pim's key");
    assert_eq!(verified.len(), 1);
    let text = String::from_utf8(parsed.text().to_vec()).unwrap();
    assert_eq!(text.lines().count(), 3, "origin, size, root: {text}");
    // One changed byte in the body: the crate refuses it too.
    let mut forged = note.clone();
    let at = note.iter().position(|&b| b == b'\n').unwrap() + 1;
    forged[at] = if forged[at] == b'9' { b'8' } else { b'9' };
    let forged = Note::from_bytes(&forged).unwrap();
    assert!(forged.verify(&known).is_err());
}

/// A receipt of one activation verifies offline, by pim and by the independent Python
/// script (standard library only, its own Ed25519), and no changed byte passes either.
/// `pim receipt verify` and examples/verify_receipt.py on `receipt` (in the test's directory,
/// against its pim.vkey), offline: no database.
fn offline(env: &Env, receipt: &str) -> (std::process::Output, std::process::Output) {
    let pim = std::process::Command::new(crate::support::bin())
        .args(["receipt", "verify", receipt, "--key", "pim.vkey"])
        .current_dir(env.dir.path())
        .env("PIM_DB", "/nonexistent/pim.db")
        .output()
        .unwrap();
    let py = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/verify_receipt.py"
        ))
        .args([receipt, "pim.vkey"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    (pim, py)
}

/// The seed of the key that signs the checkpoints of the log `origin` names (to sign what pim
/// would not, and see the verifiers refuse it on its merits).
fn signing_seed(env: &Env, origin: &str) -> [u8; 32] {
    let instance = origin.strip_prefix("pim.local/").unwrap();
    let key_file = env
        .dir
        .path()
        .join(".config/pim/keys")
        .join(format!("{instance}.key"));
    let key_hex = std::fs::read_to_string(&key_file).unwrap();
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"pim key derivation: checkpoint signing key\n");
    // The key is the file's first line (a server it is bound to follows it).
    h.update(hex::decode(key_hex.lines().next().unwrap().trim()).unwrap());
    h.finalize().into()
}

#[test]
fn a_receipt_verifies_offline_by_pim_and_by_an_independent_script() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.user("carol");
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "on call"])
        .expect(0);
    let id = env
        .activate(
            "bob",
            &bob,
            "db-admin",
            &["-j", "INC-7 disk full", "--json"],
        )
        .expect(0)
        .json()["id"]
        .as_i64()
        .unwrap();
    env.as_("bob", &["deactivate", "db-admin"]).expect(0);
    // Someone else's request is not carol's to prove (nor to learn of).
    env.as_("carol", &["receipt", &id.to_string()]).expect(4);
    env.as_("bob", &["receipt", &id.to_string(), "--output", "r.json"])
        .expect(0);
    let key = env.as_("admin", &["audit", "key"]).expect(0).stdout;
    std::fs::write(env.path("pim.vkey"), &key).unwrap();
    let offline = |receipt: &str| {
        let (pim, py) = offline(&env, receipt);
        (pim.status.code().unwrap(), py.status.code().unwrap())
    };
    assert_eq!(offline("r.json"), (0, 0));
    let text = std::fs::read_to_string(env.path("r.json")).unwrap();
    assert!(text.contains("activation.deactivate"), "{text}");
    let mut tried = 0;
    for i in (0..text.len()).step_by(37) {
        let c = text.as_bytes()[i];
        if !c.is_ascii_alphanumeric() {
            continue;
        }
        // A character of the other half of base64's alphabet: its top bit always changes the
        // decoded bytes (a base64 value's last character also carries padding bits, which a
        // lenient decoder such as Python's ignores: '4' for '7' there changed nothing).
        let alt = if matches!(c, b'g'..=b'z' | b'0'..=b'9') {
            b'A'
        } else {
            b'7'
        };
        let mut bytes = text.clone().into_bytes();
        bytes[i] = alt;
        std::fs::write(env.path("t.json"), &bytes).unwrap();
        let (p, y) = offline("t.json");
        assert!(
            p != 0 && y != 0,
            "a change at byte {i} passed: pim {p}, python {y}"
        );
        tried += 1;
    }
    assert!(tried > 20, "{tried}");
    // An event rechained: another prev_hash, and its hash computed again from it and its
    // fields (the tree proves the fields only; the statement signs the hash).
    let mut rechained: serde_json::Value = serde_json::from_str(&text).unwrap();
    let e = &mut rechained["events"][1];
    let fields: Vec<String> = serde_json::from_value(e["fields"].clone()).unwrap();
    let prev = "f".repeat(64);
    let hash = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(prev.as_bytes());
        h.update(serde_json::to_vec(&fields).unwrap());
        hex::encode(h.finalize())
    };
    e["prev_hash"] = prev.into();
    e["hash"] = hash.into();
    std::fs::write(env.path("rechained.json"), rechained.to_string()).unwrap();
    let (p, y) = offline("rechained.json");
    assert!(
        p != 0 && y != 0,
        "a rechained event passed: pim {p}, python {y}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["format"],
        "pim-receipt/4"
    );
    // A receipt of an earlier pim (format 2: its statement names the events without their
    // chain hashes), signed here with the log's own key, still verifies in both.
    let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
    old["format"] = "pim-receipt/2".into();
    old.as_object_mut().unwrap().remove("extensions");
    let checkpoint = old["checkpoint"].as_str().unwrap().to_string();
    let origin = checkpoint.lines().next().unwrap().to_string();
    let seed = signing_seed(&env, &origin);
    let events: Vec<(i64, String)> = old["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["fields"][0].as_str().unwrap().parse().unwrap(),
                String::new(),
            )
        })
        .collect();
    let named: Vec<(i64, &str)> = events.iter().map(|(s, h)| (*s, h.as_str())).collect();
    let size: u64 = checkpoint.lines().nth(1).unwrap().parse().unwrap();
    let body = pim::receipt::statement_body(
        &origin,
        old["request"].as_i64().unwrap(),
        None,
        &named,
        false,
        old["policy_sha256"].as_str().unwrap(),
        size,
    );
    old["statement"] = pim::checkpoint::NoteSigner::new(&origin, &seed)
        .sign_text(&body)
        .into();
    std::fs::write(env.path("old.json"), old.to_string()).unwrap();
    assert_eq!(offline("old.json"), (0, 0), "a format 2 receipt");
    // Cut down (the deactivation left out), or hostile: both refuse, cleanly.
    let mut cut: serde_json::Value = serde_json::from_str(&text).unwrap();
    cut["events"].as_array_mut().unwrap().pop();
    std::fs::write(env.path("cut.json"), cut.to_string()).unwrap();
    assert_eq!(offline("cut.json"), (3, 1));
    let mut junk_proof: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p = junk_proof["events"][0]["proof"][0]
        .as_str()
        .unwrap()
        .to_string();
    junk_proof["events"][0]["proof"][0] = format!("{}\n{}", &p[..8], &p[8..]).into();
    std::fs::write(env.path("junk.json"), junk_proof.to_string()).unwrap();
    assert_ne!(offline("junk.json").1, 0, "a proof with junk in its base64");
    // A key given twice (here the request, the first one forged): readers differ on which of
    // the two they show, so neither verifier takes it.
    let twice = text.replacen('{', "{\"request\": 999999, ", 1);
    std::fs::write(env.path("twice.json"), &twice).unwrap();
    let (p, y) = offline("twice.json");
    assert!(
        p != 0 && y != 0,
        "a receipt with its request given twice passed: pim {p}, python {y}"
    );
    // The two verifiers agree where they used to differ (helper-36): a proof hash in another
    // spelling of the same bytes (base64's unused low bits set), a signature line by the
    // key's name that is not base64, and a request number given as a string.
    let mut spelled: serde_json::Value = serde_json::from_str(&text).unwrap();
    let p = spelled["events"][0]["proof"][0]
        .as_str()
        .unwrap()
        .to_string();
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let last = p.len() - 2; // 32 bytes: 43 characters and one '=', 2 bits unused
    let value = B64.iter().position(|&c| c == p.as_bytes()[last]).unwrap();
    assert_eq!(value & 3, 0, "{p}");
    let respelled = format!("{}{}=", &p[..last], B64[value | 1] as char);
    assert_eq!(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD_NO_PAD, &p[..43])
            .ok()
            .map(|b| b.len()),
        Some(32)
    );
    spelled["events"][0]["proof"][0] = respelled.into();
    std::fs::write(env.path("spelled.json"), spelled.to_string()).unwrap();
    assert_eq!(offline("spelled.json"), (3, 1), "base64 spelled otherwise");
    let mut line: serde_json::Value = serde_json::from_str(&text).unwrap();
    let checkpoint = line["checkpoint"].as_str().unwrap().to_string();
    let origin = checkpoint.lines().next().unwrap().to_string();
    line["checkpoint"] = format!("{checkpoint}\u{2014} {origin} !!notbase64!!\n").into();
    std::fs::write(env.path("line.json"), line.to_string()).unwrap();
    assert_eq!(offline("line.json"), (3, 1), "a malformed signature line");
    let mut string: serde_json::Value = serde_json::from_str(&text).unwrap();
    string["request"] = string["request"].to_string().into();
    std::fs::write(env.path("string.json"), string.to_string()).unwrap();
    assert_eq!(offline("string.json"), (3, 1), "a request as a string");
    // An index at the end of u64 (it overflowed to a panic in a debug build).
    let mut far: serde_json::Value = serde_json::from_str(&text).unwrap();
    far["events"][0]["index"] = u64::MAX.into();
    std::fs::write(env.path("far.json"), far.to_string()).unwrap();
    assert_eq!(offline("far.json"), (3, 1), "an index of u64::MAX");
    for hostile in ["[1, 2]", "{\"events\": null}", "null", "\u{0}"] {
        std::fs::write(env.path("h.json"), hostile).unwrap();
        let py = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/verify_receipt.py"
            ))
            .args(["h.json", "pim.vkey"])
            .current_dir(env.dir.path())
            .output()
            .unwrap();
        assert_eq!(py.status.code(), Some(1), "{hostile}");
        assert!(
            !String::from_utf8_lossy(&py.stderr).contains("Traceback"),
            "{hostile}"
        );
        assert_ne!(offline("h.json").0, 0);
    }
}

/// A receipt of an activation that was extended holds the extension's events too (it is a
/// request of its own): before, it showed the first end only, and both verifiers took it.
/// An extension is named only where its own request says it extends this one.
#[test]
fn a_receipt_holds_the_extensions_of_its_activation() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "on call"])
        .expect(0);
    env.activate(
        "bob",
        &bob,
        "db-admin",
        &["-j", "INC-7 disk full", "--duration", "1h"],
    )
    .expect(0);
    let code = crate::support::oathtool(&bob, 30);
    env.as_(
        "bob",
        &[
            "extend",
            "db-admin",
            "--duration",
            "2h",
            "-j",
            "INC-7 still full",
            "--code",
            &code,
        ],
    )
    .expect(0);
    env.as_("bob", &["receipt", "1", "--output", "r.json"])
        .expect(0);
    let key = env.as_("admin", &["audit", "key"]).expect(0).stdout;
    std::fs::write(env.path("pim.vkey"), &key).unwrap();
    let text = std::fs::read_to_string(env.path("r.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["extensions"], serde_json::json!([2]), "{text}");
    let actions: Vec<(String, String)> = r["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["fields"][3].as_str().unwrap().to_string(),
                e["fields"][7].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("activation.extend".to_string(), "2".to_string())),
        "{actions:?}"
    );
    let (pim, py) = offline(&env, "r.json");
    assert_eq!(pim.status.code(), Some(0), "{pim:?}");
    assert_eq!(py.status.code(), Some(0), "{py:?}");
    let said = String::from_utf8_lossy(&pim.stdout);
    assert!(
        said.contains("request 1 and its extension, request 2; 4 events,"),
        "{said}"
    );
    let said = String::from_utf8_lossy(&py.stdout);
    assert!(
        said.contains("request 1 and its extension(s) 2 ("),
        "{said}"
    );
    // A receipt of the extension itself: its events are in the activation's.
    let r2 = env.as_("bob", &["receipt", "2"]).expect(2);
    assert!(r2.stderr.contains("extends request 1"), "{}", r2.stderr);
    // Which requests extend it is read from the log, not from the requests' column.
    env.sql("UPDATE requests SET extends = NULL WHERE id = 2");
    let again: serde_json::Value =
        serde_json::from_str(&env.as_("bob", &["receipt", "1"]).expect(0).stdout).unwrap();
    assert_eq!(again["extensions"], serde_json::json!([2]), "{again}");
    env.sql("UPDATE requests SET extends = 1 WHERE id = 2");
    // Format 4 without its extensions (even none): both refuse.
    let mut bare = r.clone();
    bare.as_object_mut().unwrap().remove("extensions");
    std::fs::write(env.path("bare.json"), bare.to_string()).unwrap();
    let (pim, py) = offline(&env, "bare.json");
    assert_eq!((pim.status.code(), py.status.code()), (Some(3), Some(1)));
    // The extension's events left out: the signed statement names them.
    let mut cut = r.clone();
    cut["events"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["fields"][7] != "2");
    std::fs::write(env.path("cut.json"), cut.to_string()).unwrap();
    let (pim, py) = offline(&env, "cut.json");
    assert_eq!((pim.status.code(), py.status.code()), (Some(3), Some(1)));
    // Signed by the log's own key, a statement naming as an extension a request whose
    // events do not say it extends this one (here: the extension's request event left out)
    // is refused by both.
    let origin = r["checkpoint"]
        .as_str()
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let sign = |receipt: &mut serde_json::Value| {
        let named: Vec<(i64, String)> = receipt["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["fields"][0].as_str().unwrap().parse().unwrap(),
                    e["hash"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let named: Vec<(i64, &str)> = named.iter().map(|(s, h)| (*s, h.as_str())).collect();
        let extensions: Vec<i64> = receipt["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        let size: u64 = receipt["checkpoint"]
            .as_str()
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let body = pim::receipt::statement_body(
            &origin,
            1,
            Some(&extensions),
            &named,
            true,
            receipt["policy_sha256"].as_str().unwrap(),
            size,
        );
        receipt["statement"] =
            pim::checkpoint::NoteSigner::new(&origin, &signing_seed(&env, &origin))
                .sign_text(&body)
                .into();
    };
    let mut resigned = r.clone();
    sign(&mut resigned);
    std::fs::write(env.path("resigned.json"), resigned.to_string()).unwrap();
    let (pim, py) = offline(&env, "resigned.json");
    assert_eq!(
        (pim.status.code(), py.status.code()),
        (Some(0), Some(0)),
        "the signing is pim's"
    );
    let mut unshown = r.clone();
    unshown["events"]
        .as_array_mut()
        .unwrap()
        .retain(|e| !(e["fields"][7] == "2" && e["fields"][3] == "activation.request"));
    sign(&mut unshown);
    std::fs::write(env.path("unshown.json"), unshown.to_string()).unwrap();
    let (pim, py) = offline(&env, "unshown.json");
    assert_eq!((pim.status.code(), py.status.code()), (Some(3), Some(1)));
    let said = String::from_utf8_lossy(&pim.stderr);
    assert!(
        said.contains("request 2 is not shown to be an extension of request 1"),
        "{said}"
    );
    let said = String::from_utf8_lossy(&py.stdout);
    assert!(
        said.contains("request 2 is not shown to be an extension of request 1"),
        "{said}"
    );
}

/// `prove-consistency` gives the RFC 9162 proof that a later log extends an earlier one,
/// which the RFC's verification accepts (and refuses for another old root).
#[test]
fn consistency_proofs_between_two_sizes_verify() {
    use base64::Engine;
    let env = with_checkpoint();
    let b64 = |v: &serde_json::Value| -> [u8; 32] {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap()
    };
    for from in [1u64, 7, 64, 100] {
        let p = env
            .as_(
                "admin",
                &["audit", "prove-consistency", "--from", &from.to_string()],
            )
            .expect(0)
            .json();
        let proof: Vec<[u8; 32]> = p["proof"].as_array().unwrap().iter().map(b64).collect();
        let (size1, size2) = (
            p["old_size"].as_u64().unwrap(),
            p["new_size"].as_u64().unwrap(),
        );
        let (root1, root2) = (b64(&p["old_root"]), b64(&p["new_root"]));
        assert!(pim::merkle::verify_consistency(
            size1, size2, &root1, &root2, &proof
        ));
        assert!(
            !pim::merkle::verify_consistency(size1, size2, &root2, &root2, &proof)
                || size1 == size2
        );
    }
    env.as_("admin", &["audit", "prove-consistency", "--from", "100000"])
        .expect(2);
}

/// `[witness]` in the policy: `pim sweep` gives each new signed checkpoint to a file and a
/// command (through the outbox), once per growth of the log; a checkpoint a witness keeps
/// then catches a cut log.
#[test]
fn sweep_publishes_checkpoints_to_the_witnesses_when_the_log_grew() {
    let env = Env::new();
    let file = env.path("witness.log");
    let piped = env.path("piped.jsonl");
    env.init_with(&crate::support::Policy::new().section(
        "witness",
        &[
            &format!("file = \"{}\"", file.display()),
            &format!(
                "command = [\"/bin/sh\", \"-c\", \"cat >> {}; echo >> {}\"]",
                piped.display(),
                piped.display()
            ),
        ],
    ));
    env.as_("admin", &["user", "add", "bob"]).expect(0);
    let first = env.run(&["sweep", "--json"]).expect(0).json();
    assert!(first["checkpoint_published"].as_u64().is_some(), "{first}");
    // Nothing new: nothing published.
    let again = env.run(&["sweep", "--json"]).expect(0).json();
    assert!(again["checkpoint_published"].is_null(), "{again}");
    env.as_("admin", &["user", "add", "carol"]).expect(0);
    let third = env.run(&["sweep", "--json"]).expect(0).json();
    assert!(
        third["checkpoint_published"].as_u64().unwrap()
            > first["checkpoint_published"].as_u64().unwrap()
    );
    let kept = std::fs::read_to_string(&file).unwrap();
    assert_eq!(kept.matches('\u{2014}').count(), 2, "{kept}");
    let piped = std::fs::read_to_string(&piped).unwrap();
    assert_eq!(
        piped
            .lines()
            .filter(|l| l.contains("audit.checkpoint"))
            .count(),
        2,
        "{piped}"
    );
    // The witness's copy of the latest checkpoint (the file holds the notes one after
    // another: origin, size, root, a blank line, the signature) verifies, and catches a cut.
    let lines: Vec<&str> = kept.lines().collect();
    let sig = lines
        .iter()
        .rposition(|l| l.starts_with('\u{2014}'))
        .unwrap();
    let note = format!(
        "{}\n{}\n{}\n\n{}\n",
        lines[sig - 4],
        lines[sig - 3],
        lines[sig - 2],
        lines[sig]
    );
    std::fs::write(env.path("w.txt"), note).unwrap();
    env.as_("admin", &["audit", "verify", "--checkpoint", "w.txt"])
        .expect(0);
    // A tree node edited by the owner: pim refuses to sign a checkpoint that does not extend
    // the witnessed one.
    env.drop_audit_triggers();
    // (The first byte is set to one it is not: a fixed '00' left one run in 256 unchanged.)
    env.sql(
        "UPDATE merkle_nodes SET hash = \
         CASE WHEN substr(hash, 1, 2) = '00' THEN 'ff' ELSE '00' END || substr(hash, 3) \
         WHERE idx = 0 AND level = (SELECT max(level) FROM merkle_nodes)",
    );
    let r = env.as_("admin", &["audit", "checkpoint"]).expect(1);
    assert!(r.stderr.contains("does not extend"), "{}", r.stderr);
    env.sql("DELETE FROM audit_events WHERE seq > (SELECT max(seq) FROM audit_events) - 3; DELETE FROM merkle_nodes");
    env.as_("admin", &["audit", "verify", "--checkpoint", "w.txt"])
        .expect(1);
}

/// `verify --state` replays the log against the state tables: a row no event explains (a
/// permanent Global Administrator inserted by hand) or one changed behind the log is named,
/// where the chain alone holds.
#[test]
fn verify_state_names_rows_no_event_explains() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.user("carol");
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "on call"])
        .expect(0);
    env.activate("bob", &bob, "db-admin", &["-j", "INC-9 x"])
        .expect(0);
    env.as_("admin", &["unassign", "carol", "db-admin"])
        .expect(4);
    env.as_("admin", &["audit", "verify", "--state"]).expect(0);
    // An inserted assignment: carol is now a permanent global admin, and the chain holds.
    env.sql(
        "INSERT INTO assignments (user_id, role, scope, kind, start_at, end_at, created_by, created_at) \
         SELECT id, 'global-admin', '/', 'active', 0, NULL, 'admin', 0 FROM users WHERE name = 'carol'",
    );
    env.run(&["check", "carol", "global-admin"]).expect(0);
    env.as_("admin", &["audit", "verify"]).expect(0);
    let r = env.as_("admin", &["audit", "verify", "--state"]).expect(1);
    assert!(
        r.stderr
            .contains("carol active global-admin at /) was made by no event"),
        "{}",
        r.stderr
    );
    // An assignment made longer behind the log's back.
    env.sql("DELETE FROM assignments WHERE role = 'global-admin' AND user_id = (SELECT id FROM users WHERE name = 'carol')");
    env.as_("admin", &["audit", "verify", "--state"]).expect(0);
    env.sql("UPDATE assignments SET end_at = NULL WHERE role = 'db-admin'");
    let r = env.as_("admin", &["audit", "verify", "--state"]).expect(1);
    assert!(
        r.stderr.contains("ends never but its events say"),
        "{}",
        r.stderr
    );
    // A request deleted behind the log (its activation gone from the state, say).
    env.sql("DELETE FROM requests WHERE id = 1");
    let r = env.as_("admin", &["audit", "verify", "--state"]).expect(1);
    assert!(
        r.stderr
            .contains("request 1 of the log is missing from the state"),
        "{}",
        r.stderr
    );
}

/// Time travel from the log alone: who held and who could activate a role at an instant
/// (and a row inserted behind the log's back is not in the log's story).
#[test]
fn replay_and_who_could_tell_the_logs_story_at_any_instant() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.user("carol");
    env.as_(
        "admin",
        &[
            "assign", "bob", "db-admin", "--scope", "/prod", "-j", "on call",
        ],
    )
    .expect(0);
    env.activate(
        "bob",
        &bob,
        "db-admin",
        &["--scope", "/prod", "-j", "INC-1 x", "--duration", "1h"],
    )
    .expect(0);
    let who = |offset: &str, args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--as", "admin", "--json"];
        all.extend_from_slice(args);
        env.at(offset, &all).expect(0).json()
    };
    let names = |v: &serde_json::Value, list: &str| -> Vec<String> {
        v[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}",
                    e["user"].as_str().unwrap(),
                    e["role"].as_str().unwrap(),
                    e["source"].as_str().unwrap()
                )
            })
            .collect()
    };
    // Now: bob holds it by his activation, and is eligible.
    let now = who("+0s", &["who-could", "db-admin", "--scope", "/prod/db"]);
    assert_eq!(
        names(&now, "held"),
        ["bob db-admin activation (request 1)"],
        "{now}"
    );
    assert_eq!(names(&now, "eligible"), ["bob db-admin assignment"]);
    // Two hours on: the activation ended; he still could.
    let later = who("+2h", &["who-could", "db-admin"]);
    assert!(names(&later, "held").is_empty(), "{later}");
    assert_eq!(names(&later, "eligible"), ["bob db-admin assignment"]);
    // Removed at +3h: from +4h on nobody could, and the past is unchanged.
    env.at(
        "+3h",
        &[
            "--as", "admin", "unassign", "bob", "db-admin", "--scope", "/prod",
        ],
    )
    .expect(0);
    assert!(names(&who("+4h", &["who-could", "db-admin"]), "eligible").is_empty());
    let past = crate::support::Env::at(
        &env,
        "+4h",
        &[
            "--as",
            "admin",
            "--json",
            "audit",
            "replay",
            "--at",
            now["at"].as_str().unwrap(),
        ],
    )
    .expect(0)
    .json();
    assert!(
        names(&past, "held").contains(&"bob db-admin activation (request 1)".to_string()),
        "{past}"
    );
    assert!(
        names(&past, "held").contains(&"admin global-admin assignment".to_string()),
        "{past}"
    );
    // A global-admin row inserted behind the log's back: the state says carol holds it, the
    // log does not.
    env.sql(
        "INSERT INTO assignments (user_id, role, scope, kind, start_at, end_at, created_by, created_at) \
         SELECT id, 'global-admin', '/', 'active', 0, NULL, 'admin', 0 FROM users WHERE name = 'carol'",
    );
    env.run(&["check", "carol", "global-admin"]).expect(0);
    let ga = who("+0s", &["who-could", "global-admin"]);
    assert_eq!(
        names(&ga, "held"),
        ["admin global-admin assignment"],
        "{ga}"
    );
}

/// An activation lengthened, or revived, behind the log's back is named too.
#[test]
fn verify_state_names_requests_changed_behind_the_log() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.user("carol");
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "on call"])
        .expect(0);
    env.activate(
        "bob",
        &bob,
        "db-admin",
        &["-j", "INC-9 x", "--duration", "1h"],
    )
    .expect(0);
    env.as_("admin", &["audit", "verify", "--state"]).expect(0);
    env.sql("UPDATE requests SET end_at = end_at + 86400");
    let r = env.as_("admin", &["audit", "verify", "--state"]).expect(1);
    assert!(
        r.stderr.contains("request 1") && r.stderr.contains("ends"),
        "{}",
        r.stderr
    );
    env.sql("UPDATE requests SET end_at = end_at - 86400");
    env.as_("bob", &["deactivate", "db-admin"]).expect(0);
    env.as_("admin", &["audit", "verify", "--state"]).expect(0);
    env.sql("UPDATE requests SET status = 'active', closed_at = NULL");
    env.run(&["check", "bob", "db-admin"]).expect(0);
    // A disabled user enabled by hand, and a token made by hand, are named too.
    env.as_("admin", &["user", "disable", "carol"]).expect(0);
    env.sql("UPDATE users SET disabled = 0 WHERE name = 'carol'");
    env.as_("admin", &["user", "add", "ci-bot", "--service"])
        .expect(0);
    env.sql("UPDATE users SET token_hash = 'ab' WHERE name = 'ci-bot'");
    env.sql("UPDATE users SET token_hash = 'cd', kind = 'service' WHERE name = 'bob'");
    let r = env.as_("admin", &["audit", "verify", "--state"]).expect(1);
    assert!(
        r.stderr
            .contains("is active but its events say deactivated"),
        "{}",
        r.stderr
    );
}

/// A future assignment or activation pulled forward to now behind the log's back is named
/// (`check` would say the role is held).
#[test]
fn verify_state_names_starts_moved_behind_the_log() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.user("carol");
    env.as_(
        "admin",
        &[
            "assign",
            "carol",
            "db-admin",
            "--active",
            "--start",
            "2030-06-01T00:00:00Z",
            "--duration",
            "1d",
            "-j",
            "later",
        ],
    )
    .expect(0);
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "on call"])
        .expect(0);
    let later = (chrono::Utc::now() + chrono::Duration::hours(3)).to_rfc3339();
    env.activate(
        "bob",
        &bob,
        "db-admin",
        &["-j", "INC-5 x", "--start", &later, "--duration", "1h"],
    )
    .expect(0);
    env.as_("admin", &["audit", "verify", "--state"]).expect(0);
    env.run(&["check", "carol", "db-admin"]).expect(1);
    env.sql("UPDATE assignments SET start_at = start_at - 200000000 WHERE kind = 'active' AND role = 'db-admin'");
    env.sql("UPDATE requests SET start_at = start_at - 3 * 3600, status = 'active'");
    env.run(&["check", "carol", "db-admin"]).expect(0);
    env.run(&["check", "bob", "db-admin"]).expect(0);
    let r = env.as_("admin", &["audit", "verify", "--state"]).expect(1);
    assert!(
        r.stderr.contains("carol active db-admin at /) starts"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("request 1 (bob db-admin at /) starts"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("is active but its events say scheduled"),
        "{}",
        r.stderr
    );
}

/// `verify` reads the events and the stored tree in one snapshot: a writer committing in
/// between is not a cut log (it was, now and then, before: "the Merkle tree has N+1 leaves
/// but the log only N events").
#[test]
fn verify_while_others_write_never_cries_wolf() {
    let env = Env::new();
    env.init();
    env.user("bob");
    // A log long enough that reading it takes a while.
    let mut rows = String::from("user,role,scope,type,start,end,justification,ticket\n");
    for i in 0..3000 {
        rows.push_str(&format!("bob,db-admin,/s{i},eligible,,,x,\n"));
    }
    std::fs::write(env.path("rows.csv"), rows).unwrap();
    env.as_("admin", &["assignment", "import", "rows.csv"])
        .expect(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let env = Env {
            dir: crate::support::tempdir(),
            db: env.db.clone(),
        };
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                env.as_("admin", &["user", "add", &format!("w{i}")])
                    .expect(0);
                i += 1;
            }
            i
        })
    };
    for _ in 0..30 {
        let v = env.run(&["audit", "verify", "--json"]);
        assert_eq!(v.code, 0, "{}{}", v.stdout, v.stderr);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
}

/// A receipt printed to a terminal carries what the requester wrote, so every character a
/// terminal would act on (C1 controls, bidi overrides, zero-width ones) is a JSON escape:
/// the same receipt, which verifies the same.
#[test]
fn a_receipt_on_stdout_puts_no_control_character_of_a_requester_on_the_terminal() {
    let env = Env::new();
    env.init();
    let bob = env.user("bob");
    env.as_("admin", &["assign", "bob", "db-admin", "-j", "on call"])
        .expect(0);
    let hostile = "INC-7 \u{9b}31m red \u{202e}desrever\u{2066} \u{200b}zero";
    let id = env
        .activate("bob", &bob, "db-admin", &["-j", hostile, "--json"])
        .expect(0)
        .json()["id"]
        .as_i64()
        .unwrap();
    let out = env
        .as_("bob", &["receipt", &id.to_string()])
        .expect(0)
        .stdout;
    for c in ['\u{9b}', '\u{202e}', '\u{2066}', '\u{200b}', '\u{1b}'] {
        assert!(!out.contains(c), "{:?} reached the terminal: {out}", c);
    }
    assert!(out.contains("\\u009b31m red \\u202edesrever"), "{out}");
    std::fs::write(env.path("r.json"), &out).unwrap();
    let key = env.as_("admin", &["audit", "key"]).expect(0).stdout;
    std::fs::write(env.path("pim.vkey"), &key).unwrap();
    std::process::Command::new(crate::support::bin())
        .args(["receipt", "verify", "r.json", "--key", "pim.vkey"])
        .current_dir(env.dir.path())
        .env("PIM_DB", "/nonexistent/pim.db")
        .output()
        .map(Run::from)
        .unwrap()
        .expect(0);
    let py = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/verify_receipt.py"
        ))
        .args(["r.json", "pim.vkey"])
        .current_dir(env.dir.path())
        .status()
        .unwrap();
    assert!(py.success());
    // And the justification, as it was written, is what it proves.
    let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let fields = &parsed["events"][0]["fields"];
    assert_eq!(fields[8], hostile, "{fields}");
}
