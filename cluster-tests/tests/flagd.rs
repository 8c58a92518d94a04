//! flagd's gRPC services against a real node process, with the node's generated clients (as a
//! provider speaks to them): every resolver with its values and error codes, the event stream
//! seeing a change, the sync stream sending the whole configuration at connect and at each
//! change, selectors by flag set and prefix (on OFREP too), tokens in gRPC metadata, and TLS.

use std::time::Duration;

use anyhow::{Context, Result};
use grapevine_cluster_tests::{Cluster, Node, TEST_TOKEN, free_port};
use grapevine_node::flagd::convert::{map_to_struct, struct_to_map};
use grapevine_node::flagd::schema::evaluation::service_client::ServiceClient;
use grapevine_node::flagd::schema::evaluation::*;
use grapevine_node::flagd::schema::sync::flag_sync_service_client::FlagSyncServiceClient;
use grapevine_node::flagd::schema::sync::{FetchAllFlagsRequest, GetMetadataRequest, SyncFlagsRequest};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

/// Reads in the tests' scope: the one read token of these nodes.
const READ_TOKEN: &str = "gv_flagd-reader";

fn flagd_node(cluster: &mut Cluster, tls: bool) -> Result<(usize, u16, u16)> {
    let (evaluation, sync) = (free_port(false), free_port(false));
    let node = cluster.add_node()?;
    let tls_lines = if tls {
        let dir = node.tls.display().to_string();
        format!("tls_cert = \"{dir}/node.pem\"\ntls_key = \"{dir}/node.key\"\n")
    } else {
        String::new()
    };
    node.config_toml.push_str(&format!(
        "[flagd]\nevaluation = \"127.0.0.1:{evaluation}\"\nsync = \"127.0.0.1:{sync}\"\n{tls_lines}context = {{ injected = \"set\" }}\n"
    ));
    let digest = hex_sha256(READ_TOKEN);
    node.auth_toml.push_str(&format!(
        "\n[[auth.token]]\nname = \"reader\"\nsha256 = \"{digest}\"\nrole = \"read\"\nprefixes = [\"app/\"]\n"
    ));
    Ok((cluster.nodes.len() - 1, evaluation, sync))
}

fn hex_sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn put_flag(node: &Node, dir: &std::path::Path, key: &str, definition: Value) -> Result<()> {
    let path = dir.join(format!("{}.json", key.replace('/', "_")));
    std::fs::write(&path, definition.to_string())?;
    node.cli_json(&["flag", "set", key, "--file", path.to_str().context("a UTF-8 path")?])?;
    Ok(())
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ASCII"));
    request
}

fn with_selector<T>(mut request: tonic::Request<T>, selector: &str) -> tonic::Request<T> {
    request.metadata_mut().insert("flagd-selector", selector.parse().expect("ASCII"));
    request
}

fn context(value: Value) -> Option<prost_types::Struct> {
    Some(map_to_struct(value.as_object().expect("an object")))
}

