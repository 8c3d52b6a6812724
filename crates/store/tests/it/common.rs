use std::sync::atomic::{AtomicU64, Ordering};

use store::{Keyring, OpenOptions, Store, TokenSet, VerifiedInstall};
use wire::{AccessToken, ApplicationToken, MemberId, PortalDomain, RefreshToken};

/// A fresh, migrated database for one test: a temporary SQLite file, or a
/// schema of its own in the PostgreSQL database named by `B24GATE_TEST_PG_URL`.
pub struct TestDb {
    pub store: Store,
    /// The URL this store was opened with (a second `Store` on it stands in
    /// for a second process).
    pub url: String,
    pub keys: Keyring,
    pg_schema: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

pub fn pg_url() -> String {
    std::env::var("B24GATE_TEST_PG_URL").expect(
        "B24GATE_TEST_PG_URL must name a PostgreSQL database for the conformance suite \
         (for example postgres://postgres@127.0.0.1:5432/test); .ci/run sets it",
    )
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("b24gate.db").display());
        Self::open(url, None, Some(dir)).await
    }

    pub async fn postgres() -> TestDb {
        let base = pg_url();
        let schema = format!("t_{}", random_hex(8));
        let admin = sqlx::PgPool::connect(&base)
            .await
            .expect("PostgreSQL at B24GATE_TEST_PG_URL must be reachable");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Self::open(url, Some((base, schema)), None).await
    }

    async fn open(
        url: String,
        pg_schema: Option<(String, String)>,
        dir: Option<tempfile::TempDir>,
    ) -> TestDb {
        let keys = Keyring::from_hex(&"42".repeat(32)).unwrap();
        let store = Store::open(&url, keys.clone(), &OpenOptions::default())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        TestDb {
            store,
            url,
            keys,
            pg_schema,
            _dir: dir,
        }
    }

    /// Another handle on the same database, as a second process would have.
    pub async fn second_handle(&self) -> Store {
        Store::open(&self.url, self.keys.clone(), &OpenOptions::default())
            .await
            .unwrap()
    }

    pub async fn cleanup(self) {
        self.store.close().await;
        if let Some((base, schema)) = &self.pg_schema {
            let admin = sqlx::PgPool::connect(base).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        }
    }
}

/// Declares async test bodies `async fn name(db: &TestDb)` once and runs each
/// against both backends.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = $crate::common::TestDb::sqlite().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = $crate::common::TestDb::postgres().await;
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

static SEQ: AtomicU64 = AtomicU64::new(1);

/// A distinct, well-formed member_id per call.
pub fn member_id() -> MemberId {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    MemberId::parse(&format!("{:032x}", 0xd897_063e_0000_0000_u64 + n)).unwrap()
}

pub fn tokens(tag: &str) -> TokenSet {
    TokenSet {
        access: AccessToken::parse(&format!("access{tag}{}", "a".repeat(60))).unwrap(),
        refresh: RefreshToken::parse(&format!("refresh{tag}{}", "b".repeat(60))).unwrap(),
        expires_at: 1_766_050_724_000,
        scope: "crm,placement,user_brief".into(),
        user_id: Some(1),
    }
}

pub fn app_token(tag: &str) -> ApplicationToken {
    ApplicationToken::parse(&format!("apptoken{tag}")).unwrap()
}

pub struct Install {
    pub member_id: MemberId,
    pub domain: PortalDomain,
    pub app_token: ApplicationToken,
    pub tokens: TokenSet,
}

impl Install {
    pub fn new(tag: &str) -> Install {
        Install {
            member_id: member_id(),
            domain: PortalDomain::parse(&format!("{tag}.bitrix24.com")).unwrap(),
            app_token: app_token(tag),
            tokens: tokens(tag),
        }
    }

    pub fn verified(&self) -> VerifiedInstall<'_> {
        VerifiedInstall {
            member_id: &self.member_id,
            domain: &self.domain,
            client_endpoint: "https://acme.bitrix24.com/rest/",
            server_endpoint: "https://oauth.bitrix.info/rest/",
            application_token: Some(&self.app_token),
            flow: "event",
            app_status: Some("L"),
            language: Some("en"),
            tokens: &self.tokens,
        }
    }
}

pub const T0: i64 = 1_766_047_124_000;
