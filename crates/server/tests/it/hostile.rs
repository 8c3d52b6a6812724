//! Hostile input: 10,000 generated malformed or oversized bodies at the
//! ingest routes, over real HTTP, eight at a time. Every one must be
//! answered with a 4xx that names its outcome — no 5xx, no dropped
//! connection (a panicking handler drops it), nothing stored — and the
//! gateway must still take a genuine event afterwards.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use server::{IngestConfig, IngestOutcome};

use crate::helpers::{APP_TOKEN, Gate, MEMBER, event_body};

const BODIES: usize = 10_000;
const CONCURRENCY: usize = 8;
const SEED: u64 = 0x5eed_b24a_6a7e;
/// Small enough that oversized bodies are cheap to send, large enough for
/// 10,001 two-byte fields (the decoder's `max_keys` is 10,000).
const BODY_LIMIT: usize = 64 * 1024;

/// xorshift64*: deterministic from [`SEED`], no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RandomBytes,
    TruncatedFixture,
    DeepBrackets,
    ManyKeys,
    BadEscape,
    BadUtf8,
    DuplicateKeys,
    Oversized,
    WrongContentType,
    /// The installed portal's member id and token, one field poisoned.
    GenuineButPoisoned,
    /// The installed portal's member id, a forged token.
    ForgedToken,
    Empty,
}

/// The order bodies are generated in, repeated. A body past `max_keys`
/// costs the decoder tens of thousands of fields (most of a debug run's
/// time), so it comes once a round, the rest ten times.
const SCHEDULE: [(Kind, usize); 12] = [
    (Kind::RandomBytes, 10),
    (Kind::TruncatedFixture, 10),
    (Kind::DeepBrackets, 10),
    (Kind::ManyKeys, 1),
    (Kind::BadEscape, 10),
    (Kind::BadUtf8, 10),
    (Kind::DuplicateKeys, 10),
    (Kind::Oversized, 10),
    (Kind::WrongContentType, 10),
    (Kind::GenuineButPoisoned, 10),
    (Kind::ForgedToken, 10),
    (Kind::Empty, 10),
];

fn kinds() -> Vec<Kind> {
    SCHEDULE
        .iter()
        .flat_map(|&(kind, n)| std::iter::repeat_n(kind, n))
        .collect()
}

struct Hostile {
    kind: Kind,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

const FORM: &str = "application/x-www-form-urlencoded";

/// The event and installer fixtures, with the fixtures' member id replaced
/// by the installed portal's, so that a body that survives truncation
/// reaches the token check (the fixtures' application token is not ours).
/// `onappinstall.txt` is left out: an install that still parses after a cut
/// is legitimately stored, unverified, to be checked by a job.
fn fixtures() -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
    let mut out = Vec::new();
    for dir in ["events", "install"] {
        let mut names: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "txt" || x == "body"))
            .filter(|p| !p.ends_with("onappinstall.txt"))
            .collect();
        names.sort();
        for p in names {
            let text = std::fs::read_to_string(&p).unwrap();
            out.push(
                text.replace("deadbeefdeadbeefdeadbeefdeadbeef", MEMBER)
                    .into_bytes(),
            );
        }
    }
    assert!(out.len() >= 10, "fixtures missing: {}", out.len());
    out
}

/// `body` with `insert` spliced in at a random position.
fn splice(rng: &mut Rng, body: &[u8], insert: &[u8]) -> Vec<u8> {
    let at = rng.below(body.len() + 1);
    [&body[..at], insert, &body[at..]].concat()
}

