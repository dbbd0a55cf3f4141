//! The status page: one server-rendered HTML document (maud escapes every
//! value that came from a client or an upstream), a little CSS that reads
//! on a laptop and a phone, and a little script that refreshes the page
//! and sends the actions (purge, offline) with the admin token as a Bearer
//! header. Without the script the page still shows everything and
//! refreshes itself; the actions need it, as a form cannot send a header.
//!
//! The style and the script are fixed texts, allowed by their hashes in
//! the page's Content-Security-Policy: nothing else runs on it.

use std::sync::OnceLock;

use base64::Engine as _;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use sha2::{Digest as _, Sha256};

use super::status::{Snapshot, UpstreamState};
use crate::pull_through::CachedImage;

/// Seconds between refreshes.
const REFRESH_SECS: u32 = 15;

const STYLE: &str = r#"
:root { --fg: #1d2327; --muted: #5f6b73; --bg: #fff; --line: #dde3e7; --card: #f5f7f8;
        --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e; --accent: #0b5cad; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --muted: #9aa7b1; --bg: #0d1117; --line: #30363d; --card: #161b22;
          --ok: #3fb950; --warn: #d29922; --bad: #f85149; --accent: #58a6ff; }
}
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 72rem; padding: 1rem; font: 15px/1.45 system-ui, sans-serif;
       color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: .5rem 1rem; }
h1 { font-size: 1.5rem; margin: 0; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .6rem; }
.muted { color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(9rem, 1fr)); gap: .6rem; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: .6rem .8rem; }
.card b { display: block; font-size: 1.25rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); white-space: nowrap; }
td.num, th.num { text-align: right; white-space: nowrap; }
code { font-size: .85em; }
.state { font-weight: 600; }
.ok { color: var(--ok); } .warn { color: var(--warn); } .bad { color: var(--bad); }
.badge { border-radius: 1rem; padding: .1rem .6rem; font-weight: 600; color: var(--bg); background: var(--warn); }
figure { margin: .8rem 0 0; }
svg.bars { width: 100%; height: 48px; display: block; border-bottom: 1px solid var(--line); }
figcaption { display: flex; justify-content: space-between; font-size: .8em; }
svg.bars rect { fill: var(--accent); }
button { font: inherit; padding: .2rem .6rem; border: 1px solid var(--line); border-radius: 4px;
         background: var(--card); color: var(--fg); cursor: pointer; }
button:disabled { opacity: .5; cursor: default; }
input, select { font: inherit; padding: .25rem .4rem; border: 1px solid var(--line); border-radius: 4px;
                background: var(--bg); color: var(--fg); max-width: 100%; }
form { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: .4rem 0; }
#result { white-space: pre-wrap; font-size: .85em; background: var(--card); padding: .5rem; border-radius: 4px; }
#result:empty { display: none; }
@media (max-width: 40rem) { body { padding: .6rem; font-size: 14px; } th, td { padding: .3rem; } }
"#;

const SCRIPT: &str = r#"
(function () {
  var token = document.getElementById('token');
  var result = document.getElementById('result');
  token.value = sessionStorage.getItem('lasti-admin-token') || '';
  token.addEventListener('input', function () { sessionStorage.setItem('lasti-admin-token', token.value); });
  var busy = false;
  function refreshLater() {
    setTimeout(function () {
      var typing = document.activeElement && document.activeElement.tagName === 'INPUT';
      if (busy || typing) { refreshLater(); } else { location.reload(); }
    }, REFRESH_MS);
  }
  refreshLater();
  function act(path, body) {
    if (!token.value) { result.textContent = 'Type the admin token first.'; token.focus(); return; }
    busy = true;
    result.textContent = 'Sending ' + path + ' ...';
    fetch(path, { method: 'POST', headers: { 'Authorization': 'Bearer ' + token.value,
                                             'Content-Type': 'application/json' },
                  body: JSON.stringify(body) })
      .then(function (r) { return r.text().then(function (t) { return [r.status, t]; }); })
      .then(function (a) {
        result.textContent = a[0] + ' ' + path + '\n' + a[1];
        result.dataset.status = a[0];
        busy = false;
      })
      .catch(function (e) { result.textContent = 'failed: ' + e; busy = false; });
  }
  document.addEventListener('click', function (e) {
    var b = e.target.closest('button[data-action]');
    if (!b) { return; }
    e.preventDefault();
    if (b.dataset.action === 'purge') {
      var scope = b.dataset.scope || document.getElementById('purge-scope').value;
      var image = b.dataset.image || document.getElementById('purge-image').value;
      if (!image) { result.textContent = 'Name an image to purge.'; return; }
      act('/admin/purge', { image: image, scope: scope });
    } else if (b.dataset.action === 'offline') {
      var body = { offline: b.dataset.offline === 'true' };
      if (b.dataset.upstream) { body.upstream = b.dataset.upstream; }
      act('/admin/offline', body);
    }
  });
})();
"#;

