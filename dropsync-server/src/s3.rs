//! Contents in an S3 bucket (issue 18; docs/SCALING.md): the blob store's
//! durable copy, one object per content, named by its SHA-256 under a
//! prefix. The local `blobs/` folder stays as a cache of what this server
//! has stored or fetched (a full copy, as before), so that sending a file
//! is still a local read.
//!
//! - An upload's content is stored in the bucket before the catalog line
//!   that names it is committed (`BlobStore::install`); larger ones in parts
//!   of [`PART`] (multipart upload).
//! - A content not in the local cache is fetched whole, verified against
//!   its SHA-256, and kept (`BlobStore::open_blob`).
//! - A content nothing refers to any more is deleted from the bucket too;
//!   at start, objects nothing refers to and older than [`ORPHAN_AGE`] are
//!   removed (younger ones may be another instance's upload that is about
//!   to be committed).
//!
//! Requests are signed by `rusty-s3` (no I/O of its own) and sent with
//! `ureq` (blocking HTTP): no async runtime. Every request has a deadline.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use rusty_s3::actions::{
    CompleteMultipartUpload, CreateMultipartUpload, DeleteObject, GetObject, HeadObject, ListObjectsV2, PutObject,
    UploadPart,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use sha2::{Digest as _, Sha256};

use dropsync_proto::digest::{bytes_from_hex, push_hex};
use dropsync_proto::metadata::Strong;

/// Contents larger than this go up in parts of this size.
pub const PART: usize = 16 << 20;

/// How long a signed request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(600);

/// The longest one request may take, whatever the server does.
const REQUEST_DEADLINE: Duration = Duration::from_secs(120);

/// Objects younger than this are never removed as orphans at start.
pub const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// Where contents are kept: `s3://bucket/prefix` at an endpoint.
#[derive(Debug)]
pub struct Remote {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    agent: ureq::Agent,
}

fn err(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("S3 {what}: {e}"))
}

fn strong_hex(key: &Strong) -> String {
    let mut out = String::with_capacity(64);
    push_hex(key, &mut out);
    out
}

