//! Writes the seed corpus, `fuzz/corpus/<target>/seed-*`: real encodings of real values (the
//! format 3 fixtures, and format 4 items built here), real gossip recorded between three
//! chitchat nodes, and flagd flags, JSON Schemas and OFREP bodies as users write them.
//!
//! Run from `fuzz/`: `cargo run --example seed_corpus`. It replaces every `seed-*` file (all
//! but the recorded gossip come out byte for byte the same); entries libFuzzer adds to a
//! corpus are never committed (`.gitignore`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, Socket, Transport};
use chitchat::{ChitchatConfig, ChitchatId, ChitchatMessage, FailureDetectorConfig, Serializable, spawn_chitchat};
use grapevine_proto::eval::FlagDefinition;
use grapevine_proto::policy::{Control, Policy};
use grapevine_proto::signing::SecretKey;
use grapevine_proto::wire::{self, PullFrame, PullRequest, Push, PushAck, Versioned};
use grapevine_proto::{
    Change, GenId, Generation, GenerationBody, JsonText, Op, OriginProof, Revert, Snapshot, Stamp, Terms,
    VersionVector, Write,
};
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut corpus = Corpus::default();
    wire_seeds(&mut corpus, &fuzz_dir.join("../proto/tests/fixtures/wire-v6.txt"))?;
    json_seeds(&mut corpus);
    regression_seeds(&mut corpus);
    for message in record_gossip()? {
        corpus.add("gossip_message", message);
    }
    corpus.write(&fuzz_dir.join("corpus"))
}

/// Seed inputs by target, each a list of distinct inputs.
#[derive(Default)]
struct Corpus(BTreeMap<&'static str, Vec<Vec<u8>>>);

impl Corpus {
    fn add(&mut self, target: &'static str, input: impl Into<Vec<u8>>) {
        let input = input.into();
        let inputs = self.0.entry(target).or_default();
        if !inputs.contains(&input) {
            inputs.push(input);
        }
    }

    fn write(&self, root: &Path) -> anyhow::Result<()> {
        for (target, inputs) in &self.0 {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir)?;
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with("seed-")) {
                    std::fs::remove_file(path)?;
                }
            }
            for (index, input) in inputs.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{index:02}")), input)?;
            }
            let bytes: usize = inputs.iter().map(Vec::len).sum();
            println!("{target}: {} seeds, {bytes} bytes", inputs.len());
        }
        Ok(())
    }
}

fn wire_seeds(corpus: &mut Corpus, fixtures: &Path) -> anyhow::Result<()> {
    // Items as the build of format 6 wrote them, byte for byte.
    for line in std::fs::read_to_string(fixtures)?.lines().filter(|line| !line.starts_with('#')) {
        let (name, hex) = line.split_once(' ').ok_or_else(|| anyhow::anyhow!("expected `name hex`, got {line:?}"))?;
        let target = match name {
            "push" | "push-signed" | "push-proven" => "wire_push",
            "push-ack" => "wire_push_ack",
            "pull-request" => "wire_pull_request",
            "pull-frame-generation" | "pull-frame-generation-signed" | "pull-frame-snapshot-write" => "wire_pull_frame",
            "generation" | "generation-authored" | "generation-signed" | "generation-proven" => "store_generation",
            "snapshot" | "snapshot-signed" => "store_snapshot",
            other => anyhow::bail!("unknown fixture {other:?}"),
        };
        corpus.add(target, hex::decode(hex)?);
    }
    let generations = generations();
    let mut have = VersionVector::default();
    for generation in &generations {
        have.raise(generation.id().origin.clone(), generation.id().seq);
        both_formats(corpus, "store_generation", generation);
        both_formats(corpus, "wire_pull_frame", &PullFrame::Generation(generation.clone()));
    }
    let revert = Revert::of(generations[0].id());
    let write = Write {
        op: generations[1].body.change.ops[0].clone(),
        generation: generations[1].id().clone(),
        hlc: generations[1].body.hlc,
        proof: None,
    };
    for frame in [
        PullFrame::Revert(revert.clone()),
        PullFrame::SnapshotWrite(write),
        PullFrame::SnapshotEnd { covers: have.clone() },
        PullFrame::End { more: true },
    ] {
        both_formats(corpus, "wire_pull_frame", &frame);
    }
    let request = PullRequest { have: have.clone(), max_bytes: 8 << 20, reverts: vec![revert.target.clone()] };
    both_formats(corpus, "wire_pull_request", &request);
    both_formats(
        corpus,
        "wire_pull_request",
        &PullRequest { have: VersionVector::default(), max_bytes: 0, reverts: vec![] },
    );
    let push = Push { reverts: vec![revert], generations: generations[..2].to_vec(), sender_has: have.clone() };
    both_formats(corpus, "wire_push", &push);
    let push =
        Push { reverts: vec![], generations: vec![generations[0].clone()], sender_has: VersionVector::default() };
    both_formats(corpus, "wire_push", &push);
    both_formats(corpus, "wire_push_ack", &PushAck { have });
    let mut snapshot = Snapshot::default();
    for generation in &generations {
        snapshot.absorb(generation);
        snapshot.cover(generation.id());
        both_formats(corpus, "store_snapshot", &snapshot);
    }
    both_formats(corpus, "store_snapshot", &Snapshot::default());
    Ok(())
}

