//! Storage: one code path over SQLite (a file in the data dir, the default) and PostgreSQL,
//! through sqlx's `Any` driver. Queries use `$n` placeholders and types both understand
//! (BIGINT, TEXT; times are Unix milliseconds, flags 0/1). Only the schema is written per
//! dialect (the id column), in `migrations/<dialect>/`, embedded in the binary.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::AnyPool;

use crate::ManagerError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The migrations, oldest first: (version, description, SQLite, PostgreSQL).
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/postgres/0001_init.sql"),
)];

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub dialect: Dialect,
}

impl Db {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`) and brings its schema up to
    /// date. Several managers may start at once over one PostgreSQL: the migrator locks.
    pub async fn open(url: &str) -> Result<Self, ManagerError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(ManagerError::BadRequest(format!(
                "database `{}`: use sqlite://PATH or postgres://USER@HOST/DB",
                redact(url)
            )));
        };
        let max = if dialect == Dialect::Sqlite { 4 } else { 16 };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| ManagerError::BadRequest(format!("cannot open database `{}`: {e}", redact(url))))?;
        if dialect == Dialect::Sqlite {
            // Readers do not wait for the writer; kept in the file, so set once per database.
            sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await?;
        }
        migrator(dialect).run(&pool).await?;
        Ok(Self { pool, dialect })
    }
}

fn migrator(dialect: Dialect) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sqlite, postgres)| {
            let sql = if dialect == Dialect::Sqlite { sqlite } else { postgres };
            Migration::new(*version, Cow::Borrowed(description), MigrationType::Simple, Cow::Borrowed(sql), false)
        })
        .collect::<Vec<_>>();
    Migrator { migrations: Cow::Owned(migrations), ignore_missing: false, locking: true, no_tx: false }
}

/// A database URL with its password blanked, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// RFC 3339 in UTC, as the API shows times.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("postgres://ferry:s3cret@db:5432/ferry"), "postgres://ferry:REDACTED@db:5432/ferry");
        assert_eq!(redact("sqlite:///var/lib/ferry/manager.db"), "sqlite:///var/lib/ferry/manager.db");
    }

    #[test]
    fn times_read_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