/// The script, with the refresh period filled in.
fn script() -> &'static str {
    static SCRIPT_TEXT: OnceLock<String> = OnceLock::new();
    SCRIPT_TEXT.get_or_init(|| SCRIPT.replace("REFRESH_MS", &(REFRESH_SECS * 1000).to_string()))
}

/// `'sha256-...'` of a text, as a CSP source.
fn csp_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The page's Content-Security-Policy: its own style and script only,
/// requests to its own origin only, no framing.
pub fn content_security_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        format!(
            "default-src 'none'; style-src {}; script-src {}; connect-src 'self'; \
             img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            csp_hash(STYLE),
            csp_hash(script())
        )
    })
}

/// `740.4 KiB`, `1.5 MiB`: binary units, as `du -h` and Kubernetes quotas use.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `42 s ago`, `3 min ago`, `5 h ago`, `2 d ago`.
fn ago(now: u64, then: u64) -> String {
    let secs = now.saturating_sub(then);
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    &hex[..hex.len().min(12)]
}

/// The page.
pub fn render(s: &Snapshot) -> String {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "lasti status" }
                noscript { meta http-equiv="refresh" content=(REFRESH_SECS); }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "lasti" }
                    span.muted { "version " (s.version) }
                    span.muted #updated {
                        "as of " (humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.now)))
                        ", refreshed every " (REFRESH_SECS) " s"
                    }
                    @if s.offline { span.badge #offline-badge { "offline" } }
                }
                (last_hour(s))
                (upstreams(s))
                (images(s))
                (backfill(s))
                (cluster(s))
                (actions())
                script { (PreEscaped(script())) }
            }
        }
    };
    markup.into_string()
}

fn last_hour(s: &Snapshot) -> Markup {
    let hour = &s.last_hour;
    let total: u64 = hour.bytes.iter().sum();
    let answered = hour.hits + hour.misses;
    let busiest = hour.bytes_per_minute.iter().copied().max().unwrap_or(0);
    let peak = busiest.max(1);
    let width = hour.bytes_per_minute.len().max(1);
    html! {
        section #last-hour {
            h2 { "Last hour" }
            div.cards {
                div.card #cache-size {
                    span.muted { "cache" }
                    b { (bytes(s.cache.bytes)) }
                    span.muted { "of " (bytes(s.cache.quota)) ", " (s.cache.objects) " objects" }
                }
                div.card #hit-ratio {
                    span.muted { "hits" }
                    b { @if answered > 0 { (hour.hits * 100 / answered) " %" } @else { "-" } }
                    span.muted { (hour.hits) " of " (answered) " answers" }
                }
                @for (i, tier) in s.tiers.iter().enumerate() {
                    div.card.tier data-tier=(tier) {
                        span.muted { "from " (tier) }
                        b { (bytes(hour.bytes[i])) }
                        span.muted { (hour.requests[i]) " responses" }
                    }
                }
            }
            figure #per-minute {
                svg.bars viewBox=(format!("0 0 {width} 100")) preserveAspectRatio="none"
                    role="img" aria-label=(format!("bytes sent per minute, {} in the last hour", bytes(total))) {
                    @for (i, sent) in hour.bytes_per_minute.iter().enumerate() {
                        @let height = if *sent > 0 { (sent * 100 / peak).max(2) } else { 0 };
                        rect x=(i) y=(100 - height) width="0.8" height=(height) {
                            title { (bytes(*sent)) }
                        }
                    }
                }
                figcaption.muted {
                    span { "an hour ago" }
                    span { "bytes sent per minute (busiest " (bytes(busiest)) ")" }
                    span { "now" }
                }
            }
        }
    }
}