impl Remote {
    /// `location` is `s3://bucket[/prefix]`; `endpoint` the service's URL
    /// (http or https, path-style); the credentials and region come from
    /// the usual AWS environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, default us-east-1).
    pub fn new(location: &str, endpoint: &str) -> Result<Self, String> {
        let rest = location.strip_prefix("s3://").ok_or_else(|| format!("{location:?}: not s3://bucket/prefix"))?;
        let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if name.is_empty() {
            return Err(format!("{location:?}: no bucket name"));
        }
        let url = url::Url::parse(endpoint).map_err(|e| format!("--s3-endpoint {endpoint:?}: {e}"))?;
        let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
        let bucket =
            Bucket::new(url, UrlStyle::Path, name.to_owned(), region).map_err(|e| format!("{location:?}: {e}"))?;
        let key = std::env::var("AWS_ACCESS_KEY_ID").map_err(|_| "AWS_ACCESS_KEY_ID is not set".to_owned())?;
        let secret =
            std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| "AWS_SECRET_ACCESS_KEY is not set".to_owned())?;
        let prefix = match prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let agent = ureq::Agent::config_builder().timeout_global(Some(REQUEST_DEADLINE)).build().into();
        Ok(Self { bucket, credentials: Credentials::new(key, secret), prefix, agent })
    }

    fn object(&self, key: &Strong) -> String {
        format!("{}{}", self.prefix, strong_hex(key))
    }

    /// Stores the file at `path` as the content `key`: one PUT, or a
    /// multipart upload when it is larger than [`PART`]. Returns once the
    /// service has it.
    pub fn put(&self, key: &Strong, path: &Path) -> io::Result<()> {
        let object = self.object(key);
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        if len <= PART as u64 {
            let mut body = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.read_to_end(&mut body)?;
            let url = PutObject::new(&self.bucket, Some(&self.credentials), &object).sign(SIGNED_FOR);
            self.agent.put(url.as_str()).send(&body[..]).map_err(|e| err("PUT", e))?;
            return Ok(());
        }
        let url = CreateMultipartUpload::new(&self.bucket, Some(&self.credentials), &object).sign(SIGNED_FOR);
        let mut resp = self.agent.post(url.as_str()).send_empty().map_err(|e| err("multipart start", e))?;
        let text = resp.body_mut().read_to_string().map_err(|e| err("multipart start", e))?;
        let started = CreateMultipartUpload::parse_response(&text).map_err(|e| err("multipart start", e))?;
        let upload_id = started.upload_id().to_owned();
        let mut etags = Vec::new();
        let mut part = vec![0u8; PART];
        for number in 1u16.. {
            let n = read_full(&mut file, &mut part)?;
            if n == 0 {
                break;
            }
            let action = UploadPart::new(&self.bucket, Some(&self.credentials), &object, number, &upload_id);
            let resp = self.agent.put(action.sign(SIGNED_FOR).as_str()).send(&part[..n]).map_err(|e| err("part", e))?;
            let etag =
                resp.headers().get("etag").and_then(|v| v.to_str().ok()).ok_or_else(|| err("part", "no ETag"))?;
            etags.push(etag.to_owned());
        }
        let done = CompleteMultipartUpload::new(
            &self.bucket,
            Some(&self.credentials),
            &object,
            &upload_id,
            etags.iter().map(String::as_str),
        );
        let url = done.sign(SIGNED_FOR);
        self.agent.post(url.as_str()).send(done.body()).map_err(|e| err("multipart end", e))?;
        Ok(())
    }

    /// Fetches the content `key` into `path` and checks its SHA-256.
    /// `NotFound` when the bucket does not have it.
    pub fn get(&self, key: &Strong, path: &Path) -> io::Result<()> {
        let object = self.object(key);
        let url = GetObject::new(&self.bucket, Some(&self.credentials), &object).sign(SIGNED_FOR);
        let resp = match self.agent.get(url.as_str()).call() {
            Ok(r) => r,
            Err(ureq::Error::StatusCode(404)) => return Err(io::ErrorKind::NotFound.into()),
            Err(e) => return Err(err("GET", e)),
        };
        let mut body = resp.into_body().into_reader();
        let mut out = File::create(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = body.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
        out.sync_all()?;
        let got: Strong = hasher.finalize().into();
        if &got != key {
            return Err(err("GET", format!("{object} does not hash to its name")));
        }
        Ok(())
    }

    /// True when the bucket holds the content `key`.
    pub fn exists(&self, key: &Strong) -> io::Result<bool> {
        let object = self.object(key);
        let url = HeadObject::new(&self.bucket, Some(&self.credentials), &object).sign(SIGNED_FOR);
        match self.agent.head(url.as_str()).call() {
            Ok(_) => Ok(true),
            Err(ureq::Error::StatusCode(404)) => Ok(false),
            Err(e) => Err(err("HEAD", e)),
        }
    }

    /// Deletes the content `key` from the bucket (gone already is fine).
    pub fn delete(&self, key: &Strong) -> io::Result<()> {
        let object = self.object(key);
        let url = DeleteObject::new(&self.bucket, Some(&self.credentials), &object).sign(SIGNED_FOR);
        match self.agent.delete(url.as_str()).call() {
            Ok(_) | Err(ureq::Error::StatusCode(404)) => Ok(()),
            Err(e) => Err(err("DELETE", e)),
        }
    }

    /// Every content in the bucket, with its last-modified time as S3
    /// gives it (RFC 3339).
    pub fn list(&self) -> io::Result<Vec<(Strong, String)>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
            if !self.prefix.is_empty() {
                action.with_prefix(self.prefix.as_str());
            }
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGNED_FOR);
            let mut resp = self.agent.get(url.as_str()).call().map_err(|e| err("LIST", e))?;
            let text = resp.body_mut().with_config().limit(64 << 20).read_to_string().map_err(|e| err("LIST", e))?;
            let page = ListObjectsV2::parse_response(&text).map_err(|e| err("LIST", e))?;
            for o in page.contents {
                let name = o.key.strip_prefix(self.prefix.as_str()).unwrap_or(&o.key);
                if let Some(key) = bytes_from_hex::<32>(name) {
                    out.push((key, o.last_modified.unwrap_or_default()));
                }
            }
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }
}

/// Reads until `buf` is full or the file ends; how many bytes.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
