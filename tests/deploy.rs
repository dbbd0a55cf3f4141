//! deploy/ agrees with lasti: each overlay renders with `kubectl kustomize`,
//! every object passes the Kubernetes schemas offline (`kubernetes-validate
//! --strict`), OpenShift and monitoring kinds are checked for the fields that
//! matter, ports and probes match the configuration lasti is given, that
//! configuration passes `lasti check-config`, and the image's runtime
//! contract (an arbitrary UID in group 0, a group-writable data directory)
//! holds for the real binary.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lasti::config::Config;
use serde_yaml_ng::Value;

const OVERLAYS: [&str; 2] = ["ephemeral", "persistent"];
const KUBECTL: &str = "/usr/bin/kubectl";
const VALIDATE: &str = "kubernetes-validate";

fn render(overlay: &str) -> String {
    common::require_tool(KUBECTL);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/overlays")
        .join(overlay);
    let out = Command::new(KUBECTL)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kustomize {overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 YAML")
}

fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

/// The configuration the ConfigMap gives lasti.
fn config_of(objects: &[Value]) -> (String, Config) {
    let map = find(objects, "ConfigMap");
    let text = str_of(&map["data"]["lasti.toml"], "lasti.toml").to_string();
    let config = Config::from_toml(&text).expect("the ConfigMap's config parses");
    (text, config)
}

fn container_port(container: &Value, name: &str) -> u16 {
    let ports = container["ports"].as_sequence().expect("container ports");
    let port = ports
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no container port named {name}"));
    port["containerPort"].as_u64().expect("containerPort") as u16
}

#[test]
fn overlays_pass_the_kubernetes_schemas() {
    common::require_tool(&which(VALIDATE));
    for overlay in OVERLAYS {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, render(overlay)).unwrap();
        let out = Command::new(which(VALIDATE))
            .arg("--strict")
            .arg(&file)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{overlay} failed validation:\n{log}");
        assert!(
            log.contains("passed for resource deployment/lasti"),
            "{log}"
        );
    }
}

#[test]
fn overlays_agree_with_lastis_configuration() {
    for overlay in OVERLAYS {
        let objects = objects(&render(overlay));
        let (_, config) = config_of(&objects);
        config.validate().expect("valid");
        let deployment = find(&objects, "Deployment");
        let pod = &deployment["spec"]["template"];
        let container = &pod["spec"]["containers"][0];
        assert_eq!(
            container_port(container, "registry"),
            config.listen.port(),
            "{overlay}"
        );
        let admin = config.admin_listen.expect("an admin listener");
        assert_eq!(
            container_port(container, "admin"),
            admin.port(),
            "{overlay}"
        );
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            assert_eq!(
                container[probe]["httpGet"]["path"].as_str(),
                Some(path),
                "{overlay} {probe}"
            );
            assert_eq!(
                container[probe]["httpGet"]["port"].as_str(),
                Some("admin"),
                "{overlay} {probe}"
            );
        }
        assert_eq!(pod["spec"]["serviceAccountName"].as_str(), Some("lasti"));
        let mounts = container["volumeMounts"].as_sequence().unwrap();
        let data = mounts
            .iter()
            .find(|m| m["name"].as_str() == Some("data"))
            .unwrap();
        assert_eq!(
            Path::new(str_of(&data["mountPath"], "mountPath")),
            config.data_dir
        );

        // The Service exposes the container's named ports; the Route only the registry.
        let service = find(&objects, "Service");
        let targets: Vec<&str> = service["spec"]["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|p| str_of(&p["targetPort"], "targetPort"))
            .collect();
        assert_eq!(targets, ["registry", "admin"]);
        let route = find(&objects, "Route");
        assert_eq!(route["apiVersion"].as_str(), Some("route.openshift.io/v1"));
        assert_eq!(route["spec"]["to"]["kind"].as_str(), Some("Service"));
        assert_eq!(route["spec"]["to"]["name"], service["metadata"]["name"]);
        assert_eq!(
            route["spec"]["port"]["targetPort"].as_str(),
            Some("registry")
        );
        assert_eq!(route["spec"]["tls"]["termination"].as_str(), Some("edge"));

        // Prometheus scrapes the admin port's /metrics on the same pods.
        let monitor = find(&objects, "PodMonitor");
        let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
        assert_eq!(endpoint["port"].as_str(), Some("admin"));
        assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
        let labels = pod["metadata"]["labels"].as_mapping().unwrap();
        for (k, v) in monitor["spec"]["selector"]["matchLabels"]
            .as_mapping()
            .unwrap()
        {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{overlay}: PodMonitor selects the pods"
            );
        }

        // Alerts, each with a severity and a summary.
        let alerts = &find(&objects, "PrometheusRule")["spec"]["groups"][0]["rules"];
        for alert in alerts.as_sequence().unwrap() {
            assert!(alert["labels"]["severity"].as_str().is_some(), "{alert:?}");
            assert!(
                alert["annotations"]["summary"].as_str().is_some(),
                "{alert:?}"
            );
        }

        // The service account may push into the project.
        let binding = find(&objects, "RoleBinding");
        assert_eq!(
            binding["roleRef"]["name"].as_str(),
            Some("system:image-builder")
        );
        assert_eq!(binding["subjects"][0]["name"].as_str(), Some("lasti"));
    }
    let persistent = objects(&render("persistent"));
    let claim = &find(&persistent, "Deployment")["spec"]["template"]["spec"]["volumes"][1];
    assert_eq!(
        claim["persistentVolumeClaim"]["claimName"],
        find(&persistent, "PersistentVolumeClaim")["metadata"]["name"]
    );
}

