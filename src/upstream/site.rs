//! Where a registry's credentials may go.
//!
//! API requests carry credentials only to the registry's own origin
//! (scheme, host, port), whatever sent lasti elsewhere: a redirect, an
//! upload `Location`. Its token realm may be on the same origin, on the
//! same host name, on the same registrable domain (`auth.docker.io` for
//! `registry-1.docker.io`, both on `docker.io`), or on a host the
//! configuration names. Registrable domains come from the public suffix
//! list (the `psl` crate), so tenants of a hosting suffix (`x.github.io`,
//! `y.github.io`) are strangers; a few registry services that give each
//! customer a subdomain are not on that list and are named here. Names
//! without a suffix on the list (in-cluster `.svc` and `.cluster.local`
//! names, where one "domain" holds every tenant's services) match only
//! themselves; addresses and loopback names only their own origin.

use url::{Host, Url};

/// Registry services whose customers each get a subdomain, but which the
/// public suffix list does not (yet) list: a realm on another customer's
/// subdomain must not get this customer's credentials.
const SHARED_REGISTRY_DOMAINS: &[&str] = &[
    "azurecr.io",
    "azurecr.cn",
    "azurecr.us",
    "amazonaws.com",
    "amazonaws.com.cn",
    "jfrog.io",
];

/// Whether `url` is on the origin of `base` (scheme, host and port, the
/// scheme's default port filled in).
pub fn same_origin(url: &Url, base: &Url) -> bool {
    url.origin() == base.origin()
}

/// Whether a token realm at `realm` may receive the credentials of the
/// registry at `base`: same origin; same host name; same registrable
/// domain (named hosts under a known public suffix only); or a host in
/// `allowed`.
pub fn realm_trusted(realm: &Url, base: &Url, allowed: &[String]) -> bool {
    let Some(host) = realm.host() else {
        return false;
    };
    let listed = || {
        let name = host_name(&host);
        allowed.iter().any(|a| host_name_eq(a, &name))
    };
    if same_origin(realm, base) || listed() {
        return true;
    }
    match (host, base.host()) {
        // A loopback name, like an address, names a machine whose other
        // ports may be other services.
        (Host::Domain(a), Some(Host::Domain(b))) if !is_loopback_name(b) => {
            host_name_eq(a, b) || same_registrable(a, b)
        }
        _ => false,
    }
}

