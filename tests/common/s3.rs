//! The S3 stores the tests run, [`Garage`](super::garage::Garage) and
//! [`Moto`](super::moto::Moto), seen one way: how lasti is pointed at a
//! store's bucket, and signed requests to it with `curl --aws-sigv4`.

use std::path::Path;
use std::time::Duration;

/// The bucket every store here has.
pub const BUCKET: &str = "lasti";

/// A running S3 store on loopback with [`BUCKET`] and a key that may use it.
pub trait Store {
    /// `http://127.0.0.1:port`, the S3 endpoint (path-style addressing).
    fn endpoint(&self) -> String;

    /// The region the store signs for.
    fn region(&self) -> &str;

    /// The access key id and its secret.
    fn key(&self) -> (&str, &str);

    /// Points `config`'s `[bucket]` at this store's bucket, with its key.
    fn configure(&self, config: &mut lasti::config::Config) {
        let (id, secret) = self.key();
        config.bucket.endpoint = Some(url::Url::parse(&self.endpoint()).unwrap());
        config.bucket.bucket = Some(BUCKET.to_string());
        config.bucket.region = self.region().to_string();
        config.bucket.path_style = true;
        config.bucket.timeout = Duration::from_secs(10);
        config.bucket.credentials = Some((
            lasti::secret::Secret::new(id.to_string()),
            lasti::secret::Secret::new(secret.to_string()),
        ));
    }

    /// The `[bucket]` table of a config file for a lasti child process:
    /// this store's bucket at `endpoint` (the store's own, or a relay's in
    /// front of it), its key in two files written into `dir`, and `extra`
    /// lines of the table.
    fn config_section(&self, dir: &Path, endpoint: &str, extra: &str) -> String {
        let (id, secret) = self.key();
        let (id_file, secret_file) = (dir.join("s3-key-id"), dir.join("s3-secret"));
        std::fs::write(&id_file, id).expect("write the key id");
        std::fs::write(&secret_file, secret).expect("write the secret");
        format!(
            "[bucket]\nendpoint = {endpoint:?}\nbucket = {BUCKET:?}\nregion = {:?}\n\
             access_key_id_file = {id_file:?}\nsecret_access_key_file = {secret_file:?}\n{extra}\n",
            self.region(),
        )
    }

    /// A signed `method` on `target` (a key, or `?query` on the bucket) with
    /// the file `body` as its payload: the status and body of the answer
    /// (its head, for `HEAD`).
    fn request(&self, method: &str, target: &str, body: Option<&Path>) -> (u16, Vec<u8>) {
        let (id, secret) = self.key();
        let url = format!("{}/{BUCKET}/{target}", self.endpoint());
        let mut command = std::process::Command::new("curl");
        command
            .args(["-s", "-w", "\n%{http_code}"])
            // Garage wants the payload hash header; curl signs it with the rest.
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .arg("--aws-sigv4")
            .arg(format!("aws:amz:{}:s3", self.region()))
            .arg("--user")
            .arg(format!("{id}:{secret}"));
        if let Some(path) = body {
            // Not curl's form type, whose body moto's server takes as a form.
            command
                .args(["-H", "content-type: application/octet-stream"])
                .arg("--data-binary")
                .arg(format!("@{}", path.display()));
        }
        match method {
            "HEAD" => command.arg("-I"),
            _ => command.args(["-X", method]),
        };
        let mut out = command.arg(&url).output().expect("run curl").stdout;
        let at = out.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let status = String::from_utf8_lossy(&out[at..]).trim().parse();
        out.truncate(at);
        (status.unwrap_or(0), out)
    }

    /// The status of a signed `method` on `key`.
    fn status(&self, method: &str, key: &str, body: Option<&Path>) -> u16 {
        self.request(method, key, body).0
    }

    /// A header of the object at `key` (lower case), `None` while there is
    /// no such object.
    fn object_header(&self, key: &str, name: &str) -> Option<String> {
        let (status, head) = self.request("HEAD", key, None);
        if status != 200 {
            return None;
        }
        String::from_utf8_lossy(&head).lines().find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

/// The key of a blob's object: `blobs/sha256/<hex>`.
pub fn blob_key(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}
