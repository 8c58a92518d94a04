//! What applications see, against real processes: OFREP (single and bulk evaluation with every
//! status code, ETag and 304, the SSE event stream seeing a change and a revert), config reads
//! with ETags, and the `/v1/watch` stream of applied changes with `Last-Event-ID` resume.
//!
//! In detail: OFREP answers 200 with typed values, metadata and targeting, 404 `FLAG_NOT_FOUND` and
//! 400 with `TARGETING_KEY_MISSING`, `INVALID_CONTEXT` and `GENERAL`; the bulk evaluation has an
//! `ETag`, 304 and `eventStreams`, and the event stream sends `refetchEvaluation` on a change and
//! on its rollback; `GET /v1/config` answers the generation as `ETag` and 304; `/v1/watch` streams
//! a prefix's changes and a revert, resumes from `Last-Event-ID`, and sends `resync` and the
//! current values for an id of another incarnation; a schema refuses bad values (also in later puts
//! without `--schema`), a dry run changes nothing, and `apply` ships a flagd file with
//! `$evaluators` and metadata once, and refuses one with a dangling `$ref`, naming the flag.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use grapevine_cluster_tests::{Cluster, Node, check, next_sse_event as next_event};
use grapevine_node::replies::{Accepted, ChangeReply, DryRun};
use serde_json::{Value, json};

fn put_flag(node: &Node, dir: &std::path::Path, key: &str, definition: Value) -> Result<String> {
    let path = dir.join(format!("{key}.json"));
    std::fs::write(&path, definition.to_string())?;
    let answer = node.change(&["flag", "set", key, "--file", path.to_str().context("a UTF-8 path")?])?;
    Ok(answer.generation().context("a generation")?.to_owned())
}

async fn post(http: &reqwest::Client, url: &str, body: &str) -> Result<(u16, Value)> {
    let response = http.post(url).header("content-type", "application/json").body(body.to_owned()).send().await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    Ok((status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? }))
}

