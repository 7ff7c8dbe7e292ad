//! Object stores by URL scheme: `s3://bucket/key` (AWS or any S3-compatible endpoint),
//! `gs://bucket/key`, `azblob://container/key` (or `abs://`), through the `object_store`
//! crate. Credentials, region and endpoint come from the usual environment variables
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`), read by the daemon; they are never logged. Reads are
//! ranged (a task resumes where it stopped); the object's ETag and modification time pin
//! the task's content like an HTTP origin's validators.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ferry_types::{OriginRequest, Validators};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};

use crate::{BackendError, SourceBody};

/// Where an object is: its store (scheme and bucket) and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectUrl {
    pub scheme: Scheme,
    pub bucket: String,
    pub key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    S3,
    Gcs,
    Azure,
}

pub use ferry_types::is_object_store_scheme as is_object_scheme;

/// S3's rules, which the others' are close to: 3–63 characters of lowercase letters,
/// digits, `-` and `.`, starting and ending with a letter or digit.
fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

impl ObjectUrl {
    pub fn parse(url: &url::Url) -> Result<Self, BackendError> {
        let scheme = match url.scheme() {
            "s3" => Scheme::S3,
            "gs" => Scheme::Gcs,
            "azblob" | "abs" => Scheme::Azure,
            other => return Err(BackendError::UnsupportedScheme(other.to_owned())),
        };
        let bucket = url.host_str().unwrap_or_default().to_owned();
        if !valid_bucket(&bucket) {
            return Err(BackendError::BadUrl(format!(
                "`{bucket}` in {url} is not a bucket name (3-63 lowercase letters, digits, `-`, `.`)"
            )));
        }
        let key = url.path().trim_start_matches('/');
        let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy().into_owned();
        Ok(Self { scheme, bucket, key })
    }
}

/// Stores by scheme and bucket.
type StoreMap = HashMap<(Scheme, String), Arc<dyn ObjectStore>>;

/// Settings given to every store of a kind on top of its environment (credentials from a
/// config file, say), as `object_store` names them: `aws_access_key_id`, `aws_endpoint`,
/// `azure_storage_account_key`, `google_service_account_key`, ...
#[derive(Clone, Debug, Default)]
pub struct ObjectStoreConfig {
    pub s3: Vec<(String, String)>,
    pub azure: Vec<(String, String)>,
    pub gcs: Vec<(String, String)>,
}

/// The stores opened so far, one per scheme and bucket.
#[derive(Clone, Default)]
pub struct ObjectStores {
    stores: Arc<Mutex<StoreMap>>,
    config: ObjectStoreConfig,
    /// With `--ca-cert`: the client options every store gets (the extra roots, and
    /// `allow_http` as the environment set it); `None` leaves the stores' own.
    client: Option<object_store::ClientOptions>,
}

/// One object listed under a prefix.
#[derive(Clone, Debug)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

impl ObjectStores {
    /// Stores whose TLS also trusts the PEM certificates in `ca_certs` (a private CA).
    pub fn new(ca_certs: &[std::path::PathBuf], config: ObjectStoreConfig) -> Result<Self, BackendError> {
        if ca_certs.is_empty() {
            return Ok(Self { config, ..Self::default() });
        }
        let mut client = object_store::ClientOptions::new();
        for path in ca_certs {
            let ca_err = |reason: String| BackendError::CaCert { path: path.display().to_string(), reason };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            for c in object_store::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))? {
                client = client.with_root_certificate(c);
            }
        }
        Ok(Self { stores: Arc::default(), client: Some(client), config })
    }

    /// The client options for a store whose environment says `allow_http` (or not).
    fn client_options(&self, allow_http: Option<String>) -> Option<object_store::ClientOptions> {
        let c = self.client.clone()?;
        Some(match allow_http {
            Some(v) => c.with_config(object_store::ClientConfigKey::AllowHttp, v),
            None => c,
        })
    }

    fn store(&self, o: &ObjectUrl) -> Result<Arc<dyn ObjectStore>, BackendError> {
        let mut stores = self.stores.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = stores.get(&(o.scheme, o.bucket.clone())) {
            return Ok(s.clone());
        }
        let config =
            |e: object_store::Error| BackendError::BadUrl(format!("{} store for `{}`: {e}", o.scheme.name(), o.bucket));
        use object_store::ClientConfigKey::AllowHttp;
        // Each builder from the environment, given our client options (keeping the
        // environment's `allow_http`), built. Three builder types, one recipe.
        macro_rules! build {
            ($builder:expr, $key:expr, $settings:expr, $kind:ty) => {{
                let mut b = $builder;
                for (k, v) in $settings {
                    let key: $kind = k.parse().map_err(config)?;
                    b = b.with_config(key, v);
                }
                if let Some(c) = self.client_options(b.get_config_value(&$key)) {
                    b = b.with_client_options(c);
                }
                Arc::new(b.build().map_err(config)?) as Arc<dyn ObjectStore>
            }};
        }
        let store = match o.scheme {
            Scheme::S3 => build!(
                object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&o.bucket),
                object_store::aws::AmazonS3ConfigKey::Client(AllowHttp),
                &self.config.s3,
                object_store::aws::AmazonS3ConfigKey
            ),
            Scheme::Gcs => build!(
                object_store::gcp::GoogleCloudStorageBuilder::from_env().with_bucket_name(&o.bucket),
                object_store::gcp::GoogleConfigKey::Client(AllowHttp),
                &self.config.gcs,
                object_store::gcp::GoogleConfigKey
            ),
            Scheme::Azure => build!(
                object_store::azure::MicrosoftAzureBuilder::from_env().with_container_name(&o.bucket),
                object_store::azure::AzureConfigKey::Client(AllowHttp),
                &self.config.azure,
                object_store::azure::AzureConfigKey
            ),
        };
        stores.insert((o.scheme, o.bucket.clone()), store.clone());
        Ok(store)
    }

    /// Opens the object at `offset`.
    pub async fn open(&self, req: &OriginRequest, offset: u64) -> Result<SourceBody, BackendError> {
        let o = ObjectUrl::parse(req.url())?;
        let store = self.store(&o)?;
        let url = req.redacted_url();
        let opts =
            GetOptions { range: (offset > 0).then_some(GetRange::Offset(offset as usize)), ..Default::default() };
        let got = store.get_opts(&ObjectPath::from(o.key.as_str()), opts).await.map_err(|e| error(&url, e))?;
        let validators = validators(&got.meta);
        let chunks = got.into_stream().map_err(move |e| error(&url, e)).boxed();
        Ok(SourceBody::new(validators, chunks))
    }

    /// The object's validators (and whether the daemon's credentials may read it).
    pub async fn check(&self, req: &OriginRequest) -> Result<Validators, BackendError> {
        let o = ObjectUrl::parse(req.url())?;
        let meta = self.store(&o)?.head(&ObjectPath::from(o.key.as_str())).await;
        Ok(validators(&meta.map_err(|e| error(&req.redacted_url(), e))?))
    }

    /// Every object under `url`'s key taken as a prefix (a directory: `a/b` lists `a/b/...`).
    pub async fn list(&self, url: &url::Url) -> Result<Vec<Listed>, BackendError> {
        let o = ObjectUrl::parse(url)?;
        let store = self.store(&o)?;
        let prefix = o.key.trim_end_matches('/');
        let prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
        let mut out: Vec<Listed> = store
            .list(prefix.as_ref())
            .map_ok(|m| Listed { key: m.location.to_string(), size: m.size as u64 })
            .try_collect()
            .await
            .map_err(|e| error(url.as_str(), e))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::S3 => "s3",
            Scheme::Gcs => "gs",
            Scheme::Azure => "azblob",
        }
    }
}

fn validators(m: &object_store::ObjectMeta) -> Validators {
    Validators { length: m.size as u64, etag: m.e_tag.clone(), last_modified: Some(m.last_modified.to_rfc3339()) }
}

/// An object store's failure as the statuses Ferry already maps: missing is 404, refused
/// (wrong or missing credentials) is 403; the rest is a read failure, retried.
fn error(url: &str, e: object_store::Error) -> BackendError {
    match e {
        object_store::Error::NotFound { .. } => BackendError::Status { status: 404, url: url.to_owned() },
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            BackendError::Status { status: 403, url: url.to_owned() }
        }
        other => {
            // The store's message, and under it the HTTP client's (a TLS failure is only there).
            let mut text = other.to_string();
            let mut source = std::error::Error::source(&other);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            if text.contains("certificate") {
                // The endpoint is in the client's message: `... for url (https://host:port/...)`.
                let endpoint = text.split("https://").nth(1).and_then(|r| r.split(['/', ')', ' ']).next());
                let host = endpoint.unwrap_or("of the object store").to_owned();
                let reason = text.rsplit(": ").next().unwrap_or(&text).to_owned();
                return BackendError::Tls { host, reason };
            }
            // Stores report some refusals only in their message.
            if text.contains("403")
                || text.contains("AccessDenied")
                || text.contains("InvalidAccessKeyId")
                || text.contains("SignatureDoesNotMatch")
            {
                return BackendError::Status { status: 403, url: url.to_owned() };
            }
            BackendError::Read { url: url.to_owned(), reason: text }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_urls() {
        let u = |s: &str| ObjectUrl::parse(&url::Url::parse(s).unwrap());
        let o = u("s3://my-bucket/models/a%20b.bin").unwrap();
        assert_eq!((o.scheme, o.bucket.as_str(), o.key.as_str()), (Scheme::S3, "my-bucket", "models/a b.bin"));
        assert_eq!(u("azblob://container/x").unwrap().scheme, Scheme::Azure);
        assert_eq!(u("gs://b12/x").unwrap().scheme, Scheme::Gcs);
        for bad in ["s3://ab/x", "s3://Bad_Bucket/x", "s3://-bucket/x"] {
            assert!(matches!(u(bad), Err(BackendError::BadUrl(_))), "{bad}");
        }
        assert!(matches!(u("ftp://bucket/x"), Err(BackendError::UnsupportedScheme(_))));
    }
}
