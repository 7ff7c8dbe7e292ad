//! Digests: BLAKE3 per piece (what peers verify), SHA-2 for whole files (what users know),
//! and git's blob id (what model hubs list for files kept in git, not LFS).

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

use crate::ParseError;

/// BLAKE3 digest of one piece, computed by the peer that read the origin.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PieceDigest(pub [u8; 32]);

impl PieceDigest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(Self(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for PieceDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blake3:{}", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for PieceDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlgo {
    Sha256,
    Sha512,
    /// Git's blob object id: SHA-1 over `blob <length>\0` and the content (`gitsha1:<hex>`).
    GitSha1,
}

impl DigestAlgo {
    fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
            Self::GitSha1 => "gitsha1",
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
            Self::GitSha1 => 20,
        }
    }
}

/// A whole-file digest such as `sha256:<hex>`, as a user or a registry states it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FileDigest {
    algo: DigestAlgo,
    bytes: Vec<u8>,
}

impl FileDigest {
    pub fn algo(&self) -> DigestAlgo {
        self.algo
    }

    /// A hasher for content of `length` bytes (git's blob id covers the length first).
    pub fn hasher(&self, length: u64) -> FileHasher {
        FileHasher::new(self.algo, length)
    }
}

impl FromStr for FileDigest {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::Digest(s.to_owned());
        let (name, hex_part) = s.split_once(':').ok_or_else(bad)?;
        let algo = match name.to_ascii_lowercase().as_str() {
            "sha256" => DigestAlgo::Sha256,
            "sha512" => DigestAlgo::Sha512,
            "gitsha1" => DigestAlgo::GitSha1,
            _ => return Err(bad()),
        };
        let bytes = hex::decode(hex_part).map_err(|_| bad())?;
        if bytes.len() != algo.len() {
            return Err(bad());
        }
        Ok(Self { algo, bytes })
    }
}

impl fmt::Display for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo.name(), hex::encode(&self.bytes))
    }
}

impl fmt::Debug for FileDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Streaming whole-file hasher for one algorithm.
#[derive(Clone)]
pub enum FileHasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    GitSha1(sha1::Sha1),
}

impl FileHasher {
    /// A hasher for `length` bytes of content (only git's blob id depends on it).
    pub fn new(algo: DigestAlgo, length: u64) -> Self {
        match algo {
            DigestAlgo::Sha256 => Self::Sha256(sha2::Sha256::new()),
            DigestAlgo::Sha512 => Self::Sha512(sha2::Sha512::new()),
            DigestAlgo::GitSha1 => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {length}\0").as_bytes());
                Self::GitSha1(h)
            }
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(bytes),
            Self::Sha512(h) => h.update(bytes),
            Self::GitSha1(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> FileDigest {
        match self {
            Self::Sha256(h) => FileDigest { algo: DigestAlgo::Sha256, bytes: h.finalize().to_vec() },
            Self::Sha512(h) => FileDigest { algo: DigestAlgo::Sha512, bytes: h.finalize().to_vec() },
            Self::GitSha1(h) => FileDigest { algo: DigestAlgo::GitSha1, bytes: h.finalize().to_vec() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_sha256() {
        let text = format!("sha256:{}", "ab".repeat(32));
        let d: FileDigest = text.parse().unwrap();
        assert_eq!(d.to_string(), text);
        assert_eq!(d.algo(), DigestAlgo::Sha256);
    }

    #[test]
    fn rejects_wrong_length_and_algo() {
        assert!(format!("sha256:{}", "ab".repeat(31)).parse::<FileDigest>().is_err());
        assert!(format!("md5:{}", "ab".repeat(16)).parse::<FileDigest>().is_err());
        assert!("sha256".parse::<FileDigest>().is_err());
        assert!("sha512:zz".parse::<FileDigest>().is_err());
    }

    #[test]
    fn hasher_matches_known_vector() {
        let mut h = FileHasher::new(DigestAlgo::Sha256, 3);
        h.update(b"abc");
        assert_eq!(h.finish().to_string(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn git_blob_ids_match_git() {
        // `printf 'hello world\n' | git hash-object --stdin`
        let mut h = FileHasher::new(DigestAlgo::GitSha1, 12);
        h.update(b"hello world\n");
        assert_eq!(h.finish().to_string(), "gitsha1:3b18e512dba79e4c8300dd08aeb37f8e728b8dad");
        let empty = FileHasher::new(DigestAlgo::GitSha1, 0).finish();
        assert_eq!(empty.to_string(), "gitsha1:e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        assert!("gitsha1:3b18e512dba79e4c8300dd08aeb37f8e728b8dad".parse::<FileDigest>().is_ok());
    }
}
