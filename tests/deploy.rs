//! deploy/ agrees with lasti and with Rahti: each overlay, and the
//! monitoring kustomization, renders with `kubectl kustomize` (whichever
//! kubectl the README's test command finds or installs: Debian 12's 1.20,
//! with kustomize v2.0.3, as well as a current one), every object passes the
//! Kubernetes schemas offline (`kubernetes-validate --strict`), OpenShift and
//! monitoring kinds are checked for the fields that matter, ports and probes
//! match the configuration lasti is given, that configuration with the pod's
//! arguments passes `lasti check-config`, the pod fits a default Rahti
//! project (its LimitRange, no monitoring kinds in the overlays, a cache
//! below its volume), and the image's runtime contract (an arbitrary UID in
//! group 0, a group-writable data directory) holds for the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lasti::config::{Config, Overrides};
use serde::Deserialize;
use serde_yaml_ng::Value;

const OVERLAYS: [&str; 3] = ["overlays/ephemeral", "overlays/persistent", "overlays/ha"];
const MONITORING: &str = "monitoring";
/// The namespace the rendered pod is taken to run in.
const NAMESPACE: &str = "my-project";
/// The address the rendered pod is taken to have.
const POD_IP: &str = "10.128.0.7";
/// Rahti's LimitRange: a container's limit is at most this many times its request.
const RAHTI_LIMIT_TO_REQUEST: f64 = 5.0;

/// `LASTI_TEST_KUBECTL` renders with another kubectl (e.g. Debian's, unpacked
/// elsewhere); by default the one the README's test command installs.
fn kubectl() -> String {
    let kubectl = std::env::var("LASTI_TEST_KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into());
    assert!(
        Path::new(&kubectl).exists(),
        "{kubectl} is missing: run ./scripts/test, which installs Debian's \
         kubernetes-client when there is no kubectl"
    );
    kubectl
}

/// `kubernetes-validate`: `LASTI_KUBERNETES_VALIDATE` (which ./scripts/test
/// exports), else the virtualenv ./scripts/test makes, else one on PATH.
fn kubernetes_validate() -> PathBuf {
    if let Some(path) = std::env::var_os("LASTI_KUBERNETES_VALIDATE") {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "LASTI_KUBERNETES_VALIDATE is {}, which does not exist",
            path.display()
        );
        return path;
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")));
    let venv = cache.map(|c| c.join("lasti-test/venv/bin/kubernetes-validate"));
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("kubernetes-validate"))
            .find(|p| p.exists())
    });
    venv.filter(|p| p.exists()).or(on_path).unwrap_or_else(|| {
        panic!(
            "kubernetes-validate not found: run ./scripts/test, which installs it \
             in a virtualenv under ${{XDG_CACHE_HOME:-$HOME/.cache}}/lasti-test/venv, \
             or set LASTI_KUBERNETES_VALIDATE to its path"
        )
    })
}