fn generate(rng: &mut Rng, kind: Kind, fixtures: &[Vec<u8>], genuine: &str) -> Hostile {
    let fixture = rng.pick(fixtures).clone();
    let mut content_type = Some(FORM);
    let body: Vec<u8> = match kind {
        Kind::RandomBytes => {
            let len = rng.below(2048);
            rng.bytes(len)
        }
        Kind::TruncatedFixture => {
            let cut = rng.below(fixture.len());
            fixture[..cut].to_vec()
        }
        Kind::DeepBrackets => {
            let segment = *rng.pick(&["[b]", "%5Bb%5D", "[]", "%5b%5d", "[0]"]);
            // Thousands deep (refused for its key length), or just past the
            // depth limit with a key short enough to reach the depth check.
            let depth = if rng.below(2) == 0 {
                1000 + rng.below(4000)
            } else {
                17 + rng.below(20)
            };
            let key = format!("data{}", segment.repeat(depth));
            [&fixture[..], b"&", key.as_bytes(), b"=x"].concat()
        }
        Kind::ManyKeys => {
            let unit = *rng.pick(&["a&", "a[]=1&", "k=&"]);
            // Past `max_keys`, yet under the body limit.
            let room = (BODY_LIMIT - fixture.len() - 1) / unit.len();
            let n = 10_001 + rng.below(room - 10_001);
            [&fixture[..], b"&", unit.repeat(n).as_bytes()].concat()
        }
        Kind::BadEscape => {
            let bad = *rng.pick(&[&b"%"[..], b"%z", b"%zz", b"%4", b"%G0", b"%%"]);
            // At the end, a lone `%` cannot be followed by anything.
            if rng.below(4) == 0 {
                [&fixture[..], b"&data%5BX%5D=", bad].concat()
            } else {
                splice(rng, &fixture, &[bad, b"&"].concat())
            }
        }
        Kind::BadUtf8 => {
            let bad = *rng.pick(&[
                &b"%FF"[..],
                b"%C3",
                b"%ED%A0%80",
                b"\xff",
                b"\xc3(",
                b"%F0%9F",
            ]);
            [&fixture[..], b"&data%5BNAME%5D=", bad].concat()
        }
        Kind::DuplicateKeys => {
            let dup = *rng.pick(&[
                "&event=ONCRMDEALADD&event=ONAPPUNINSTALL",
                "&auth%5Bmember_id%5D=00000000000000000000000000000001",
                "&auth=flat&auth%5Bmember_id%5D=x",
                "&data=1&data%5BFIELDS%5D%5BID%5D=2&data=3",
                "&ts=1&ts=2&ts=3",
            ]);
            let mut b = fixture.clone();
            for _ in 0..1 + rng.below(50) {
                b.extend_from_slice(dup.as_bytes());
            }
            if rng.below(2) == 0 {
                b = [&b[..], b"&", &fixture[..]].concat();
            }
            b
        }
        Kind::Oversized => {
            let mut b = if rng.below(2) == 0 {
                genuine.as_bytes().to_vec()
            } else {
                fixture.clone()
            };
            b.extend_from_slice(b"&data%5BX%5D=");
            let pad = BODY_LIMIT + 1 + rng.below(32 * 1024) - b.len().min(BODY_LIMIT);
            b.resize(b.len() + pad, b'y');
            b
        }
        Kind::WrongContentType => {
            content_type = *rng.pick(&[
                Some("application/json"),
                Some("multipart/form-data; boundary=x"),
                Some("text/plain; charset=utf-8"),
                Some("application/octet-stream"),
                None,
            ]);
            match rng.below(3) {
                0 => json!({"event": "ONCRMDEALUPDATE", "auth": {"member_id": MEMBER}})
                    .to_string()
                    .into_bytes(),
                1 => b"--x\r\ncontent-disposition: form-data; name=\"event\"\r\n\r\nONCRMDEALUPDATE\r\n--x--\r\n".to_vec(),
                _ => fixture.clone(),
            }
        }
        Kind::GenuineButPoisoned => {
            // Each makes a required field unreadable; a later duplicate
            // replaces the genuine value (PHP semantics).
            let poison = *rng.pick(&[
                "&ts=soon",
                "&ts=-1",
                "&auth%5Bmember_id%5D=not-hex",
                "&auth%5Bdomain%5D=%FF",
                "&auth%5Bclient_endpoint%5D=javascript%3Aalert(1)",
                "&auth%5Bserver_endpoint%5D=",
                "&auth=flat",
                "&event=",
                "&data%5BFIELDS%5D%5BID%5D=%zz",
                "&auth%5Buser_id%5D=one",
            ]);
            format!("{genuine}{poison}").into_bytes()
        }
        Kind::ForgedToken => {
            let token: String = (0..32)
                .map(|_| *rng.pick(&b"0123456789abcdef"[..]) as char)
                .collect();
            genuine.replace(APP_TOKEN, &token).into_bytes()
        }
        Kind::Empty => rng
            .pick(&["", "&", "&&&&", "=", "event", "event=", "auth[]=", "[]=x"])
            .as_bytes()
            .to_vec(),
    };
    let path = if rng.below(2) == 0 {
        "/b24/events".to_owned()
    } else {
        // The installer flow reads its portal from the query; none of these
        // is a complete one.
        let query = *rng.pick(&[
            "",
            "?DOMAIN=%zz",
            "?PROTOCOL=7&DOMAIN=example.bitrix24.com",
            "?DOMAIN=example.bitrix24.com",
            "?PROTOCOL=1&DOMAIN=not%20a%20domain",
        ]);
        format!("/b24/install{query}")
    };
    Hostile {
        kind,
        path,
        content_type,
        body,
    }
}