fn is_loopback_name(host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// The host as written in configuration: a name, or an address without brackets.
fn host_name(host: &Host<&str>) -> String {
    match host {
        Host::Domain(name) => name.to_string(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    }
}

fn host_name_eq(a: &str, b: &str) -> bool {
    let trim = |h: &str| h.trim_end_matches('.').trim_matches(['[', ']']).to_string();
    trim(a).eq_ignore_ascii_case(&trim(b))
}

/// Whether two host names share a registrable domain that the public suffix
/// list vouches for and that is not a shared registry service.
fn same_registrable(a: &str, b: &str) -> bool {
    match (registrable(a), registrable(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The registrable domain of a host, lower-cased, when its suffix is on the
/// public suffix list and it is not under a shared registry service.
fn registrable(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = psl::domain(host.as_bytes())?;
    if !domain.suffix().is_known() {
        return None;
    }
    let shared = SHARED_REGISTRY_DOMAINS
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")));
    if shared {
        return None;
    }
    std::str::from_utf8(domain.as_bytes())
        .ok()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    fn trusted(realm: &str, base: &str, allowed: &[&str]) -> bool {
        let allowed: Vec<String> = allowed.iter().map(|h| h.to_string()).collect();
        realm_trusted(&url(realm), &url(base), &allowed)
    }

    #[test]
    fn docker_hubs_realm_is_on_the_registrys_registrable_domain() {
        let hub = "https://registry-1.docker.io";
        assert!(trusted("https://auth.docker.io/token", hub, &[]));
        assert!(trusted("https://AUTH.docker.io./token", hub, &[]));
        assert!(!trusted("https://docker.io.evil.example/token", hub, &[]));
        assert!(!trusted("https://evil-docker.io/token", hub, &[]));
    }

    #[test]
    fn azure_customers_are_strangers_to_each_other() {
        let acr = "https://x.azurecr.io";
        assert!(!trusted("https://y.azurecr.io/oauth2/token", acr, &[]));
        assert!(!trusted("https://azurecr.io/oauth2/token", acr, &[]));
        assert!(trusted("https://x.azurecr.io/oauth2/token", acr, &[]));
        let ecr = "https://111.dkr.ecr.eu-north-1.amazonaws.com";
        assert!(!trusted(
            "https://222.dkr.ecr.eu-north-1.amazonaws.com/",
            ecr,
            &[]
        ));
    }

    #[test]
    fn tenants_of_a_public_suffix_are_strangers() {
        assert!(!trusted(
            "https://b.github.io/t",
            "https://a.github.io",
            &[]
        ));
        assert!(!trusted(
            "https://b.herokuapp.com/t",
            "https://a.herokuapp.com",
            &[]
        ));
    }

    #[test]
    fn names_without_a_known_suffix_match_only_themselves() {
        let internal = "https://image-registry.openshift-image-registry.svc:5000";
        assert!(trusted(
            "https://image-registry.openshift-image-registry.svc:5000/openshift/token",
            internal,
            &[]
        ));
        assert!(!trusted(
            "https://evil.openshift-image-registry.svc/t",
            internal,
            &[]
        ));
        let local = "https://registry.ns.svc.cluster.local";
        assert!(!trusted(
            "https://evil.other.svc.cluster.local/t",
            local,
            &[]
        ));
        assert!(trusted(
            "https://r.example.com:8443/t",
            "https://r.example.com",
            &[]
        ));
    }

    #[test]
    fn loopback_names_and_addresses_match_only_their_own_origin_or_the_allow_list() {
        assert!(!trusted(
            "http://localhost:5001/t",
            "http://localhost:5000",
            &[]
        ));
        assert!(trusted(
            "http://localhost:5000/t",
            "http://localhost:5000",
            &[]
        ));
        assert!(trusted(
            "http://localhost:5001/t",
            "http://localhost:5000",
            &["localhost"]
        ));
        assert!(!trusted("http://a.localhost/t", "http://b.localhost", &[]));
        let base = "http://127.0.0.1:5001";
        assert!(trusted("http://127.0.0.1:5001/token", base, &[]));
        assert!(!trusted("http://127.0.0.1:5002/token", base, &[]));
        assert!(!trusted("http://127.0.0.2:5001/token", base, &[]));
        assert!(!trusted("http://10.0.0.2/token", "http://10.0.0.1", &[]));
        assert!(trusted("http://127.0.0.2:9/token", base, &["127.0.0.2"]));
        assert!(trusted("http://127.0.0.1:5002/token", base, &["127.0.0.1"]));
        assert!(trusted("http://[::1]:7/token", "http://[::1]:8", &["::1"]));
        assert!(!trusted("http://[::1]:7/token", "http://[::1]:8", &[]));
    }

    #[test]
    fn the_allow_list_names_hosts() {
        let base = "https://registry.example.com";
        assert!(trusted(
            "https://login.other.example/t",
            base,
            &["LOGIN.other.example"]
        ));
        assert!(!trusted(
            "https://other.example/t",
            base,
            &["login.other.example"]
        ));
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let base = url("https://r.example.com/");
        assert!(same_origin(&url("https://r.example.com:443/v2/x"), &base));
        assert!(!same_origin(&url("http://r.example.com/v2/x"), &base));
        assert!(!same_origin(&url("https://r.example.com:8443/v2/x"), &base));
        assert!(!same_origin(&url("https://s.example.com/v2/x"), &base));
    }
}
