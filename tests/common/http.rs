//! A small HTTP/1.1 client for tests: whole responses, or an error when the
//! server aborted the body (which is how lasti refuses to complete a bad blob).

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body bytes received.
    pub body: Bytes,
    /// Set when the body did not complete.
    pub body_error: Option<String>,
}

impl Reply {
    /// A header as text, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The OCI error code of an error body.
    pub fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        v["errors"][0]["code"].as_str().unwrap_or("").to_string()
    }
}

/// Sends one request with the given headers and reads the whole response.
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)]) -> Reply {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = client
        .request(builder.body(Empty::new()).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    read_reply(response).await
}

/// `POST` of a JSON body, with headers.
pub async fn post_json(url: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(Method::POST, url, body, &all).await
}

/// A request with a body and headers.
pub async fn send(method: Method, url: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = client
        .request(request)
        .await
        .unwrap_or_else(|e| panic!("request to {url} failed: {e}"));
    read_reply(response).await
}

async fn read_reply(response: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(bytes),
        body_error,
    }
}

/// `GET` with headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::GET, url, headers).await
}

/// `HEAD` with headers.
pub async fn head(url: &str, headers: &[(&str, &str)]) -> Reply {
    request(Method::HEAD, url, headers).await
}

/// The sum of a metric's samples, on the admin listener at `admin_url`,
/// whose labels contain every one of `labels` (`tier="peer"`).
pub async fn metric(admin_url: &str, name: &str, labels: &[&str]) -> u64 {
    let text = get(&format!("{admin_url}/metrics"), &[]).await;
    String::from_utf8_lossy(&text.body)
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits (up to 30 s) until [`metric`] reaches `at_least`; the last value.
pub async fn metric_reaches(admin_url: &str, name: &str, labels: &[&str], at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let value = metric(admin_url, name, labels).await;
        if value >= at_least || std::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
