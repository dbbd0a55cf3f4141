//! Operator commands that talk to a running lasti: `lasti warm` pre-pulls
//! images through it, `lasti ls` lists what its cache holds, `lasti purge`
//! drops an image from it.

pub mod ls;
pub mod offline;
pub mod purge;
pub mod warm;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A plain HTTP client for talking to lasti's listeners.
pub type LocalClient = Client<HttpConnector, Empty<Bytes>>;

/// A client for lasti's own listeners.
pub fn client() -> LocalClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Writes `text` to standard output. A reader that went away (`lasti ls |
/// head`) is no error: it has all it wanted.
pub fn print(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write to standard output: {e}"))
        }
        _ => Ok(()),
    }
}

/// `http://host:port` for a listen address; `0.0.0.0` and `::` become loopback.
pub fn local_url(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}", addr.port())
}

/// The base URL of a lasti endpoint given as a URL (`http://host:port`)
/// or, as `--listen` and `--admin-listen` take it, as `host:port`; no
/// trailing slash.
pub fn endpoint_url(given: &str) -> String {
    let given = given.trim_end_matches('/');
    match given.contains("://") {
        true => given.to_string(),
        false => format!("http://{given}"),
    }
}

/// GETs a URL and returns the status, content type and body.
pub async fn get(
    client: &LocalClient,
    url: &str,
    accept: Option<&str>,
) -> Result<(u16, String, Bytes), String> {
    let mut request = http::Request::get(url);
    if let Some(accept) = accept {
        request = request.header(http::header::ACCEPT, accept);
    }
    let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    Ok((status, content_type, body.to_bytes()))
}

/// POSTs a JSON body with the admin token; the status and body.
pub async fn post_admin(url: &str, token: &str, body: Vec<u8>) -> Result<(u16, Bytes), String> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    Ok((status, body.to_bytes()))
}

/// The admin token in `path` (`admin_token_file`, `--admin-token-file`).
pub fn admin_token(path: Option<&std::path::Path>) -> Result<String, String> {
    let path = path.ok_or(
        "this call needs the admin token: pass --admin-token-file FILE \
         (or set admin_token_file in the configuration)",
    )?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the admin token file {}: {e}", path.display()))?;
    Ok(text.trim().to_string())
}

/// The `error` of an admin call's JSON answer, or the answer as text.
pub fn error_message(answer: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(answer).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_a_url_or_host_and_port() {
        assert_eq!(endpoint_url("127.0.0.1:5002"), "http://127.0.0.1:5002");
        assert_eq!(endpoint_url("[::1]:5002/"), "http://[::1]:5002");
        assert_eq!(
            endpoint_url("https://lasti.example/"),
            "https://lasti.example"
        );
        assert_eq!(
            endpoint_url("http://127.0.0.1:5002"),
            "http://127.0.0.1:5002"
        );
    }

    #[test]
    fn listen_addresses_become_reachable_urls() {
        assert_eq!(
            local_url("0.0.0.0:9090".parse().unwrap()),
            "http://127.0.0.1:9090"
        );
        assert_eq!(local_url("[::]:5000".parse().unwrap()), "http://[::1]:5000");
        assert_eq!(
            local_url("10.0.0.5:5000".parse().unwrap()),
            "http://10.0.0.5:5000"
        );
    }
}