#[test]
fn the_configmaps_config_passes_check_config() {
    let objects = objects(&render("ephemeral"));
    let (text, _) = config_of(&objects);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lasti.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lasti"))
        .arg("--config")
        .arg(&file)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

/// What the Containerfile's runtime stage promises: lasti runs as an
/// arbitrary UID in group 0 with a group-writable data directory and serves.
#[test]
fn lasti_runs_as_an_arbitrary_uid_in_group_zero() {
    let containerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Containerfile"))
            .unwrap();
    assert!(containerfile.contains("cargo build --release --locked --bin lasti"));
    assert!(containerfile.contains("chgrp -R 0 /var/lib/lasti"));
    assert!(containerfile.contains("chmod -R g=u /var/lib/lasti"));
    assert!(containerfile
        .lines()
        .any(|l| l.trim_start().starts_with("USER ") && !l.contains("root") && !l.contains(" 0")));

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var-lib-lasti");
    std::fs::create_dir(&data).unwrap();
    for cmd in [vec!["chgrp", "-R", "0"], vec!["chmod", "-R", "g=u,g+w"]] {
        let status = Command::new(cmd[0])
            .args(&cmd[1..])
            .arg(&data)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let open_to_all = Command::new("chmod")
        .args(["o+x"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(open_to_all.success());
    let (api, admin) = (common::free_port(), common::free_port());
    let mut child = Command::new("/usr/bin/setpriv")
        .args([
            "--reuid=1000770000",
            "--regid=0",
            "--clear-groups",
            "/usr/bin/timeout",
            "60",
        ])
        .arg(env!("CARGO_BIN_EXE_lasti"))
        .args([
            "--listen",
            &format!("127.0.0.1:{api}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .arg("--data-dir")
        .arg(&data)
        .args(["--upstream", "docker.io=http://127.0.0.1:9"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start lasti as an arbitrary uid");
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        if let Ok(status) = common::http_get_status(
            format!("127.0.0.1:{admin}").parse().unwrap(),
            "/readyz",
            None,
        ) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "lasti did not start as uid 1000770000"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new("/bin/kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    assert_eq!(ready, 200, "ready with a group-writable data directory");
    assert!(data.join("index.redb").exists());
}

fn which(tool: &str) -> String {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let path = Path::new(dir).join(tool);
        if path.exists() {
            return path.display().to_string();
        }
    }
    format!("/usr/local/bin/{tool}")
}