fn upstream_state(u: &UpstreamState) -> Markup {
    html! {
        @if u.offline {
            span.state.warn { "offline" }
        } @else if u.breaker == "open" {
            span.state.bad { "skipped" }
            @if let Some(secs) = u.retry_in_secs { span.muted { ", tried again in " (secs) " s" } }
        } @else if u.breaker == "probing" {
            span.state.warn { "probing" }
        } @else if u.failures > 0 {
            span.state.warn { "failing" } span.muted { " (" (u.failures) " in a row)" }
        } @else {
            span.state.ok { "ok" }
        }
    }
}

fn upstreams(s: &Snapshot) -> Markup {
    html! {
        section #upstreams {
            h2 { "Upstreams" }
            div.scroll {
                table {
                    thead { tr { th { "upstream" } th { "state" } th.num { "pull quota left" } th { "" } } }
                    tbody {
                        @for u in &s.upstreams {
                            tr data-upstream=(u.name) {
                                td { b { (u.name) } br; span.muted { (u.url) } }
                                td { (upstream_state(u)) }
                                td.num {
                                    @match u.ratelimit {
                                        Some((limit, remaining)) => { (remaining) " of " (limit) }
                                        None => { span.muted { "-" } }
                                    }
                                }
                                td {
                                    @if !u.name.contains('@') {
                                        @if u.offline {
                                            button data-action="offline" data-offline="false" data-upstream=(u.name) { "Bring online" }
                                        } @else {
                                            button data-action="offline" data-offline="true" data-upstream=(u.name) { "Take offline" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p {
                @if s.offline {
                    "The whole process is offline: no request goes to any upstream. "
                    button data-action="offline" data-offline="false" { "Bring everything online" }
                } @else {
                    button data-action="offline" data-offline="true" { "Take everything offline" }
                }
            }
        }
    }
}

fn image_name(image: &CachedImage) -> String {
    format!("{}/{}:{}", image.upstream, image.repository, image.tag)
}

fn images(s: &Snapshot) -> Markup {
    html! {
        section #images {
            h2 {
                "Cached images "
                span.muted { "(" (s.images.len()) @if s.images_total > s.images.len() { " most recently used of " (s.images_total) } ")" }
            }
            @if s.images.is_empty() {
                p.muted { "Nothing is cached yet." }
            } @else {
                div.scroll {
                    table {
                        thead { tr {
                            th { "image" } th { "digest" } th.num { "size" } th { "last pulled" }
                            th { "in the project" } th { "" }
                        } }
                        tbody {
                            @for image in &s.images {
                                tr data-image=(image_name(image)) {
                                    td { (image.upstream) "/" b { (image.repository) } ":" (image.tag) }
                                    td { code title=(image.digest.as_str()) { (short(image.digest.as_str())) } }
                                    td.num { @match image.image_size { Some(n) => (bytes(n)), None => span.muted { "-" } } }
                                    td { @match image.last_use { Some(t) => (ago(s.now, t)), None => span.muted { "not stored" } } }
                                    td { @match image.backfilled { Some(true) => span.ok { "yes" }, Some(false) => "not yet", None => span.muted { "-" } } }
                                    td { button data-action="purge" data-scope="image" data-image=(image_name(image)) { "Purge" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn backfill(s: &Snapshot) -> Markup {
    let Some(status) = &s.backfill else {
        return html! {};
    };
    html! {
        section #backfill {
            h2 { "Back-fill into " (status.project) }
            div.cards {
                div.card { span.muted { "waiting or retrying" } b #backfill-pending { (status.counts.pending) } }
                div.card { span.muted { "done" } b { (status.counts.done) } }
                div.card { span.muted { "given up" } b.bad[status.counts.failed > 0] #backfill-failed { (status.counts.failed) } }
            }
            @if !status.pending.is_empty() || !status.failed.is_empty() {
                div.scroll {
                    table {
                        thead { tr { th { "image stream tag" } th { "state" } th.num { "attempts" } th { "last error" } } }
                        tbody {
                            @for job in status.pending.iter().chain(&status.failed) {
                                tr {
                                    td { (job.target_repo) ":" (job.tag) }
                                    td { (format!("{:?}", job.state).to_lowercase()) }
                                    td.num { (job.attempts) }
                                    td { @if let Some(error) = &job.last_error { span.bad { (error) } } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn cluster(s: &Snapshot) -> Markup {
    html! {
        @if let Some(cluster) = &s.cluster {
            section #replicas {
                h2 { "Replicas" }
                div.scroll {
                    table {
                        thead { tr { th { "replica" } th { "state" } } }
                        tbody {
                            @for member in &cluster.members {
                                tr {
                                    td { (member.name) @if member.me { span.muted { " (this one)" } } }
                                    td { @match member.left_out_secs {
                                        Some(secs) => { span.state.bad { "left out" } span.muted { " (failed " (secs) " s ago)" } }
                                        None => span.state.ok { "in" },
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(owed) = s.bucket_owed {
            p #bucket-owed {
                "Object store: " b { (owed) } " blobs and manifests owed (uploaded as the store takes them)."
            }
        }
    }
}

fn actions() -> Markup {
    html! {
        section #actions {
            h2 { "Actions" }
            p.muted { "Purging and switching offline need the admin token (admin_token_file); it stays in this browser tab only." }
            form autocomplete="off" {
                label for="token" { "Admin token" }
                input #token type="password" autocomplete="off" placeholder="admin token";
            }
            form {
                label for="purge-image" { "Purge" }
                input #purge-image type="text" placeholder="centos:7 or ghcr.io/org/app@sha256:...";
                select #purge-scope aria-label="scope" {
                    option value="image" selected { "image and its unshared blobs" }
                    option value="manifest" { "manifest only" }
                    option value="tag" { "tag record only" }
                }
                button data-action="purge" { "Purge" }
            }
            output #result {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{LastHour, TIERS};
    use crate::oci::Digest;
    use crate::server::admin::status::CacheState;

    fn snapshot(repository: &str) -> Snapshot {
        Snapshot {
            version: "0.0.0",
            now: 1_000_000,
            cache: CacheState {
                bytes: 3 << 20,
                objects: 4,
                quota: 1 << 30,
            },
            images: vec![CachedImage {
                upstream: "docker.io".into(),
                repository: repository.into(),
                tag: "v1".into(),
                digest: Digest::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap(),
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                image_size: Some(2 << 20),
                checked_at: 999_000,
                last_use: Some(999_880),
                backfilled: None,
            }],
            images_total: 1,
            tiers: TIERS,
            last_hour: LastHour {
                bytes_per_minute: vec![0; 60],
                ..LastHour::default()
            },
            offline: false,
            upstreams: Vec::new(),
            backfill: None,
            cluster: None,
            bucket_owed: None,
        }
    }

    #[test]
    fn values_are_escaped_and_the_policy_allows_only_the_page_s_own_code() {
        let page = render(&snapshot("library/<script>alert(1)</script>"));
        assert!(!page.contains("<script>alert"), "escaped");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("2 min ago"));
        assert!(page.contains("2.0 MiB"));
        let policy = content_security_policy();
        assert!(policy.contains(&csp_hash(STYLE)) && policy.contains(&csp_hash(script())));
        assert!(!policy.contains("unsafe"), "{policy}");
        // What the hashes allow is what the page carries.
        assert!(page.contains(script()) && page.contains(STYLE));
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(758_170), "740.4 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(ago(100, 58), "42 s ago");
        assert_eq!(ago(10_000, 9_800), "3 min ago");
        assert_eq!(ago(100_000, 82_000), "5 h ago");
        assert_eq!(ago(1_000_000, 800_000), "2 d ago");
    }
}
