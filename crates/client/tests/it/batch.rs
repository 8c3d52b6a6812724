//! Batch: chunking past 50 commands, `$result[...]` references (within a
//! request and across chunks), per-command errors, `halt`.

use client::{Batch, CommandOutcome, Error};
use serde_json::json;

use crate::common::{bounded, deal_id, fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_chunks_references_and_reports_every_command() {
    bounded(async {
        let f = fixture().await;
        let p = f.portal_client();
        let mut b = Batch::new().add("first", "crm.deal.add", json!({"fields": {"TITLE": "first"}}));
        for i in 0..59 {
            b.push(
                format!("n{i}"),
                "crm.deal.add",
                json!({"fields": {"TITLE": format!("deal {i}"), "COMMENTS": "after $result[first]"}}),
            );
        }
        // Same chunk as `first`: the portal resolves it.
        b.push("get_first", "crm.deal.get", json!({"id": "$result[first]"}));
        // A failing command in the middle hides nothing.
        b.push("bad", "crm.deal.get", json!({"id": 999_999}));
        // Second chunk: the client resolves the reference itself.
        b.push("get_again", "crm.deal.get", json!({"id": "$result[first]"}));
        let batches = f.method_count("batch");
        let out = p.batch(&b).await.unwrap();
        assert_eq!(out.requests, 2, "63 commands in two requests");
        assert_eq!(f.method_count("batch") - batches, 2);
        assert_eq!(out.commands.len(), 63);
        let first = out.result("first").unwrap().as_u64().unwrap();
        for key in ["get_first", "get_again"] {
            let deal = out.result(key).unwrap_or_else(|| panic!("{key}: {:?}", out.get(key)));
            assert_eq!(deal_id(deal), first, "{key}");
            assert_eq!(deal["TITLE"], "first");
        }
        let n0 = out.result("n0").unwrap().as_u64().unwrap();
        let d = p.call("crm.deal.get", json!({"id": n0})).await.unwrap();
        assert_eq!(d.result["COMMENTS"], format!("after {first}"));
        assert!(out.error("bad").is_some());
        assert_eq!(out.errors().count(), 1);
        assert!(matches!(out.get("n58"), Some(CommandOutcome::Ok { .. })));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_stops_at_the_first_error_across_chunks() {
    bounded(async {
        let f = fixture().await;
        let p = f.portal_client();
        let mut b = Batch::new().halt(true);
        for i in 0..55 {
            if i == 10 {
                b.push("bad", "crm.deal.get", json!({"id": 0}));
            } else {
                b.push(format!("k{i}"), "crm.deal.fields", json!({}));
            }
        }
        let out = p.batch(&b).await.unwrap();
        assert_eq!(out.requests, 1, "the second chunk is not sent");
        assert!(matches!(out.get("k9"), Some(CommandOutcome::Ok { .. })));
        assert!(out.error("bad").is_some());
        assert_eq!(out.get("k11"), Some(&CommandOutcome::NotRun));
        assert_eq!(out.get("k54"), Some(&CommandOutcome::NotRun));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_refuses_bad_keys_and_nested_batch_without_a_request() {
    bounded(async {
        let f = fixture().await;
        let p = f.portal_client();
        let requests = f.stat("requests");
        for b in [
            Batch::new().add("a[b]", "profile", json!({})),
            Batch::new().add("a", "batch", json!({})),
            Batch::new()
                .add("a", "profile", json!({}))
                .add("a", "profile", json!({})),
        ] {
            let e = p.batch(&b).await.unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{e}");
        }
        assert_eq!(f.stat("requests"), requests);
        // An empty result map arrives as `[]` and is accepted.
        let out = p
            .batch(&Batch::new().add("only", "crm.deal.get", json!({"id": 0})))
            .await
            .unwrap();
        assert!(out.error("only").is_some());
    })
    .await;
}