async fn channel(port: u16) -> Result<Channel> {
    Ok(Channel::from_shared(format!("http://127.0.0.1:{port}"))?.connect().await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn rpc_providers_evaluate_and_in_process_providers_sync_the_applied_flags() -> Result<()> {
    let mut cluster = Cluster::new(0)?;
    let (index, evaluation_port, sync_port) = flagd_node(&mut cluster, false)?;
    cluster.start_all()?;
    let dir = cluster.dir.path().to_owned();
    let node = &cluster.nodes[index];
    put_flag(
        node,
        &dir,
        "app/bool",
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}),
    )?;
    put_flag(
        node,
        &dir,
        "app/color",
        json!({"state": "ENABLED", "variants": {"red": "red", "blue": "blue"}, "defaultVariant": "red",
               "targeting": {"if": [{"==": [{"var": "injected"}, "set"]}, "blue", null]}, "metadata": {"team": "ui"}}),
    )?;
    put_flag(
        node,
        &dir,
        "app/int",
        json!({"state": "ENABLED", "variants": {"one": 1, "two": 2}, "defaultVariant": "two"}),
    )?;
    put_flag(
        node,
        &dir,
        "app/float",
        json!({"state": "ENABLED", "variants": {"half": 0.5}, "defaultVariant": "half"}),
    )?;
    put_flag(
        node,
        &dir,
        "app/object",
        json!({"state": "ENABLED", "variants": {"a": {"x": 1}}, "defaultVariant": "a"}),
    )?;
    put_flag(node, &dir, "app/off", json!({"state": "DISABLED", "variants": {"a": "A"}, "defaultVariant": "a"}))?;
    put_flag(node, &dir, "other/secret", json!({"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a"}))?;

    let mut rpc = ServiceClient::new(channel(evaluation_port).await?);
    // No token, and no anonymous role: refused.
    let refused = rpc.resolve_boolean(ResolveBooleanRequest { flag_key: "app/bool".into(), context: None }).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);

    let ask = |key: &str| ResolveBooleanRequest { flag_key: key.into(), context: None };
    let answer = rpc.resolve_boolean(with_token(ask("app/bool"), READ_TOKEN)).await?.into_inner();
    assert_eq!((answer.value, answer.reason.as_str(), answer.variant.as_str()), (true, "STATIC", "on"));
    // The static context ([flagd] context) meets the rule.
    let request =
        ResolveStringRequest { flag_key: "app/color".into(), context: context(json!({"targetingKey": "u1"})) };
    let answer = rpc.resolve_string(with_token(request, READ_TOKEN)).await?.into_inner();
    assert_eq!((answer.value.as_str(), answer.reason.as_str()), ("blue", "TARGETING_MATCH"));
    assert_eq!(struct_to_map(answer.metadata.context("metadata")?)["team"], "ui");
    let request = ResolveIntRequest { flag_key: "app/int".into(), context: None };
    assert_eq!(rpc.resolve_int(with_token(request, READ_TOKEN)).await?.into_inner().value, 2);
    let request = ResolveFloatRequest { flag_key: "app/float".into(), context: None };
    assert_eq!(rpc.resolve_float(with_token(request, READ_TOKEN)).await?.into_inner().value, 0.5);
    let request = ResolveObjectRequest { flag_key: "app/object".into(), context: None };
    let object = rpc.resolve_object(with_token(request, READ_TOKEN)).await?.into_inner().value.context("a value")?;
    assert_eq!(Value::Object(struct_to_map(object)), json!({"x": 1}));
    let disabled = rpc
        .resolve_string(with_token(ResolveStringRequest { flag_key: "app/off".into(), context: None }, READ_TOKEN))
        .await?;
    assert_eq!((disabled.get_ref().reason.as_str(), disabled.get_ref().variant.as_str()), ("DISABLED", ""));
    // Errors as flagd answers them.
    let missing = rpc.resolve_boolean(with_token(ask("app/missing"), READ_TOKEN)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let mismatch = rpc.resolve_boolean(with_token(ask("app/int"), READ_TOKEN)).await.unwrap_err();
    assert_eq!(mismatch.code(), Code::InvalidArgument, "{mismatch:?}");
    // Out of the token's prefixes: as if absent.
    let outside = rpc
        .resolve_string(with_token(ResolveStringRequest { flag_key: "other/secret".into(), context: None }, READ_TOKEN))
        .await;
    assert_eq!(outside.unwrap_err().code(), Code::NotFound);
    let all = rpc.resolve_all(with_token(ResolveAllRequest { context: None }, READ_TOKEN)).await?.into_inner();
    let mut keys: Vec<_> = all.flags.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["app/bool", "app/color", "app/float", "app/int", "app/object", "app/off"]);
    let selected = rpc
        .resolve_all(with_selector(with_token(ResolveAllRequest { context: None }, TEST_TOKEN), "prefix=other/"))
        .await?;
    assert_eq!(selected.get_ref().flags.keys().collect::<Vec<_>>(), ["other/secret"]);

    // The event stream: ready at once, then the change of one flag.
    let mut events = rpc.event_stream(with_token(EventStreamRequest {}, READ_TOKEN)).await?.into_inner();
    let ready = tokio::time::timeout(Duration::from_secs(5), events.message()).await??.context("an event")?;
    assert_eq!(ready.r#type, "provider_ready");
    let mut sync = FlagSyncServiceClient::new(channel(sync_port).await?);
    let mut stream = sync
        .sync_flags(with_token(
            SyncFlagsRequest { provider_id: "t".into(), selector: "prefix=app/".into() },
            READ_TOKEN,
        ))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await??.context("a configuration")?;
    let configuration: Value = serde_json::from_str(&first.flag_configuration)?;
    assert_eq!(configuration["flags"].as_object().map(|f| f.len()), Some(6), "{configuration}");
    assert_eq!(configuration["flags"]["app/color"]["targeting"]["if"][1], "blue");
    assert_eq!(Value::Object(struct_to_map(first.sync_context.context("sync_context")?)), json!({"injected": "set"}));

    put_flag(
        node,
        &dir,
        "app/bool",
        json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}),
    )?;
    let change = tokio::time::timeout(Duration::from_secs(5), events.message()).await??.context("an event")?;
    assert_eq!(change.r#type, "configuration_change");
    let data = Value::Object(struct_to_map(change.data.context("data")?));
    assert_eq!(data["flags"]["app/bool"]["type"], "update", "{data}");
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message()).await??.context("a configuration")?;
    let configuration: Value = serde_json::from_str(&next.flag_configuration)?;
    assert_eq!(configuration["flags"]["app/bool"]["defaultVariant"], "off");

    // A flag set applied from a file keeps its flagSetId: the selector picks its flags.
    let file = dir.join("set.json");
    std::fs::write(
        &file,
        json!({"flags": {"app/set-a": {"state": "ENABLED", "variants": {"a": "A"}, "defaultVariant": "a"}},
               "metadata": {"flagSetId": "checkout", "version": "7"}})
        .to_string(),
    )?;
    node.cli_json(&["apply", file.to_str().context("UTF-8")?])?;
    let fetch = |selector: &str| FetchAllFlagsRequest { provider_id: String::new(), selector: selector.into() };
    let set = sync.fetch_all_flags(with_token(fetch("flagSetId=checkout"), READ_TOKEN)).await?.into_inner();
    let set: Value = serde_json::from_str(&set.flag_configuration)?;
    assert_eq!(
        set["flags"].as_object().map(|f| f.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["app/set-a".to_owned()])
    );
    assert_eq!(set["metadata"], json!({"flagSetId": "checkout", "version": "7"}));
    // The same selector on OFREP, in the Flagd-Selector header.
    let http = reqwest::Client::new();
    let ofrep = |path: &str| {
        http.post(format!("{}/ofrep/v1/evaluate/flags{path}", node.url()))
            .bearer_auth(READ_TOKEN)
            .header("Flagd-Selector", "flagSetId=checkout")
            .header("content-type", "application/json")
            .body("{}")
    };
    let bulk: Value = ofrep("").send().await?.json().await?;
    let keys: Vec<_> = bulk["flags"].as_array().context("flags")?.iter().map(|f| f["key"].clone()).collect();
    assert_eq!(keys, [json!("app/set-a")], "{bulk}");
    assert_eq!(ofrep("/app/set-a").send().await?.status(), 200);
    assert_eq!(ofrep("/app/bool").send().await?.status(), 404);
    let bad = sync.fetch_all_flags(with_token(fetch("source=db"), READ_TOKEN)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    // Deprecated by flagd, still called by older providers.
    #[allow(deprecated)]
    let metadata = sync.get_metadata(with_token(GetMetadataRequest {}, READ_TOKEN)).await?.into_inner();
    assert_eq!(Value::Object(struct_to_map(metadata.metadata.context("metadata")?)), json!({"injected": "set"}));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn both_ports_speak_tls_when_configured() -> Result<()> {
    let mut cluster = Cluster::new(0)?;
    let (index, evaluation_port, sync_port) = flagd_node(&mut cluster, true)?;
    cluster.start_all()?;
    let node = &cluster.nodes[index];
    let dir = cluster.dir.path().to_owned();
    put_flag(node, &dir, "app/bool", json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}))?;
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(cluster.ca.join("ca.pem"))?);
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(ca).domain_name(node.name.clone());
    let secure = |port: u16| {
        Channel::from_shared(format!("https://127.0.0.1:{port}")).expect("a URI").tls_config(tls.clone()).expect("TLS")
    };
    let mut rpc = ServiceClient::new(secure(evaluation_port).connect().await?);
    let request = ResolveBooleanRequest { flag_key: "app/bool".into(), context: None };
    assert!(rpc.resolve_boolean(with_token(request, READ_TOKEN)).await?.into_inner().value);
    let mut sync = FlagSyncServiceClient::new(secure(sync_port).connect().await?);
    let all = sync.fetch_all_flags(with_token(FetchAllFlagsRequest::default(), READ_TOKEN)).await?.into_inner();
    assert!(all.flag_configuration.contains("app/bool"));
    // Plain text is not served on a TLS port.
    let mut plain = ServiceClient::new(channel(evaluation_port).await?);
    let request = ResolveBooleanRequest { flag_key: "app/bool".into(), context: None };
    assert!(plain.resolve_boolean(with_token(request, READ_TOKEN)).await.is_err());
    Ok(())
}
