//! OFREP against real processes: single and bulk evaluation with every status code, ETag and
//! 304, and the SSE event stream seeing a change and a revert.

use std::time::Duration;

use anyhow::{Context, Result};
use grapevine_cluster_tests::{Cluster, Node, check};
use serde_json::{Value, json};

fn put_flag(node: &Node, dir: &std::path::Path, key: &str, definition: Value) -> Result<String> {
    let path = dir.join(format!("{key}.json"));
    std::fs::write(&path, definition.to_string())?;
    let answer = node.cli_json(&["flag", "set", key, "--file", path.to_str().context("a UTF-8 path")?])?;
    Ok(answer["generation"].as_str().context("a generation")?.to_owned())
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
    let http = reqwest::Client::new();
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

/// The next SSE event (keep-alive comments skipped), within 10 s.
async fn next_event(stream: &mut reqwest::Response) -> Result<String> {
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let chunk = stream.chunk().await?.context("the event stream ended")?;
            text.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(end) = text.find("\n\n") {
                let event: String = text[..end].to_owned();
                if event.lines().any(|line| line.starts_with("data:")) {
                    return Ok(event);
                }
                text.drain(..end + 2);
            }
        }
    })
    .await
    .context("no event within 10 s")?
}