#[derive(Debug)]
struct Answer {
    index: usize,
    kind: Kind,
    status: u16,
    error: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_4xx_store_nothing_and_the_gateway_stays_up() {
    let g = Gate::start(IngestConfig {
        body_limit: BODY_LIMIT,
        ..IngestConfig::default()
    })
    .await;
    g.install_portal(MEMBER, APP_TOKEN).await;
    let genuine = |id: &str| {
        event_body(
            "ONCRMDEALUPDATE",
            MEMBER,
            APP_TOKEN,
            &g.trap_url,
            json!({"FIELDS": {"ID": id}}),
            true,
        )
    };
    let template = genuine("7405");
    let fixtures = fixtures();
    let kinds = kinds();
    let mut rng = Rng(SEED);
    let bodies: Arc<Vec<Hostile>> = Arc::new(
        (0..BODIES)
            .map(|i| generate(&mut rng, kinds[i % kinds.len()], &fixtures, &template))
            .collect(),
    );

    // A fresh connection per request: the server closes a connection whose
    // body it refused unread, and a pooled connection racing that close
    // would make the client, not the server, drop a request.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, bodies, next, url) =
            (client.clone(), bodies.clone(), next.clone(), g.url.clone());
        workers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut failures = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(h) = bodies.get(index) else { break };
                let mut req = client.post(format!("{url}{}", h.path)).body(h.body.clone());
                if let Some(ct) = h.content_type {
                    req = req.header("content-type", ct);
                }
                match req.send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let text = r.text().await.unwrap_or_default();
                        let error = serde_json::from_str::<Value>(&text)
                            .ok()
                            .and_then(|v| v["error"].as_str().map(str::to_owned))
                            .unwrap_or(text);
                        answers.push(Answer {
                            index,
                            kind: h.kind,
                            status,
                            error,
                        });
                    }
                    Err(e) => failures.push(format!("#{index} {:?}: {e:?}", h.kind)),
                }
            }
            (answers, failures)
        }));
    }
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for w in workers {
        let (a, f) = w.await.unwrap();
        answers.extend(a);
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} requests unanswered, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(answers.len(), BODIES);

    // Every answer is a 4xx naming the outcome it was counted under.
    let mut by_status = std::collections::BTreeMap::<u16, u64>::new();
    for a in &answers {
        let expected: &[&str] = match a.status {
            400 => &["malformed"],
            401 => &["unknown_portal", "bad_token", "not_installed"],
            413 => &["too_large"],
            _ => &[],
        };
        assert!(
            expected.contains(&a.error.as_str()),
            "body #{} ({:?}) to {}: {} {}",
            a.index,
            a.kind,
            bodies[a.index].path,
            a.status,
            a.error
        );
        let must = match a.kind {
            Kind::Oversized => Some(413),
            Kind::DeepBrackets
            | Kind::ManyKeys
            | Kind::BadEscape
            | Kind::BadUtf8
            | Kind::GenuineButPoisoned
            | Kind::Empty => Some(400),
            Kind::ForgedToken => Some(401),
            _ => None,
        };
        if let Some(must) = must {
            assert_eq!(
                a.status, must,
                "body #{} ({:?}): {}",
                a.index, a.kind, a.error
            );
        }
        *by_status.entry(a.status).or_default() += 1;
    }
    // The generator reached every rejection the routes have for bodies.
    for s in [400, 401, 413] {
        assert!(
            by_status.get(&s).copied().unwrap_or(0) > 0,
            "no {s}: {by_status:?}"
        );
    }

    // Nothing stored, nothing called out, and the counters account for
    // every rejection.
    assert_eq!(g.inbox_count().await, 0, "a hostile body was stored");
    assert_eq!(g.trap_hits.load(Ordering::SeqCst), 0, "ingest called out");
    let st = &g.state.stats;
    let count = |s: u16| by_status.get(&s).copied().unwrap_or(0);
    assert_eq!(st.total(IngestOutcome::Malformed), count(400));
    assert_eq!(
        st.total(IngestOutcome::UnknownPortal)
            + st.total(IngestOutcome::BadToken)
            + st.total(IngestOutcome::NotInstalled),
        count(401)
    );
    assert_eq!(st.total(IngestOutcome::TooLarge), count(413));
    let counted: u64 = st.snapshot().iter().map(|(_, _, n)| n).sum();
    assert_eq!(counted, BODIES as u64, "{:?}", st.snapshot());

    // Still up: a genuine event is taken and stored.
    let (s, v) = g.post("/b24/events", genuine("7406")).await;
    assert_eq!(s, 200, "{v}");
    let rows = g.store.pending_inbox(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].verified);
    assert_eq!(rows[0].payload_json()["data"]["FIELDS"]["ID"], "7406");
    assert_eq!(st.total(IngestOutcome::Accepted), 1);
    g.stop().await;
}
