//! `lasti offline`: shows and sets a running lasti's offline switches
//! through `/admin/offline` (setting needs the admin token).

use serde_json::Value;

/// Shows the switches and each upstream's breaker at `admin_url`; with
/// `set`, first sets the process's switch or `upstream`'s to it.
pub async fn run(
    admin_url: &str,
    set: Option<(bool, &str)>,
    upstream: Option<&str>,
    json: bool,
) -> Result<(), String> {
    let url = format!("{admin_url}/admin/offline");
    let answer = match set {
        Some((offline, token)) => {
            let mut body = serde_json::json!({ "offline": offline });
            if let Some(upstream) = upstream {
                body["upstream"] = upstream.into();
            }
            let (status, answer) =
                super::post_admin(&url, token, body.to_string().into_bytes()).await?;
            if status != 200 {
                let error = super::error_message(&answer);
                return Err(format!("{url} answered {status}: {error}"));
            }
            answer
        }
        None => {
            let (status, _, answer) = super::get(&super::client(), &url, None).await?;
            if status != 200 {
                return Err(format!("{url} answered {status}"));
            }
            answer
        }
    };
    if json {
        return super::print(&format!("{}\n", String::from_utf8_lossy(&answer)));
    }
    let state: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    super::print(&summary(&state))
}

/// The process's switch, then a line per upstream, then what each other
/// replica said.
fn summary(state: &Value) -> String {
    let offline = state["offline"].as_bool().unwrap_or(false);
    let mut out = format!("process: {}\n", if offline { "offline" } else { "online" });
    if let Some(upstreams) = state["upstreams"].as_object() {
        for (name, upstream) in upstreams {
            let said = match (
                upstream["offline"].as_bool().unwrap_or(false),
                upstream["breaker"].as_str().unwrap_or("closed"),
            ) {
                (true, _) => "offline".to_string(),
                (false, "open") => match upstream["retry_in_secs"].as_u64() {
                    Some(secs) => format!("skipped (failing; tried again in {secs} s)"),
                    None => "skipped (failing)".to_string(),
                },
                (false, "probing") => "probing".to_string(),
                (false, _) => "online".to_string(),
            };
            out.push_str(&format!("{name}: {said}\n"));
        }
    }
    for replica in state["replicas"].as_array().into_iter().flatten() {
        let member = replica["member"].as_str().unwrap_or("?");
        match replica["error"].as_str() {
            Some(error) => out.push_str(&format!("replica {member}: not set ({error})\n")),
            None => out.push_str(&format!("replica {member}: set\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_each_state() {
        let state = serde_json::json!({
            "offline": false,
            "upstreams": {
                "docker.io": { "offline": true, "breaker": "closed", "failures": 0 },
                "quay.io": { "offline": false, "breaker": "open", "failures": 0, "retry_in_secs": 12 },
                "ghcr.io": { "offline": false, "breaker": "closed", "failures": 1 },
            },
            "replicas": [{ "member": "10.0.0.2:5001" }, { "member": "10.0.0.3:5001", "error": "refused" }],
        });
        assert_eq!(
            summary(&state),
            "process: online\ndocker.io: offline\nghcr.io: online\n\
             quay.io: skipped (failing; tried again in 12 s)\n\
             replica 10.0.0.2:5001: set\nreplica 10.0.0.3:5001: not set (refused)\n"
        );
    }
}