fn render(dir: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(dir);
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(&path)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kustomize {dir}: {}",
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

fn container(objects: &[Value]) -> &Value {
    &find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

/// The container's arguments as the kubelet passes them: `$(VAR)` replaced
/// by the container's environment, the namespace taken to be [`NAMESPACE`]
/// and the pod's address [`POD_IP`].
fn pod_args(container: &Value) -> Vec<String> {
    let env = container["env"].as_sequence().expect("container env");
    let value_of = |var: &Value| -> String {
        if let Some(value) = var["value"].as_str() {
            return value.to_string();
        }
        match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.namespace") => NAMESPACE.to_string(),
            Some("status.podIP") => POD_IP.to_string(),
            _ => panic!("an environment value the test cannot fill in: {var:?}"),
        }
    };
    let args = container["args"].as_sequence().expect("container args");
    args.iter()
        .map(|arg| {
            let mut arg = str_of(arg, "arg").to_string();
            for var in env {
                let name = str_of(&var["name"], "env name");
                arg = arg.replace(&format!("$({name})"), &value_of(var));
            }
            arg
        })
        .collect()
}

/// The configuration the ConfigMap gives lasti, with the pod's arguments applied.
fn config_of(objects: &[Value]) -> (String, Config) {
    let map = find(objects, "ConfigMap");
    let text = str_of(&map["data"]["lasti.toml"], "lasti.toml").to_string();
    let mut config = Config::from_toml(&text).expect("the ConfigMap's config parses");
    let args = pod_args(container(objects));
    let project = args
        .iter()
        .position(|a| a == "--target-project")
        .map(|i| args[i + 1].clone());
    config.apply(Overrides {
        target_project: project,
        ..Overrides::default()
    });
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

/// A Kubernetes quantity (`500m`, `2`, `128Mi`, `20Gi`) as a number.
/// The pod's volume mounted where `path` is, in lasti's container.
fn volume_holding<'a>(objects: &'a [Value], path: &Path) -> &'a Value {
    let mount = container(objects)["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| path.starts_with(str_of(&m["mountPath"], "mountPath")))
        .unwrap_or_else(|| panic!("{} is mounted", path.display()));
    find(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume")
}

fn quantity(v: &Value) -> f64 {
    let text = v
        .as_str()
        .map(str::to_string)
        .or_else(|| v.as_u64().map(|n| n.to_string()))
        .unwrap_or_else(|| panic!("not a quantity: {v:?}"));
    let units = [
        ("m", 1e-3),
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
    ];
    for (suffix, factor) in units {
        if let Some(n) = text.strip_suffix(suffix) {
            return n.parse::<f64>().expect("a number") * factor;
        }
    }
    text.parse().expect("a plain number")
}

#[test]
fn overlays_pass_the_kubernetes_schemas() {
    let validate = kubernetes_validate();
    for dir in OVERLAYS.iter().chain([&MONITORING]) {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("rendered.yaml");
        std::fs::write(&file, render(dir)).unwrap();
        let out = Command::new(&validate)
            .arg("--strict")
            .arg(&file)
            .output()
            .unwrap();
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{dir} failed validation:\n{log}");
        if *dir != MONITORING {
            assert!(
                log.contains("passed for resource deployment/lasti"),
                "{log}"
            );
        }
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
        // The drain (connections, then what is owed to the bucket) ends
        // before the kubelet's SIGKILL.
        let kill_after = pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        assert!(
            config.shutdown_grace < Duration::from_secs(kill_after),
            "{overlay}: shutdown_grace {:?} within terminationGracePeriodSeconds {kill_after}",
            config.shutdown_grace
        );
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
        // State-changing admin calls take the token of an optional Secret:
        // refused until the operator creates it, never open.
        let token = config
            .admin_token_file
            .as_ref()
            .expect("an admin token file");
        let volume = volume_holding(&objects, token);
        assert_eq!(volume["secret"]["secretName"].as_str(), Some("lasti-admin"));
        assert_eq!(volume["secret"]["optional"].as_bool(), Some(true));
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

        // Back-fill into the project the pod runs in, from the project's own image stream.
        assert!(config.target.enabled(), "{overlay}: back-fill is on");
        assert_eq!(config.target.project.as_deref(), Some(NAMESPACE));
        let image = str_of(&container["image"], "image");
        assert!(
            !image.contains('/'),
            "{overlay}: {image} is an image stream name"
        );
        assert_eq!(
            pod["metadata"]["annotations"]["alpha.image.policy.openshift.io/resolve-names"]
                .as_str(),
            Some("*"),
            "{overlay}: the image is looked up in the project's image streams"
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
        let labels = pod["metadata"]["labels"].as_mapping().unwrap();
        for (k, v) in service["spec"]["selector"].as_mapping().unwrap() {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{overlay}: the Service selects the pods"
            );
        }
        let route = find(&objects, "Route");
        assert_eq!(route["apiVersion"].as_str(), Some("route.openshift.io/v1"));
        assert_eq!(route["spec"]["to"]["kind"].as_str(), Some("Service"));
        assert_eq!(route["spec"]["to"]["name"], service["metadata"]["name"]);
        assert_eq!(
            route["spec"]["port"]["targetPort"].as_str(),
            Some("registry")
        );
        assert_eq!(route["spec"]["tls"]["termination"].as_str(), Some("edge"));

        // The service account may push into the project.
        let binding = find(&objects, "RoleBinding");
        assert_eq!(
            binding["roleRef"]["name"].as_str(),
            Some("system:image-builder")
        );
        assert_eq!(binding["subjects"][0]["name"].as_str(), Some("lasti"));
    }
    let persistent = objects(&render("overlays/persistent"));
    let claim = &find(&persistent, "Deployment")["spec"]["template"]["spec"]["volumes"][1];
    assert_eq!(
        claim["persistentVolumeClaim"]["claimName"],
        find(&persistent, "PersistentVolumeClaim")["metadata"]["name"]
    );
}

/// overlays/ha: three replicas on different nodes where possible, one
/// disruption at a time, and the shared bucket with its credentials from
/// the Secret the README has the user create.
#[test]
fn the_ha_overlay_runs_three_replicas_on_one_bucket() {
    let objects = objects(&render("overlays/ha"));
    let deployment = find(&objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(3));
    assert_eq!(
        deployment["spec"]["strategy"]["type"].as_str(),
        Some("RollingUpdate")
    );
    let pod = &deployment["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_mapping().unwrap();
    let spread = &pod["spec"]["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(
        spread["topologyKey"].as_str(),
        Some("kubernetes.io/hostname")
    );
    let budget = find(&objects, "PodDisruptionBudget");
    assert_eq!(budget["spec"]["maxUnavailable"].as_u64(), Some(1));
    let peers = objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("Service") && o["metadata"]["name"] == "lasti-peers")
        .expect("the headless Service the replicas find each other by");
    assert_eq!(peers["spec"]["clusterIP"].as_str(), Some("None"));
    for selector in [
        &spread["labelSelector"]["matchLabels"],
        &budget["spec"]["selector"]["matchLabels"],
        &peers["spec"]["selector"],
    ] {
        for (k, v) in selector.as_mapping().unwrap() {
            assert_eq!(labels.get(k), Some(v), "selects the lasti pods");
        }
    }
    assert_eq!(
        container(&objects)["envFrom"][0]["secretRef"]["name"].as_str(),
        Some("lasti-s3")
    );
    let (_, mut config) = config_of(&objects);
    assert!(config.bucket.enabled(), "the replicas share a bucket");

    // The peer listener is the port the headless Service names, and its DNS
    // name is what the replicas look up; each pod knows its own address.
    let lasti = container(&objects);
    let peer_port = lasti["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "peer")
        .expect("a peer port")["containerPort"]
        .as_u64();
    assert_eq!(
        peers["spec"]["ports"][0]["targetPort"].as_str(),
        Some("peer")
    );
    let listen = config.cluster.listen.expect("the cluster is on");
    assert_eq!(Some(u64::from(listen.port())), peer_port);
    let dns = config.cluster.peers_dns.clone().expect("members from DNS");
    let (host, port) = dns.rsplit_once(':').unwrap();
    assert_eq!(host, str_of(&peers["metadata"]["name"], "name"));
    assert_eq!(
        port.parse::<u64>().ok(),
        peers["spec"]["ports"][0]["port"].as_u64()
    );
    let pod_ip = lasti["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_IP")
        .expect("POD_IP");
    assert_eq!(
        pod_ip["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("status.podIP")
    );
    assert_eq!(
        config.cluster.advertised(Some(POD_IP)).unwrap(),
        format!("{POD_IP}:{}", listen.port())
    );
    peer_port_admits_only_lasti_pods(&objects, labels);
    let secret_file = config.cluster.secret_file.clone().expect("a shared secret");
    let volume = volume_holding(&objects, &secret_file);
    assert_eq!(
        volume["secret"]["secretName"].as_str(),
        Some("lasti-cluster")
    );
    assert_eq!(
        config.bucket.endpoint.as_ref().map(|u| u.as_str()),
        Some("https://a3s.fi/")
    );
    // The two credentials (here from files) are all lasti needs besides.
    let dir = tempfile::tempdir().unwrap();
    for (name, field) in [
        ("id", &mut config.bucket.access_key_id_file),
        ("secret", &mut config.bucket.secret_access_key_file),
    ] {
        std::fs::write(dir.path().join(name), name).unwrap();
        *field = Some(dir.path().join(name));
    }
    config.bucket.resolve_secrets().expect("the credentials");
    config.validate().expect("valid");
}

/// The README's steps for several replicas on Allas, as the user types
/// them, name what the rendered `ha` overlay uses: the Secrets and their
/// keys, the bucket's placeholder, the endpoint, the overlay's path.
#[test]
fn the_readme_s_allas_steps_match_the_ha_overlay() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let steps = readme
        .split("## Several replicas on Allas")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README's Allas section");
    // `oc create secret generic NAME --from-literal=KEY=... ...`: each
    // Secret the steps create, with its keys.
    let mut secrets = std::collections::HashMap::new();
    for command in steps.split("oc create secret generic ").skip(1) {
        let command = command.split('`').next().unwrap();
        let name = command.split_whitespace().next().unwrap().to_string();
        let keys: Vec<String> = command
            .split("--from-literal=")
            .skip(1)
            .map(|kv| kv.split('=').next().unwrap().to_string())
            .collect();
        secrets.insert(name, keys);
    }
    let objects = objects(&render("overlays/ha"));
    let lasti = container(&objects);
    let env_secret = str_of(&lasti["envFrom"][0]["secretRef"]["name"], "secretRef");
    assert_eq!(
        secrets.get(env_secret).map(Vec::as_slice),
        Some(
            &[
                "AWS_ACCESS_KEY_ID".to_string(),
                "AWS_SECRET_ACCESS_KEY".to_string()
            ][..]
        ),
        "the S3 keys' Secret, with the variables lasti reads"
    );
    let (_, config) = config_of(&objects);
    let secret_file = config.cluster.secret_file.expect("a shared secret");
    let volume = volume_holding(&objects, &secret_file);
    let cluster_secret = str_of(&volume["secret"]["secretName"], "secretName");
    let key = secret_file
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        secrets.get(cluster_secret),
        Some(&vec![key]),
        "the replicas' Secret, its key the file lasti reads"
    );
    let bucket = config.bucket.bucket.expect("a bucket name");
    assert!(
        steps.contains(&format!("bucket = \"{bucket}\"")),
        "the steps say where the bucket's name goes ({bucket})"
    );
    let endpoint = config.bucket.endpoint.expect("an endpoint");
    assert!(steps.contains(endpoint.as_str().trim_end_matches('/')));
    assert!(
        config.bucket.path_style,
        "path-style addressing, as the steps say"
    );
    assert!(steps.contains("oc apply -k deploy/overlays/ha"));
    // The cache's quota as the steps give it, below the pod's volume.
    assert_eq!(config.cache.max_size.as_u64(), 8 << 30);
    assert!(steps.contains("max_size = \"8 GiB\""));
}

/// The NetworkPolicy of overlays/ha: it selects the lasti pods, admits the
/// peer port only from pods with their labels, and keeps the registry and
/// admin ports open (a policy that selects a pod closes what it does not
/// list).
fn peer_port_admits_only_lasti_pods(objects: &[Value], labels: &serde_yaml_ng::Mapping) {
    let policy = find(objects, "NetworkPolicy");
    let selects_lasti = |selector: &Value| {
        let wanted = selector["matchLabels"].as_mapping().expect("matchLabels");
        !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selects_lasti(&policy["spec"]["podSelector"]));
    let rules = policy["spec"]["ingress"]
        .as_sequence()
        .expect("ingress rules");
    let admits = |port: &str| -> Vec<&Value> {
        rules
            .iter()
            .filter(|rule| {
                rule["ports"]
                    .as_sequence()
                    .is_some_and(|ports| ports.iter().any(|p| p["port"] == port))
            })
            .collect()
    };
    for open in ["registry", "admin"] {
        assert!(
            admits(open).iter().any(|rule| rule["from"].is_null()),
            "{open} stays open"
        );
    }
    let peer_rules = admits("peer");
    assert!(!peer_rules.is_empty(), "the peer port is admitted");
    for rule in peer_rules {
        let from = rule["from"].as_sequence().expect("the peer port names who");
        assert!(
            from.iter().all(|peer| peer["namespaceSelector"].is_null()
                && peer["ipBlock"].is_null()
                && selects_lasti(&peer["podSelector"])),
            "only lasti's pods reach the peer port: {from:?}"
        );
    }
}

/// deploy/build builds the image in Rahti from the uploaded tree with the
/// Containerfile, into the image stream the Deployment runs.
#[test]
fn the_rahti_build_makes_the_image_the_deployment_runs() {
    let build = objects(&render("build"));
    let config = find(&build, "BuildConfig");
    assert_eq!(config["apiVersion"].as_str(), Some("build.openshift.io/v1"));
    assert_eq!(config["spec"]["source"]["type"].as_str(), Some("Binary"));
    let strategy = &config["spec"]["strategy"];
    assert_eq!(strategy["type"].as_str(), Some("Docker"));
    let dockerfile = str_of(
        &strategy["dockerStrategy"]["dockerfilePath"],
        "dockerfilePath",
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join(dockerfile).is_file(),
        "{dockerfile} is in the tree"
    );
    let output = &config["spec"]["output"]["to"];
    assert_eq!(output["kind"].as_str(), Some("ImageStreamTag"));
    let stream = find(&build, "ImageStream");
    assert_eq!(
        stream["spec"]["lookupPolicy"]["local"].as_bool(),
        Some(true)
    );
    let name = str_of(&stream["metadata"]["name"], "name");
    assert_eq!(str_of(&output["name"], "name"), format!("{name}:latest"));
    let deployed = objects(&render("overlays/ephemeral"));
    assert_eq!(
        str_of(&container(&deployed)["image"], "image"),
        str_of(&output["name"], "name"),
        "the Deployment runs the tag the build pushes"
    );
    let resources = &config["spec"]["resources"];
    for what in ["cpu", "memory"] {
        let (request, limit) = (
            quantity(&resources["requests"][what]),
            quantity(&resources["limits"][what]),
        );
        assert!(limit <= request * RAHTI_LIMIT_TO_REQUEST, "build {what}");
    }

    // A finished build rolls the Deployment out: its image-change trigger
    // follows the tag the build pushes, into the lasti container.
    for overlay in ["overlays/ephemeral", "overlays/persistent", "overlays/ha"] {
        let deployed = objects(&render(overlay));
        let deployment = find(&deployed, "Deployment");
        let triggers = str_of(
            &deployment["metadata"]["annotations"]["image.openshift.io/triggers"],
            "image.openshift.io/triggers",
        );
        let triggers: serde_json::Value = serde_json::from_str(triggers).expect("JSON triggers");
        let trigger = &triggers[0];
        assert_eq!(trigger["from"]["kind"], "ImageStreamTag", "{overlay}");
        assert_eq!(trigger["from"]["name"], str_of(&output["name"], "name"));
        let container_name = str_of(&container(&deployed)["name"], "name");
        assert_eq!(
            trigger["fieldPath"],
            format!("spec.template.spec.containers[?(@.name==\"{container_name}\")].image"),
            "{overlay}"
        );
    }
}

/// Every `oc start-build` the README and `deploy/build` show uploads the
/// committed tree, never the working directory with `target/` (gigabytes)
/// and `./data` in it; the image's build context leaves them out too.
#[test]
fn the_rahti_build_uploads_only_what_the_build_needs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut commands = Vec::new();
    for file in [
        "README.md",
        "deploy/build/kustomization.yaml",
        "deploy/build/buildconfig.yaml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for at in text.match_indices("oc start-build").map(|(at, _)| at) {
            let line = text[at..].lines().next().unwrap_or_default();
            commands.push((file, line.to_string()));
        }
    }
    assert!(commands.len() >= 3, "{commands:?}");
    for (file, line) in &commands {
        assert!(line.contains("--from-repo=."), "{file}: {line}");
        assert!(!line.contains("--from-dir"), "{file}: {line}");
    }
    let ignored = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for path in ["target", "data", ".git"] {
        assert!(
            ignored.lines().any(|l| l.trim() == path),
            ".dockerignore: {path}"
        );
    }
}