#[tokio::test(flavor = "multi_thread")]
async fn ofrep_evaluates_flags_with_every_status_etags_and_events() -> Result<()> {
    let mut cluster = Cluster::new(2)?;
    cluster.start_all()?;
    let node = &cluster.nodes[1];
    let dir = cluster.dir.path().to_owned();
    let first = &cluster.nodes[0];
    put_flag(
        first,
        &dir,
        "limits",
        json!({"state": "ENABLED", "variants": {"low": 10, "high": 2.5}, "defaultVariant": "low"}),
    )?;
    put_flag(
        first,
        &dir,
        "checkout",
        json!({
            "state": "ENABLED", "variants": {"new": true, "old": false}, "defaultVariant": "old",
            "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "new", null]},
            "metadata": {"team": "payments"}
        }),
    )?;
    put_flag(
        first,
        &dir,
        "split",
        json!({"state": "ENABLED", "variants": {"a": "A", "b": "B"}, "defaultVariant": "a", "targeting": {"fractional": [["a", 50], ["b", 50]]}}),
    )?;
    put_flag(
        first,
        &dir,
        "broken",
        json!({"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a", "targeting": {"if": [true, "zzz", "a"]}}),
    )?;
    put_flag(first, &dir, "off", json!({"state": "DISABLED", "variants": {"a": "A"}, "defaultVariant": "a"}))?;
    let base = node.url();
    let http = grapevine_cluster_tests::http_client();
    let single = |key: &str| format!("{base}/ofrep/v1/evaluate/flags/{key}");
    for key in ["limits", "checkout", "split", "broken", "off"] {
        grapevine_cluster_tests::wait_until(Duration::from_secs(10), "the flags on the second node", || {
            node.cli(&["flag", "get", key]).status.success()
        })?;
    }

    // 200: typed values, variant, reason, metadata.
    let (status, body) = post(&http, &single("limits"), "").await?;
    assert_eq!(
        (status, &body["value"], &body["variant"], &body["reason"]),
        (200, &json!(10), &json!("low"), &json!("STATIC")),
        "{body}"
    );
    assert!(body["value"].is_i64(), "an integer stays an integer: {body}");
    let (status, body) = post(&http, &single("checkout"), r#"{"context": {"email": "a@example.com"}}"#).await?;
    assert_eq!((status, &body["value"], &body["reason"]), (200, &json!(true), &json!("TARGETING_MATCH")), "{body}");
    assert_eq!(body["metadata"]["team"], "payments");
    let (_, body) = post(&http, &single("checkout"), r#"{"context": {"email": "a@other.org"}}"#).await?;
    assert_eq!((&body["value"], &body["reason"]), (&json!(false), &json!("DEFAULT")), "{body}");
    let (status, body) = post(&http, &single("split"), r#"{"context": {"targetingKey": "user-1"}}"#).await?;
    assert_eq!((status, &body["reason"]), (200, &json!("TARGETING_MATCH")), "{body}");
    // A disabled flag: the caller's default, no value.
    let (status, body) = post(&http, &single("off"), "{}").await?;
    assert_eq!((status, &body["reason"], body.get("value")), (200, &json!("DISABLED"), None), "{body}");
    // 404, and 400 with each code.
    let (status, body) = post(&http, &single("missing"), "").await?;
    assert_eq!(
        (status, &body["errorCode"], &body["key"]),
        (404, &json!("FLAG_NOT_FOUND"), &json!("missing")),
        "{body}"
    );
    let (status, body) = post(&http, &single("split"), r#"{"context": {}}"#).await?;
    assert_eq!((status, &body["errorCode"]), (400, &json!("TARGETING_KEY_MISSING")), "{body}");
    let (status, body) = post(&http, &single("limits"), r#"{"context": [1, 2]}"#).await?;
    assert_eq!((status, &body["errorCode"]), (400, &json!("INVALID_CONTEXT")), "{body}");
    let (status, body) = post(&http, &single("broken"), "").await?;
    assert_eq!((status, &body["errorCode"]), (400, &json!("GENERAL")), "{body}");
    assert!(body["errorDetails"].as_str().unwrap_or("").contains("zzz"), "{body}");

    // Bulk: every flag, an ETag, 304 for the same one, and the event stream named.
    let bulk = format!("{base}/ofrep/v1/evaluate/flags");
    let response = http.post(&bulk).body(r#"{"context": {"targetingKey": "user-1"}}"#).send().await?;
    assert_eq!(response.status().as_u16(), 200);
    let etag = response.headers()["etag"].to_str()?.to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "a strong ETag: {etag}");
    let body: Value = response.json().await?;
    assert_eq!(body["flags"].as_array().map(Vec::len), Some(5), "{body}");
    let events_url = body["eventStreams"][0]["url"].as_str().context("an event stream")?.to_owned();
    assert_eq!(body["eventStreams"][0]["type"], "sse");
    let again = http
        .post(&bulk)
        .header("if-none-match", &etag)
        .body(r#"{"context": {"targetingKey": "user-1"}}"#)
        .send()
        .await?;
    assert_eq!(again.status().as_u16(), 304);
    let (status, body) = post(&http, &bulk, r#"{"context": 7}"#).await?;
    assert_eq!((status, &body["errorCode"]), (400, &json!("INVALID_CONTEXT")), "{body}");

    // Events: a change, then its revert, each a refetchEvaluation.
    let mut stream = http.get(&events_url).send().await?;
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let generation = put_flag(
        first,
        &dir,
        "limits",
        json!({"state": "ENABLED", "variants": {"low": 10, "high": 2.5}, "defaultVariant": "high"}),
    )?;
    let event = next_event(&mut stream).await?;
    assert!(event.contains("refetchEvaluation"), "{event}");
    let changed = http
        .post(&bulk)
        .header("if-none-match", &etag)
        .body(r#"{"context": {"targetingKey": "user-1"}}"#)
        .send()
        .await?;
    assert_eq!(changed.status().as_u16(), 200, "the ETag changed with the flags");
    check(first.cli(&["rollback", &generation]))?;
    let event = next_event(&mut stream).await?;
    assert!(event.contains("refetchEvaluation"), "{event}");
    let (_, body) = post(&http, &single("limits"), "").await?;
    assert_eq!(body["value"], 10, "the revert is served: {body}");
    Ok(())
}

fn data(event: &str) -> Value {
    let line = event.lines().find_map(|l| l.strip_prefix("data:")).unwrap_or("null");
    serde_json::from_str(line.trim()).unwrap_or(Value::Null)
}

fn id(event: &str) -> String {
    event.lines().find_map(|l| l.strip_prefix("id:")).unwrap_or("").trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn config_reads_carry_etags_and_the_watch_stream_resumes() -> Result<()> {
    let mut cluster = Cluster::new(1)?;
    cluster.start_all()?;
    let node = &cluster.nodes[0];
    let http = grapevine_cluster_tests::http_client();
    let put = |key: &str, value: &str| -> Result<String> {
        let answer = node.change(&["config", "put", key, "--value", value])?;
        Ok(answer.generation().context("a generation")?.to_owned())
    };
    let first = put("app/limit", "1")?;
    // A read, its ETag, and 304 for the same.
    let url = format!("{}/v1/config/app%2Flimit", node.url());
    let response = http.get(&url).send().await?;
    let etag = response.headers()["etag"].to_str()?.to_owned();
    assert_eq!(etag, format!("\"{first}\""));
    assert_eq!(http.get(&url).header("if-none-match", &etag).send().await?.status().as_u16(), 304);

    let watch = format!("{}/v1/watch?prefix=app/", node.url());
    let mut stream = http.get(&watch).send().await?;
    let second = put("app/limit", "2")?;
    put("other/key", "9")?;
    let third = put("app/name", "\"x\"")?;
    let event = next_event(&mut stream).await?;
    let change = data(&event);
    assert_eq!(
        (&change["key"], &change["value"], &change["cause"]),
        (&json!("app/limit"), &json!(2), &json!("change")),
        "{event}"
    );
    assert_eq!(change["generation"], second.as_str());
    let resume_from = id(&event);
    let event = next_event(&mut stream).await?;
    assert_eq!(data(&event)["key"], "app/name", "other/key is outside the prefix: {event}");
    assert_eq!(data(&event)["generation"], third.as_str());
    // A revert is an event too, back to the value before.
    check(node.cli(&["rollback", &second]))?;
    let event = next_event(&mut stream).await?;
    let change = data(&event);
    assert_eq!(
        (&change["value"], &change["cause"], &change["generation"]),
        (&json!(1), &json!("revert"), &json!(first)),
        "{event}"
    );
    drop(stream);

    // Reconnecting with the id of the first event replays what came after it.
    let mut resumed = http.get(&watch).header("last-event-id", &resume_from).send().await?;
    assert_eq!(data(&next_event(&mut resumed).await?)["key"], "app/name");
    assert_eq!(data(&next_event(&mut resumed).await?)["cause"], "revert");
    // An id from another incarnation: a resync, then the current values.
    let mut stale = http.get(&watch).header("last-event-id", "1-5").send().await?;
    let event = next_event(&mut stale).await?;
    assert!(event.contains("event: resync"), "{event}");
    let mut current = [data(&next_event(&mut stale).await?), data(&next_event(&mut stale).await?)];
    current.sort_by_key(|c| c["key"].as_str().unwrap_or_default().to_owned());
    assert_eq!((&current[0]["key"], &current[0]["value"]), (&json!("app/limit"), &json!(1)));
    assert_eq!((&current[1]["key"], &current[1]["value"]), (&json!("app/name"), &json!("x")));
    Ok(())
}

#[test]
fn schemas_refuse_bad_values_dry_runs_change_nothing_and_apply_takes_a_flagd_file() -> Result<()> {
    let mut cluster = Cluster::new(2)?;
    cluster.start_all()?;
    let node = &cluster.nodes[0];
    let dir = cluster.dir.path().to_owned();
    let refused = |args: &[&str], message: &str| {
        let output = node.cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in {stderr}");
    };
    let schema = dir.join("ratelimit.schema.json");
    std::fs::write(
        &schema,
        json!({"type": "object", "required": ["burst"], "properties": {
            "burst": {"type": "integer", "minimum": 1, "maximum": 10000},
            "blocklist": {"type": "array", "items": {"type": "string", "maxLength": 64}}
        }})
        .to_string(),
    )?;
    let schema = schema.to_str().context("a UTF-8 path")?;
    refused(
        &["config", "put", "ratelimit", "--value", r#"{"burst": 50000}"#, "--schema", schema],
        "config \"ratelimit\": /burst: 50000 is greater than the maximum of 10000",
    );
    check(node.cli(&["config", "put", "ratelimit", "--value", r#"{"burst": 50}"#, "--schema", schema]))?;
    // The schema stays with the key: a later change that names none is held to it, and the
    // over-long blocklist entry of the seed incident is refused before it ships.
    let long = format!(r#"{{"burst": 50, "blocklist": ["{}"]}}"#, "x".repeat(65));
    refused(&["config", "put", "ratelimit", "--value", &long], "/blocklist/0: ");
    refused(&["config", "put", "ratelimit", "--value", "{}"], "\"burst\" is a required property");

    // A dry run shows the diff and the waves, and changes nothing.
    let preview = node.change(&[
        "config",
        "put",
        "ratelimit",
        "--value",
        r#"{"burst": 60}"#,
        "--waves",
        "1,100%",
        "--bake",
        "5s",
        "--dry-run",
    ])?;
    let ChangeReply::DryRun(preview) = preview else { bail!("not a dry run: {preview:?}") };
    let diff = &preview.diff[0];
    assert_eq!((&diff.before, &diff.after), (&Some(json!({"burst": 50})), &json!({"burst": 60})), "{preview:?}");
    assert_eq!(preview.waves.len(), 2, "{preview:?}");
    assert_eq!(node.config("ratelimit")?.value["burst"], 50, "a dry run changed the value");

    // A flagd file, unchanged: shared evaluators, metadata, targeting.
    let file = dir.join("flags.json");
    std::fs::write(
        &file,
        json!({
            "$evaluators": {"is_staff": {"ends_with": [{"var": "email"}, "@example.com"]}},
            "metadata": {"owner": "web"},
            "flags": {
                "new-nav": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                            "targeting": {"if": [{"$ref": "is_staff"}, "on", null]}},
                "theme": {"state": "ENABLED", "variants": {"dark": "dark", "light": "light"}, "defaultVariant": "light"}
            }
        })
        .to_string(),
    )?;
    let file = file.to_str().context("a UTF-8 path")?;
    let preview = node.change(&["apply", file, "--dry-run"])?;
    assert!(matches!(preview, ChangeReply::DryRun(DryRun { changed: Some(2), .. })), "{preview:?}");
    assert!(!node.cli(&["flag", "get", "theme"]).status.success(), "a dry run applied a flag");
    let applied = node.change(&["apply", file])?;
    assert!(matches!(applied, ChangeReply::Accepted(Accepted { changed: Some(2), .. })), "{applied:?}");
    let staff = node.cli_json(&["flag", "get", "new-nav", "--context", r#"{"email": "a@example.com"}"#])?;
    assert_eq!((&staff["value"], &staff["reason"]), (&json!(true), &json!("TARGETING_MATCH")), "{staff}");
    let again = String::from_utf8(check(node.cli(&["apply", file]))?.stdout)?;
    assert!(again.contains("already the log's latest"), "{again}");
    // A file with a dangling $ref is refused whole, naming the flag.
    let broken = dir.join("broken.json");
    std::fs::write(&broken, json!({"flags": {"x": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"$ref": "nope"}}}}).to_string())?;
    refused(
        &["apply", broken.to_str().context("a UTF-8 path")?],
        "flag \"x\": /targeting: $ref to evaluator \"nope\", which does not exist",
    );
    Ok(())
}