/// Adds `item` in the newest format, and in the one before when that format holds it.
fn both_formats<T: Versioned>(corpus: &mut Corpus, target: &'static str, item: &T) {
    corpus.add(target, wire::encode(item));
    if let Ok(old) = wire::encode_at(item, wire::OLDEST_READABLE, "item") {
        corpus.add(target, old);
    }
}

/// Generations as nodes accept them: flags with targeting, configs with a schema, a change
/// with an author, a grouped rollout, an emergency change, a control and a signed change.
fn generations() -> Vec<Generation> {
    let flag = |key: &str, definition: serde_json::Value| Op::SetFlag {
        key: key.parse().expect("a valid key"),
        definition: FlagDefinition::parse(
            &key.parse().expect("a valid key"),
            &JsonText::from_value(&definition).expect("JSON"),
        )
        .expect("a valid flag")
        .to_json_text()
        .expect("canonical text"),
    };
    let config = |key: &str, value: &str, schema: Option<&str>| Op::PutConfig {
        key: key.parse().expect("a valid key"),
        value: JsonText::try_from(value.to_owned()).expect("JSON"),
        schema: schema.map(|schema| JsonText::try_from(schema.to_owned()).expect("JSON")),
    };
    let members: grapevine_proto::MemberList =
        ["n1", "n2", "n3", "n4"].iter().map(|name| name.parse().expect("a valid name")).collect();
    let body = |origin: &str, seq: u64, change: Change| GenerationBody {
        id: GenId { origin: origin.parse().expect("a valid name"), seq },
        hlc: Stamp { wall_ms: 1_700_000_000_000 + seq, logical: seq as u32 },
        members: members.clone(),
        groups: vec![],
        change,
        author: None,
        signed: None,
        terms: None,
    };
    let split = json!({"state": "ENABLED", "variants": {"red": "#f00", "blue": "#00f"}, "defaultVariant": "red",
        "targeting": {"fractional": [{"var": "email"}, ["red", 50], ["blue", 50]]}});
    let staff = json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
        "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", null]}});
    let first = body("n1", 1, Change::with_ops(vec![flag("checkout", split), flag("beta/staff", staff)]));
    let mut second = body(
        "n2",
        1,
        Change::with_ops(vec![
            config(
                "ratelimit",
                r#"{"burst":500,"name":"edge"}"#,
                Some(
                    r#"{"type":"object","properties":{"burst":{"type":"integer","maximum":10000}},"required":["burst"]}"#,
                ),
            ),
            config("motd", r#""hello""#, None),
        ]),
    );
    second.author = Some("alice@laptop".parse().expect("a valid author"));
    let mut grouped = body(
        "n1",
        2,
        Change {
            policy: Policy { waves_by: Some("zone".into()), ..Policy::default() },
            ..Change::with_ops(vec![flag(
                "dark-mode",
                json!({"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}),
            )])
        },
    );
    grouped.groups = vec!["eu-1".into(), "eu-1".into(), "us-2".into(), "us-2".into()];
    let emergency =
        body("n3", 1, Change { policy: Policy::emergency(), ..Change::with_ops(vec![config("kill", "true", None)]) });
    let control = body(
        "n2",
        2,
        Change {
            ops: vec![],
            policy: Policy::default(),
            controls: vec![Control::Pause { target: GenId { origin: "n1".parse().expect("a valid name"), seq: 2 } }],
        },
    );
    let mut signed = body("n3", 2, Change::with_ops(vec![config("payments.limit", "7", None)]));
    let (root, operator) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
    let alice: grapevine_proto::Author = "alice".parse().expect("a valid author");
    let delegation = root.delegate("grapevine", alice.clone(), operator.public(), vec!["payments.".into()], u64::MAX);
    let issued_ms = signed.hlc.wall_ms;
    signed.signed =
        Some(Box::new(operator.sign_change("grapevine", delegation.clone(), issued_ms, &signed.change, None)));
    signed.author = Some(alice.clone());
    // A scheduled change (format 7): its start is signed with it.
    let mut scheduled = body("n3", 3, Change::with_ops(vec![config("payments.limit", "8", None)]));
    let start_at_ms = Some(scheduled.hlc.wall_ms + 3_600_000);
    let sign = operator.sign_change("grapevine", delegation, scheduled.hlc.wall_ms, &scheduled.change, start_at_ms);
    scheduled.signed = Some(Box::new(sign));
    scheduled.author = Some(alice);
    scheduled.terms = Some(Box::new(Terms { start_at_ms, ..Terms::default() }));
    let put = config("payments/limit", "9", None);
    let [proposal, approval, enactment] = governance_bodies(&root, &operator, &body, put);
    let mut generations: Vec<Generation> =
        [first, second, grouped, emergency, control, signed, scheduled, proposal, approval, enactment]
            .into_iter()
            .map(GenerationBody::seal)
            .collect();
    // An origin proof's shape (a DER certificate and an ECDSA signature); the node checks its
    // content, the decoders only its shape.
    let proof =
        OriginProof { certificate: [&[0x30, 0x82, 0x01, 0xdc][..], &[0xa5; 476]].concat(), signature: vec![0x30; 71] };
    generations[0] = generations[0].clone().proven(Some(proof));
    generations
}

/// A proposal, an approval and an enactment (format 7 governance records, D79): Alice proposes,
/// Bob approves, and the enactment carries both signatures.
fn governance_bodies(
    root: &SecretKey,
    alice_key: &SecretKey,
    body: &dyn Fn(&str, u64, Change) -> GenerationBody,
    put: Op,
) -> [GenerationBody; 3] {
    use grapevine_proto::Governance;
    use grapevine_proto::approvals::proposal_digest;
    let (alice, bob): (grapevine_proto::Author, grapevine_proto::Author) =
        ("alice".parse().expect("a valid author"), "bob".parse().expect("a valid author"));
    let bob_key = SecretKey::from_seed([3; 32]);
    let alice_delegation = root.delegate("grapevine", alice.clone(), alice_key.public(), vec![], u64::MAX);
    let bob_delegation = root.delegate("grapevine", bob.clone(), bob_key.public(), vec![], u64::MAX);
    let proposed = Change::with_ops(vec![put]);
    let record = Change { ops: vec![], policy: Policy::emergency(), controls: vec![] };
    let with = |mut body: GenerationBody, governance: Governance, approvals, signed, author| {
        body.terms = Some(Box::new(Terms { governance: Some(governance), approvals, ..Terms::default() }));
        body.signed = Some(Box::new(signed));
        body.author = Some(author);
        body
    };
    let propose = body("n1", 4, record.clone());
    let (issued_ms, expires_ms) = (propose.hlc.wall_ms, propose.hlc.wall_ms + 86_400_000);
    let proposer = alice_key.sign_change("grapevine", alice_delegation, issued_ms, &proposed, None);
    let id = propose.id.clone();
    let digest = proposal_digest(&proposed, None);
    let approver = bob_key.sign_approval("grapevine", bob_delegation, issued_ms + 60_000, &id, &digest, expires_ms);
    let proposal = with(
        propose,
        Governance::Propose { change: proposed.clone(), expires_ms },
        vec![],
        proposer.clone(),
        alice.clone(),
    );
    let approve = Governance::Approve { proposal: id.clone(), digest, expires_ms };
    let approval = with(body("n2", 3, record), approve, vec![], approver.clone(), bob);
    let enact = Governance::Enact { proposal: id, expires_ms };
    let enactment = with(body("n2", 4, proposed), enact, vec![approver], proposer, alice);
    [proposal, approval, enactment]
}

fn json_seeds(corpus: &mut Corpus) {
    let flags = [
        r#"{"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}"#,
        r#"{"state": "DISABLED", "variants": {"a": 1, "b": 2.5}, "defaultVariant": "b", "metadata": {"owner": "team-a"}}"#,
        r##"{"state": "ENABLED", "variants": {"red": "#f00", "blue": "#00f"}, "defaultVariant": "red", "targeting": {"fractional": [{"var": "email"}, ["red", 50], ["blue", 50]]}}"##,
        r#"{"state": "ENABLED", "variants": {"new": {"x": 1}, "old": {"x": 0}}, "defaultVariant": "old", "targeting": {"if": [{"sem_ver": [{"var": "version"}, ">=", "1.2.0"]}, "new", {"starts_with": [{"var": "email"}, "admin"]}, "new", null]}}"#,
        r#"{"state": "ENABLED", "variants": {"on": true, "off": false}, "targeting": {"if": [{"in": [{"var": "country"}, ["DE", "FR"]]}, "on", "off"]}}"#,
        r#"{"state": "ENABLED", "variants": {"a": "a", "b": "b"}, "defaultVariant": "a", "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, 1700000000]}, "b", "a"]}}"#,
        // A flagd flag file, as `apply` reads it.
        r#"{"$evaluators": {"staff": {"ends_with": [{"var": "email"}, "@example.com"]}}, "metadata": {"team": "web"}, "flags": {"x": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off", "targeting": {"if": [{"$ref": "staff"}, "on", null]}}, "y": {"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "a", "targeting": {"fractional": [["a", 10], ["b", 90]]}}}}"#,
    ];
    for flag in flags {
        corpus.add("flag_definition", flag);
    }
    // A definition, a NUL byte, then an evaluation context.
    let with_context = [flags[2], "\0", r#"{"targetingKey": "u1", "email": "bob@example.com", "version": "1.3.0"}"#];
    corpus.add("flag_definition", with_context.concat());
    let with_context = [flags[3], "\0", r#"{"version": "v1.2.0-beta.1", "email": "admin@x"}"#];
    corpus.add("flag_definition", with_context.concat());

    let schemas = [
        r#"{"type": "object", "properties": {"burst": {"type": "integer", "minimum": 0, "maximum": 10000}, "name": {"type": "string", "maxLength": 8}}, "required": ["burst"], "additionalProperties": false}"#,
        r#"{"type": "array", "items": {"type": "string", "pattern": "^[a-z]+(-[a-z]+)*$"}, "minItems": 1, "uniqueItems": true}"#,
        r#"{"oneOf": [{"type": "number", "multipleOf": 0.5}, {"enum": ["off", "auto"]}, {"const": true}]}"#,
        r##"{"$defs": {"port": {"type": "integer", "exclusiveMinimum": 0, "maximum": 65535}}, "type": "object", "patternProperties": {"^svc-": {"$ref": "#/$defs/port"}}, "minProperties": 1}"##,
        r#"{"allOf": [{"type": "string"}, {"not": {"format": "email"}}], "anyOf": [{"minLength": 2}, {"format": "uri"}], "if": {"maxLength": 3}, "then": {"pattern": "^x"}}"#,
        r#"true"#,
    ];
    for schema in schemas {
        corpus.add("json_schema", schema);
    }
    corpus.add("json_schema", [schemas[0], "\0", r#"{"burst": 50000, "name": "far-too-long"}"#].concat());
    corpus.add("json_schema", [schemas[1], "\0", r#"["ab-cd", "ab-cd"]"#].concat());
    corpus.add("json_schema", [schemas[3], "\0", r#"{"svc-a": 80, "svc-b": 0}"#].concat());

    let bodies = [
        "",
        "{}",
        r#"{"context": null}"#,
        r#"{"context": {"targetingKey": "user-1"}}"#,
        r#"{"context": {"targetingKey": "user-2", "email": "ann@example.com", "version": "1.2.3", "age": 42, "beta": true, "groups": ["staff", "beta"], "plan": {"tier": "gold", "seats": 10}, "score": 0.75, "since": 1700000000}}"#,
        r#"{"context": {"targetingKey": 12, "email": ["x"], "version": "v0.9.9", "age": "18", "groups": "beta", "plan": null, "score": -1e308}}"#,
        r#"{"context": [1, 2]}"#,
    ];
    for body in bodies {
        corpus.add("ofrep_body", body);
    }
}

/// Inputs that crashed the targets before the fixes of docs/fuzzing.md ("Bugs found and
/// fixed"): every run replays them.
fn regression_seeds(corpus: &mut Corpus) {
    let hex = |text: &str| hex::decode(text).expect("hex");
    // VersionVector::total overflowed: a peer's vector {a: u64::MAX, b: 1}.
    corpus.add("wire_push_ack", hex("04020161ffffffffffffffffff01016201"));
    // Log::advance overflowed: a snapshot's end covering {"7": u64::MAX}.
    corpus.add("wire_pull_frame", hex("0402010137ffffffffffffffffff01"));
    // JsonText held what a Value cannot: a lone surrogate escape, and 128 nested arrays.
    corpus.add("json_schema", r#""\ud800""#);
    corpus.add("json_schema", ["[".repeat(128), "]".repeat(128), "\0{}".to_owned()].concat());
    // The schema validator panicked on a number with no 64-bit float: in the value, then in
    // the schema (committed as seed-regression-*, too).
    let port = r##"{"$defs": {"port": {"type": "integer", "maximum": 65535}}, "type": "object", "patternProperties": {"^svc-": {"$ref": "#/$defs/port"}}, "minProperties": 1}"##;
    corpus.add("json_schema", format!("{port}\0{{\"svc-a\": 55555555555555555555555E55555555555555555555555580}}"));
    corpus.add("json_schema", port.replace("65535", "8e0535") + "\0{\"svc-a\": 80}");
}

/// Gossip as three chitchat nodes exchange it (SYN, SYN-ACK, ACK with deltas of the node's
/// keys), recorded as chitchat serializes it for the wire.
fn record_gossip() -> anyhow::Result<Vec<Vec<u8>>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    runtime.block_on(async {
        let transport = Recording { inner: ChannelTransport::with_mtu(65_507), messages: Arc::default() };
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let config = |name: &str, port: u16, seeds: Vec<String>| ChitchatConfig {
            chitchat_id: ChitchatId::new(name.to_owned(), 1_700_000_000, addr(port)),
            cluster_id: "prod-eu".to_owned(),
            gossip_interval: Duration::from_millis(20),
            listen_addr: addr(port),
            seed_nodes: seeds,
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let keys = |name: &str| {
            vec![
                ("api".to_owned(), "127.0.0.1:7401".to_owned()),
                ("labels".to_owned(), r#"{"zone":"eu-1"}"#.to_owned()),
                (format!("vv.{name}"), "3".to_owned()),
                ("digest".to_owned(), "9f86d081884c7d659a2feaa0c55ad015".to_owned()),
                ("wire".to_owned(), "4".to_owned()),
            ]
        };
        let first = spawn_chitchat(config("n1", 7001, vec![]), keys("n1"), &transport).await?;
        let second =
            spawn_chitchat(config("n2", 7002, vec!["127.0.0.1:7001".to_owned()]), keys("n2"), &transport).await?;
        let third =
            spawn_chitchat(config("n3", 7003, vec!["127.0.0.1:7001".to_owned()]), keys("n3"), &transport).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.with_chitchat(|chitchat| chitchat.self_node_state().set("rep.n1.1", "healthy")).await;
        second.with_chitchat(|chitchat| chitchat.self_node_state().delete("digest")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for handle in [first, second, third] {
            handle.shutdown().await?;
        }
        let mut messages = transport.messages.lock().expect("not poisoned").clone();
        // The largest and the smallest of each kind (byte 3), and a bad-cluster reply.
        messages.sort_by_key(|message| (message[3], message.len()));
        let mut seeds = Vec::new();
        for kind in messages.chunk_by(|a, b| a[3] == b[3]) {
            seeds.extend([kind[0].clone(), kind[kind.len() - 1].clone()]);
        }
        seeds.push(ChitchatMessage::BadCluster.serialize_to_vec());
        Ok(seeds)
    })
}

/// A chitchat transport that records every message it sends.
struct Recording {
    inner: ChannelTransport,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
}

#[async_trait]
impl Transport for Recording {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen_addr).await?;
        Ok(Box::new(RecordingSocket { inner, messages: self.messages.clone() }))
    }
}

struct RecordingSocket {
    inner: Box<dyn Socket>,
    messages: Arc<Mutex<Vec<Vec<u8>>>>,
}

#[async_trait]
impl Socket for RecordingSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        self.messages.lock().expect("not poisoned").push(message.serialize_to_vec());
        self.inner.send(to, message).await
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.inner.recv().await
    }
}