/// What a default Rahti project has: no monitoring kinds unless user
/// workload monitoring is on, a LimitRange, a storage quota.
#[test]
fn overlays_fit_a_default_rahti_project() {
    for overlay in OVERLAYS {
        let objects = objects(&render(overlay));
        for object in &objects {
            let api = str_of(&object["apiVersion"], "apiVersion");
            assert!(
                !api.starts_with("monitoring.coreos.com/"),
                "{overlay} renders {api} {:?}, which a project without user \
                 workload monitoring refuses; it belongs in deploy/{MONITORING}",
                object["kind"]
            );
        }
        let resources = &container(&objects)["resources"];
        for what in ["cpu", "memory"] {
            let request = quantity(&resources["requests"][what]);
            let limit = quantity(&resources["limits"][what]);
            assert!(
                limit <= request * RAHTI_LIMIT_TO_REQUEST,
                "{overlay}: a {what} limit of {limit} is over {RAHTI_LIMIT_TO_REQUEST} \
                 times its request {request}, which Rahti's LimitRange refuses"
            );
        }
        let (_, config) = config_of(&objects);
        let volumes = find(&objects, "Deployment")["spec"]["template"]["spec"]["volumes"].clone();
        let data = volumes
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some("data"))
            .expect("a data volume");
        let size = if data["emptyDir"].is_mapping() {
            quantity(&data["emptyDir"]["sizeLimit"])
        } else {
            quantity(
                &find(&objects, "PersistentVolumeClaim")["spec"]["resources"]["requests"]
                    ["storage"],
            )
        };
        assert!(
            (config.cache.max_size.as_u64() as f64) < size,
            "{overlay}: cache.max_size ({} bytes) is not below the data volume's {size} bytes",
            config.cache.max_size.as_u64()
        );
    }
}

/// The monitoring kustomization scrapes and alerts on the overlays' pods.
#[test]
fn monitoring_watches_the_overlays_pods() {
    let monitoring = objects(&render(MONITORING));
    let monitor = find(&monitoring, "PodMonitor");
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["port"].as_str(), Some("admin"));
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    for overlay in OVERLAYS {
        let objects = objects(&render(overlay));
        let pod = &find(&objects, "Deployment")["spec"]["template"];
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
        let admin = container_port(container(&objects), "admin");
        assert_eq!(admin, config_of(&objects).1.admin_listen.unwrap().port());
    }
    // Alerts, each with a severity and a summary.
    let alerts = &find(&monitoring, "PrometheusRule")["spec"]["groups"][0]["rules"];
    for alert in alerts.as_sequence().unwrap() {
        assert!(alert["labels"]["severity"].as_str().is_some(), "{alert:?}");
        assert!(
            alert["annotations"]["summary"].as_str().is_some(),
            "{alert:?}"
        );
    }
}

/// lasti accepts the ConfigMap's configuration with the pod's arguments,
/// as it starts in the pod (`check-config` in place of `serve`, which
/// loads every file the configuration names: the service CA that
/// OpenShift mounts in the pod is stood in for by a test CA here).
#[test]
fn the_pods_configuration_passes_check_config() {
    let objects = objects(&render("overlays/ephemeral"));
    let (text, _) = config_of(&objects);
    let dir = tempfile::tempdir().unwrap();
    let service_ca = "/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt";
    assert!(text.contains(service_ca), "the pod trusts the service CA");
    let stand_in = dir.path().join("service-ca.crt");
    std::fs::write(&stand_in, common::tls::TestPki::new().ca_pem).unwrap();
    let text = text.replace(service_ca, stand_in.to_str().unwrap());
    let file = dir.path().join("lasti.toml");
    std::fs::write(&file, text).unwrap();
    let mut args = pod_args(container(&objects));
    assert_eq!(args.pop().as_deref(), Some("serve"));
    let out = Command::new(env!("CARGO_BIN_EXE_lasti"))
        .arg("--config")
        .arg(&file)
        .args(&args)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("configuration is valid"), "{stdout}");
    assert!(stdout.contains(&format!("{NAMESPACE:?}")), "{stdout}");
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
